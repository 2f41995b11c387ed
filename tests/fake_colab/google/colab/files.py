"""Fake google.colab.files: download and upload, with the real ones' needs and failures.

``download`` works as the real one (google/colab/files.py): it needs IPython's kernel
(``get_ipython().kernel.comm_manager``: AttributeError without one), registers a comm
target for the browser to pull the file through, and displays the JavaScript that starts
the download into the current output. That output reaches the browser only from the
kernel's main thread, inside a request that is still running; the real one then shows
nothing and says nothing, so this fake raises instead, for a test to see. Each download is
logged with the request it answered (the parent's msg_id and msg_type).

``upload`` returns what the user picks: every file in $FAKE_COLAB_UPLOAD (none: the user
cancelled, ``{}``), written to ``target_dir`` under a unique name as the real one does.
"""

import json
import os
import threading
import uuid

import IPython
from google.colab import record


class LostOutput(RuntimeError):
    """What real Colab does silently: the browser never sees the download."""


def _request(kernel):
    """The header of the request whose output this code writes into ({} when none)."""
    if hasattr(kernel, "get_parent"):
        try:
            parent = kernel.get_parent("shell")
        except TypeError:  # ipykernel 6: get_parent() takes no channel
            parent = kernel.get_parent()
    else:
        parent = getattr(kernel, "_parent_header", {})
    return (parent or {}).get("header", {})


def download(filename):
    """Downloads the file to the user's local disk via a browser download action."""
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Cannot find file: {filename}")
    kernel = IPython.get_ipython().kernel  # AttributeError outside a kernel, as the real one
    comm_manager = kernel.comm_manager
    if threading.current_thread() is not threading.main_thread():
        raise LostOutput(
            "files.download from a thread other than the kernel's main thread: on Colab "
            "its JavaScript goes to no cell and the browser never downloads the file."
        )
    header = _request(kernel)
    if not header.get("msg_id"):
        raise LostOutput("files.download outside a request: on Colab nothing is shown.")
    comm_id = "download_" + str(uuid.uuid4())

    def download_file(comm, _):  # the browser opens the comm and pulls 1 MB chunks
        file = open(filename, mode="rb")  # noqa: SIM115 (closed by the last message)

        def on_message(_):
            chunk = file.read(1024 * 1024)
            if chunk:
                comm.send({}, None, [chunk])
            else:
                comm.close()
                file.close()
                comm_manager.unregister_target(comm_id, download_file)

        comm.on_msg(on_message)

    comm_manager.register_target(comm_id, download_file)
    size, name = os.path.getsize(filename), os.path.basename(filename)
    script = f"download({json.dumps(comm_id)}, {json.dumps(name)}, {size})"
    IPython.display.display(IPython.display.Javascript(script))
    record("files.download", os.path.abspath(filename), header["msg_id"], header["msg_type"])


def _unique(filename):
    if not os.path.lexists(filename):
        return filename
    path, ext = os.path.splitext(filename)
    counter = 1
    while os.path.lexists(f"{path} ({counter}){ext}"):
        counter += 1
    return f"{path} ({counter}){ext}"


def upload(target_dir=""):
    """The files the user picks, as {local filename: bytes}; {} when cancelled."""
    IPython.get_ipython().kernel  # noqa: B018 (the real one needs the frontend: a kernel)
    picked = os.environ.get("FAKE_COLAB_UPLOAD", "")
    names = sorted(os.listdir(picked)) if picked and os.path.isdir(picked) else []
    record("files.upload", *names)
    if target_dir:
        os.makedirs(target_dir, exist_ok=True)
    uploaded = {}
    for name in names:
        with open(os.path.join(picked, name), "rb") as file:
            data = file.read()
        local = _unique(os.path.join(target_dir, name))
        print(f"Saving {name} to {local}")
        with open(local, "wb") as file:
            file.write(data)
        uploaded[local] = data
    return uploaded
