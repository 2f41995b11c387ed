"""A fake google.colab for tests (see tests/fake_colab/README.md)."""

import json
import os


def record(call: str, *args: str) -> None:
    log = os.environ.get("FAKE_COLAB_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(json.dumps([call, *map(str, args)]) + "\n")
