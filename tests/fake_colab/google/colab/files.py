"""Fake google.colab.files: a download is recorded, not sent to a browser."""

import os

from google.colab import record


def download(filename: str) -> None:
    if not os.path.isfile(filename):
        raise FileNotFoundError(filename)  # as Colab's does
    record("files.download", os.path.abspath(filename))
