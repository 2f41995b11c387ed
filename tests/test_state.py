"""state.py on its own: atomic writes, run directories, run records, saved state and latents.

Fast (no models): what mutation testing of state.py runs (scripts/mutants.sh state).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from vqclip import state
from vqclip.state import RunError


def test_atomic_write_writes_text_as_utf8_and_bytes_as_they_are(tmp_path):
    assert state.atomic_write(tmp_path / "a" / "t.txt", "Oregon 💚") == tmp_path / "a" / "t.txt"
    assert (tmp_path / "a" / "t.txt").read_bytes() == "Oregon 💚".encode()
    state.atomic_write(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert stat.S_IMODE(os.stat(tmp_path / "b.bin").st_mode) == 0o644  # shared, not 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.bin"]  # no temporary left


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(KeyError), state.atomic_path(target) as tmp:
        tmp.write_text("half")
        assert tmp.parent == tmp_path and tmp.name.startswith(".keep.txt.")
        assert tmp.name.endswith(".tmp")
        raise KeyError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_remove_torn_writes_deletes_only_temporaries(tmp_path):
    (tmp_path / "snapshots").mkdir()
    torn = [tmp_path / ".run.json.x1.tmp", tmp_path / "snapshots" / ".000001.png.y.tmp"]
    for path in torn:
        path.write_text("torn")
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "notes.tmp").write_text("mine")  # not hidden: not atomic_path's
    (tmp_path / ".folder.tmp").mkdir()  # a directory, not a torn file
    assert sorted(state.remove_torn_writes(tmp_path)) == sorted(torn)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [".folder.tmp", "notes.tmp", "run.json", "snapshots"]


def test_snapshot_names_sort_by_iteration():
    assert state.snapshot_name(0) == "000000.png"
    assert state.snapshot_name(1234567) == "1234567.png"


def test_new_run_dir_makes_a_fresh_folder_with_snapshots_and_counts_up(tmp_path):
    first = state.new_run_dir(tmp_path / "out", "run")
    second = state.new_run_dir(tmp_path / "out", "run")
    third = state.new_run_dir(tmp_path / "out", "run")
    assert (first.name, second.name, third.name) == ("run", "run-2", "run-3")
    assert (first / "snapshots").is_dir() and (third / "snapshots").is_dir()
    assert list((first / "snapshots").iterdir()) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up"])
def test_new_run_dir_refuses_names_that_are_not_one_folder(tmp_path, name):
    with pytest.raises(RunError, match="is not a plain folder name; give one like 'run-1'"):
        state.new_run_dir(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_new_run_dir_refuses_an_output_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunError) as caught:
        state.new_run_dir(tmp_path / "f", "run")
    assert str(caught.value) == (
        f"The output directory {str(tmp_path / 'f')!r} is a file, not a directory. Give --out "
        "a directory (it is made if missing), or move the file away."
    )


def test_new_run_dir_says_when_the_output_cannot_be_made(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunError) as caught:
        state.new_run_dir(tmp_path / "f" / "below", "run")
    assert "cannot be made (Not a directory). Give --out a directory" in str(caught.value)


def test_find_run_finds_the_newest_run_of_that_name_only(tmp_path):
    assert state.find_run(tmp_path, "run") is None
    a = state.new_run_dir(tmp_path, "run")
    b = state.new_run_dir(tmp_path, "run")
    other = state.new_run_dir(tmp_path, "runner")
    for path in (a, b, other):
        state.write_json(path / state.RUN_FILE, {"config": {}})
    os.utime(a, ns=(1, 1))  # the newest run directory wins
    os.utime(b, ns=(2, 2))
    os.utime(other, ns=(3, 3))
    assert state.find_run(tmp_path, "run") == b
    os.utime(a, ns=(4, 4))
    assert state.find_run(tmp_path, "run") == a
    assert state.find_run(tmp_path, "run[1]") is None  # a glob character is a character


def test_write_json_is_indented_utf8_with_a_final_newline(tmp_path):
    state.write_json(tmp_path / "r.json", {"prompt": "Oregon 💚", "n": [1]})
    text = (tmp_path / "r.json").read_text(encoding="utf-8")
    assert text == '{\n  "prompt": "Oregon 💚",\n  "n": [\n    1\n  ]\n}\n'


def _record(**changes):
    return {"version": 1, "status": "done", "iteration": 2, "config": {"prompt": "x"}, **changes}


def test_read_run_fills_settings_left_out_with_their_defaults(tmp_path):
    state.write_json(tmp_path / state.RUN_FILE, _record())
    record = state.read_run(tmp_path)
    assert record["config"]["prompt"] == "x" and record["config"]["iterations"] == 300
    assert record["status"] == "done" and record["iteration"] == 2


@pytest.mark.parametrize("version", [0, 1])
def test_read_run_reads_this_format_and_older(tmp_path, version):
    state.write_json(tmp_path / state.RUN_FILE, _record(version=version))
    assert state.read_run(tmp_path)["version"] == version


@pytest.mark.parametrize(
    ("record", "says"),
    [
        (_record(version=True), "run format True"),
        (_record(status=3), "holds 'status' = 3, where vqclip writes text"),
        ({"version": 1, "status": "done", "config": {}}, "has no 'iteration'"),
        ({"version": 1, "iteration": 0, "config": {}}, "has no 'status'"),
        (_record(threads=0), "threads from 1 to 4096"),
        (_record(threads=4097), "threads from 1 to 4096"),
        (_record(device=["cpu"]), "holds 'device'"),
        (_record(precision=1), "holds 'precision'"),
        (_record(versions=[]), "holds 'versions' = []"),
        (_record(models={"clip": [1]}), "holds 'models'"),
        (_record(models={"clip": {"sha256": [1]}}), "holds 'models'"),
        (_record(plan={"clip_batch": 2}), "holds 'plan'"),
        (_record(plan={"clip_batch": -1, "checkpointing": False}), "holds 'plan'"),
        (_record(plan={"clip_batch": 2, "checkpointing": "no"}), "holds 'plan'"),
        (_record(plan={"candidates": 0}), "holds 'plan'"),
        (_record(plan={"modules": 1}), "holds 'plan'"),
        (_record(plan={"changes": {}}), "holds 'plan'"),
        (_record(plan={"changes": [{"iteration": 1, "clip_batch": 1}]}), "holds 'plan'"),
        (
            _record(plan={"changes": [{"iteration": -1, "clip_batch": 1, "checkpointing": True}]}),
            "holds 'plan'",
        ),
        (_record(parent={"run": "r", "iteration": "1", "recipe": {}}), "holds 'parent'"),
        (_record(parent={"run": 5, "iteration": 1, "recipe": {}}), "holds 'parent'"),
        (_record(parent={"run": "r", "iteration": 1}), "(its parent's recipe) holds the whole"),
        (
            _record(parent={"run": "r", "iteration": 1, "recipe": {"config": {}}}),
            "(its parent's recipe) has no 'iteration'",
        ),
        (_record(config={"size": 5}), "run.json: size must be two positive whole numbers"),
    ],
)
def test_read_run_names_what_is_wrong_in_one_paragraph(tmp_path, record, says):
    state.write_json(tmp_path / state.RUN_FILE, record)
    with pytest.raises(RunError) as caught:
        state.read_run(tmp_path)
    message = str(caught.value)
    assert says in message and str(tmp_path / state.RUN_FILE) in message
    assert "\n" not in message


def test_read_run_accepts_every_shape_vqclip_writes(tmp_path):
    plan = {
        "clip_batch": 2,
        "checkpointing": False,
        "modules": "lean",
        "candidates": 2,
        "changes": [{"iteration": 3, "clip_batch": 1, "checkpointing": True}],
    }
    parent = {"run": "/r", "iteration": 1, "recipe": {"config": {}, "iteration": 1}}
    models = {"vqgan": {"sha256": {"checkpoint": "ab"}}, "clip": None, "x": {"sha256": "cd"}}
    record = _record(
        plan=plan,
        parent=parent,
        models=models,
        threads=4096,
        versions={},
        device=None,
        precision="fp32",
        iteration=0,
    )
    state.write_json(tmp_path / state.RUN_FILE, record)
    assert state.read_run(tmp_path)["plan"] == plan
    assert state.check_record({"config": {}, "threads": 1}, "x") == {"config": {}, "threads": 1}


def test_check_record_raises_the_error_type_it_is_given():
    with pytest.raises(KeyError, match="x has no 'config': the record is damaged"):
        state.check_record({}, "x", KeyError, "hint")
    with pytest.raises(ValueError) as caught:
        state.check_record([], "x", ValueError)
    assert str(caught.value) == (
        "x holds the whole record = [], where vqclip writes a JSON object: the record is "
        "damaged or was edited by hand."
    )


def test_update_run_merges_and_stamps_the_time(tmp_path):
    state.write_json(tmp_path / state.RUN_FILE, _record())
    record = state.update_run(tmp_path, status="running", iteration=5)
    on_disk = json.loads((tmp_path / state.RUN_FILE).read_text())
    assert on_disk == record and on_disk["status"] == "running" and on_disk["iteration"] == 5
    assert on_disk["updated"].endswith("+00:00") and on_disk["config"]["prompt"] == "x"


def test_state_round_trips_with_every_random_generator(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = state.save_state(tmp_path, {"iteration": 4, "z": torch.arange(3.0)})
    assert path == tmp_path / state.STATE_FILE
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = state.load_state(tmp_path)
    assert loaded["iteration"] == 4 and torch.equal(loaded["z"], torch.arange(3.0))
    rng = loaded["global_rng"]
    random.setstate(rng["python_rng"])
    name, keys, pos, has_gauss, gauss = rng["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch_cpu_rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_load_state_says_when_there_is_none_or_it_is_damaged(tmp_path):
    with pytest.raises(RunError, match="has no saved state \\(state.pt\\) to resume from"):
        state.load_state(tmp_path)
    (tmp_path / state.STATE_FILE).write_bytes(b"torn")
    with pytest.raises(RunError, match="state.pt could not be read \\(") as caught:
        state.load_state(tmp_path)
    assert "start it again" in str(caught.value)


def test_latents_round_trip_and_a_missing_one_names_those_kept(tmp_path):
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    path = state.save_latent(tmp_path, 5, z)
    assert path == tmp_path / "latents" / "000005.pt"
    assert torch.equal(state.load_latent(tmp_path, 5), z.detach())
    state.save_latent(tmp_path, 10, z)
    with pytest.raises(RunError) as caught:
        state.load_latent(tmp_path, 7)
    assert "no saved latent for iteration 7" in str(caught.value)
    assert "snapshot iterations: 5, 10. Pick one" in str(caught.value)
    with pytest.raises(RunError, match="snapshot iterations: none yet"):
        state.load_latent(tmp_path / "empty", 1)


DAMAGED = (
    "Its snapshots are intact: start the run again with `vqclip reproduce` on one of them "
    "(or `vqclip generate` with the same settings), or restore run.json from a copy."
)


@pytest.mark.parametrize(
    ("key", "value", "belongs"),
    [
        ("iteration", "2", "a whole number from 0"),
        ("device", 1, "text"),
        ("precision", [], "text"),
        ("versions", "1.0", "an object"),
        ("models", [], "an object of model files and their sha256 digests"),
        ("plan", 7, "an object with clip_batch, checkpointing and changes"),
        ("parent", "run", "an object naming the parent run and iteration"),
        ("config", None, "an object of settings"),
    ],
)
def test_read_run_messages_in_full(tmp_path, key, value, belongs):
    """Every word of the message: what holds what, what belongs there, how to recover."""
    state.write_json(tmp_path / state.RUN_FILE, {**_record(), key: value})
    with pytest.raises(RunError) as caught:
        state.read_run(tmp_path)
    path = tmp_path / state.RUN_FILE
    if key == "config":
        expected = f"{path} holds no run settings ('config'); the run record is damaged. {DAMAGED}"
    else:
        expected = (
            f"{path} holds {key!r} = {value!r}, where vqclip writes {belongs}: the record is "
            f"damaged or was edited by hand. {DAMAGED}"
        )
    assert str(caught.value) == expected


def test_read_run_messages_for_a_missing_unreadable_or_newer_record(tmp_path):
    with pytest.raises(RunError) as caught:
        state.read_run(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path} is not a vqclip run directory: it has no run.json. Give the directory "
        "that `vqclip generate` created (inside --out)."
    )
    (tmp_path / state.RUN_FILE).write_text("{")
    with pytest.raises(RunError) as caught:
        state.read_run(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / state.RUN_FILE} is not valid JSON (")
    assert str(caught.value).endswith(f"); the run record is damaged. {DAMAGED}")
    (tmp_path / state.RUN_FILE).write_text(json.dumps(_record(version=2)), encoding="utf-8")
    with pytest.raises(RunError) as caught:
        state.read_run(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / state.RUN_FILE} was written by a newer vqclip (run format 2; this vqclip "
        "reads format 1 and older). Upgrade vqclip (pip install -U vqclip) to continue this run."
    )
    record = _record()
    del record["version"]  # written before the format had a number: format 1
    (tmp_path / state.RUN_FILE).write_text(json.dumps(record), encoding="utf-8")
    assert "version" not in state.read_run(tmp_path)
    (tmp_path / state.RUN_FILE).write_text('{"config": {"prompt": "é"}, "iteration": 0, '
                                           '"status": "done"}', encoding="utf-8")  # fmt: skip
    assert state.read_run(tmp_path)["config"]["prompt"] == "é"


@pytest.mark.parametrize(
    ("plan", "ok"),
    [
        (None, True),
        ({}, True),
        ({"candidates": 1, "changes": []}, True),
        ({"clip_batch": 0, "checkpointing": True}, True),
        ({"candidates": -1}, False),
        ({"candidates": "2"}, False),
        ({"clip_batch": None, "checkpointing": True}, False),
        ({"changes": None}, False),
    ],
)
def test_check_record_plan_defaults(plan, ok):
    record = {"config": {}, "plan": plan}
    if ok:
        assert state.check_record(record, "r") is record
    else:
        with pytest.raises(RunError, match="holds 'plan'"):
            state.check_record(record, "r")


def test_new_run_dir_makes_missing_parents_and_names_an_unwritable_output(tmp_path, monkeypatch):
    assert state.new_run_dir(tmp_path / "a" / "b", "run") == tmp_path / "a" / "b" / "run"
    real = Path.mkdir

    def refused(self, *args, **kwargs):
        if self.parent == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(RunError) as caught:
        state.new_run_dir(tmp_path / "locked", "run")
    assert str(caught.value) == (
        f"Cannot write in the output directory {str(tmp_path / 'locked')!r} (Permission "
        "denied). Give --out a directory you can write to, or change its permissions."
    )


# --- what mutation testing found unchecked (scripts/mutants.sh state) -------------------------


def test_remove_torn_writes_ignores_one_another_cleaner_removed_first(tmp_path, monkeypatch):
    (tmp_path / ".a.tmp").write_text("torn")
    real = Path.is_file

    def raced(self):  # another process cleaning the same folder deletes it right after
        found = real(self)
        self.unlink(missing_ok=True)
        return found

    monkeypatch.setattr(Path, "is_file", raced)
    assert state.remove_torn_writes(tmp_path) == [tmp_path / ".a.tmp"]
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_holds_where_a_directory_cannot_be_opened(tmp_path, monkeypatch):
    real = os.open

    def no_directories(path, flags, *args):
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied", str(path))  # e.g. some network mounts
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", no_directories)
    state.atomic_write(tmp_path / "a.txt", "kept")
    assert (tmp_path / "a.txt").read_text() == "kept"


def test_new_run_dir_message_when_the_output_cannot_be_made_in_full(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunError) as caught:
        state.new_run_dir(tmp_path / "f" / "below", "run")
    assert str(caught.value) == (
        f"The output directory {str(tmp_path / 'f' / 'below')!r} cannot be made (Not a "
        "directory). Give --out a directory you can write to."
    )


def test_new_run_dir_tries_run_then_run_2_up_to_run_9999(tmp_path, monkeypatch):
    real, tried = Path.mkdir, []

    def taken(self, *args, **kwargs):
        if self.parent == tmp_path:
            tried.append(self.name)
            raise FileExistsError(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", taken)
    with pytest.raises(RunError) as caught:
        state.new_run_dir(tmp_path, "run")
    assert str(caught.value) == f"Could not find a free run directory name for 'run' in {tmp_path}."
    assert len(tried) == 9999 and tried[:3] == ["run", "run-2", "run-3"]
    assert tried[-1] == "run-9999"


def test_a_run_dir_whose_snapshots_folder_cannot_be_made_is_not_left_behind(tmp_path, monkeypatch):
    real = Path.mkdir

    def refused(self, *args, **kwargs):
        if self.name == state.SNAPSHOT_DIR:
            raise OSError(28, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(RunError) as caught:
        state.new_run_dir(tmp_path / "out", "run")
    assert str(caught.value) == (
        f"Cannot write in the output directory {str(tmp_path / 'out')!r} (No space left on "
        "device). Give --out a directory you can write to, or change its permissions."
    )
    assert list((tmp_path / "out").iterdir()) == []


def test_check_record_names_settings_that_are_no_object_in_full():
    with pytest.raises(RunError) as caught:
        state.check_record({"config": ["a cat"]}, "cat.png", hint="Use another picture.")
    assert str(caught.value) == (
        "cat.png holds 'config' = ['a cat'], where vqclip writes an object of settings: the "
        "record is damaged or was edited by hand. Use another picture."
    )


def test_a_parents_recipe_is_checked_with_the_same_hint(tmp_path):
    record = _record(parent={"run": "r", "iteration": 1, "recipe": {"iteration": 1}})
    state.write_json(tmp_path / state.RUN_FILE, record)
    with pytest.raises(RunError) as caught:
        state.read_run(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / state.RUN_FILE} (its parent's recipe) has no 'config': the record is "
        f"damaged or incomplete. {DAMAGED}"
    )


@pytest.mark.parametrize(
    ("models", "ok"),
    [
        (None, True),
        ({"vqgan": {}}, True),  # no digests recorded
        ({"vqgan": None, "clip": [1]}, False),  # each model is checked, not only the first
        ({"vqgan": {"sha256": "ab"}, "clip": [1]}, False),
        ({"vqgan": {"sha256": "ab"}, "clip": {"sha256": {"model": 5}}}, False),
    ],
)
def test_check_record_models(models, ok):
    record = {"config": {}, "models": models}
    if ok:
        assert state.check_record(record, "r") is record
    else:
        with pytest.raises(RunError, match="holds 'models'"):
            state.check_record(record, "r")


def test_state_keeps_numpy_keys_as_exact_integers(tmp_path):
    np.random.seed(2)
    state.save_state(tmp_path, {"iteration": 0})
    keys = state.load_state(tmp_path)["global_rng"]["numpy_rng"][1]
    assert keys.dtype == torch.int64
    assert np.array_equal(keys.numpy(), np.random.get_state()[1].astype(np.int64))


def test_state_keeps_the_cuda_generators_where_there_is_a_gpu(tmp_path, monkeypatch):
    generators = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: generators)
    state.save_state(tmp_path, {"iteration": 0})
    monkeypatch.undo()
    saved = state.load_state(tmp_path)["global_rng"]["torch_cuda_rng"]
    assert [t.tolist() for t in saved] == [[1, 2, 3], [4]]


def test_load_state_messages_in_full(tmp_path):
    with pytest.raises(RunError) as caught:
        state.load_state(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path} has no saved state (state.pt) to resume from; a run saves it at each "
        "snapshot and when it stops. Start it again with `vqclip generate`."
    )
    (tmp_path / state.STATE_FILE).write_bytes(b"torn")
    with pytest.raises(RunError) as caught:
        state.load_state(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / state.STATE_FILE} could not be read (IndexError: pop from empty list). It "
        "is damaged or was not written by vqclip; resume from a copy of the run, or start it again."
    )


def test_saved_state_and_latents_never_run_code_from_the_file(tmp_path):
    """Loaded weights-only: a file holding any object but tensors and plain data is refused."""
    torch.save({"iteration": 1, "x": Path("a")}, tmp_path / state.STATE_FILE)
    with pytest.raises(RunError, match=r"state.pt could not be read \(UnpicklingError: "):
        state.load_state(tmp_path)
    (tmp_path / "latents").mkdir()
    torch.save(Path("a"), tmp_path / "latents" / "000001.pt")
    with pytest.raises(pickle.UnpicklingError):
        state.load_latent(tmp_path, 1)


class _Foreign:  # a pickled object of this class is no weights-only data
    pass


def test_a_state_file_holding_foreign_objects_gets_a_one_paragraph_error(tmp_path):
    import torch

    torch.save({"iteration": 3, "z": _Foreign()}, tmp_path / state.STATE_FILE)
    with pytest.raises(state.RunError) as error:
        state.load_state(tmp_path)
    message = str(error.value)
    assert "\n" not in message and len(message) < 600
    assert message.startswith(f"{tmp_path / state.STATE_FILE} could not be read (")
    assert message.endswith("resume from a copy of the run, or start it again.")


@pytest.mark.parametrize("said,quoted", [("", ""), ("x" * 500, "x" * 200), ("a\nb", "a")])
def test_a_state_file_error_quotes_at_most_the_first_200_characters(
    said, quoted, tmp_path, monkeypatch
):
    import torch

    (tmp_path / state.STATE_FILE).write_bytes(b"not a state")

    def refuse(*args, **kwargs):
        raise RuntimeError(said)

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(state.RunError) as error:
        state.load_state(tmp_path)
    assert f"could not be read (RuntimeError: {quoted}). It is damaged" in str(error.value)
