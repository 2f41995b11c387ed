"""Fake google.colab.drive: mounts Drive as a plain folder, and fails as the real one does.

What the user does in the browser is set by $FAKE_COLAB_DRIVE:
- "ok" (or unset): the user allows access; MyDrive appears under the mount point;
- "decline": the user closes or refuses the permission dialog; the real frontend answers
  the ``request_auth`` message with an error, and ``_message`` raises MessageError with it;
- "timeout": no answer in time; the real code goes on, the Drive binary exits, and it
  raises ValueError('mount failed').
The checks of the mount point and the "already mounted" message follow the real
google/colab/drive.py (googlecolab/colabtools, read in April 2026).
"""

import os

from google.colab import _message, record

DECLINED = "Error: credential propagation was unsuccessful"  # what users of Colab see


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    """Mount your Google Drive at the specified mountpoint path."""
    if " " in mountpoint:
        raise ValueError("Mountpoint must not contain a space.")
    answer = os.environ.get("FAKE_COLAB_DRIVE", "ok")
    record("drive.mount", mountpoint, answer)
    if answer == "decline":
        raise _message.MessageError(DECLINED)
    mountpoint = os.path.expanduser(mountpoint)
    # The real check looks for "My Drive"; the folder users open is "MyDrive" (both exist).
    if not force_remount and os.path.isdir(os.path.join(mountpoint, "My Drive")):
        print(
            f"Drive already mounted at {mountpoint}; to attempt to forcibly "
            f'remount, call drive.mount("{mountpoint}", force_remount=True).'
        )
        return
    if os.path.islink(mountpoint):
        raise ValueError("Mountpoint must not be a symlink")
    if os.path.isdir(mountpoint) and os.listdir(mountpoint):
        raise ValueError("Mountpoint must not already contain files")
    if not os.path.isdir(mountpoint) and os.path.exists(mountpoint):
        raise ValueError("Mountpoint must either be a directory or not exist")
    normed = os.path.normpath(mountpoint)
    if "/" in normed and not os.path.exists(os.path.dirname(normed)):
        raise ValueError("Mountpoint must be in a directory that exists")
    if answer == "timeout":
        raise ValueError("mount failed")
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
    os.symlink("MyDrive", os.path.join(mountpoint, "My Drive"))
    print(f"Mounted at {mountpoint}")
