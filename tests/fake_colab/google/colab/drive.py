"""Fake google.colab.drive: "mounts" Drive as a plain folder."""

import os

from google.colab import record


def mount(mountpoint: str, force_remount: bool = False) -> None:
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
    record("drive.mount", mountpoint)
