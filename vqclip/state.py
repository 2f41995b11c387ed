"""Run directories and durable files: every write is atomic (temporary file + rename).

A kill at any instant leaves either the old or the new version of a file, never a torn one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vqclip.config import brief


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared and served
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_torn_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files atomic_path leaves when a process is killed mid-write
    (".NAME.xxxx.tmp"; the file NAME itself is whole); return them."""
    torn = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for path in torn:
        path.unlink(missing_ok=True)
    return torn


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically; text is written as UTF-8."""
    blob = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- run directories --------------------------------------------------------------------

RUN_FILE = "run.json"
RUN_FORMAT = 1  # run.json's "version": raise it when older code could not read a new record
STATE_FILE = "state.pt"
LATENT_DIR = "latents"
LOG_FILE = "log.jsonl"
SNAPSHOT_DIR = "snapshots"
FINAL_FILE = "final.png"
BEST_FILE = "best.png"  # the best-scoring picture of the run (vqclip.best)


class RunError(ValueError):
    """A run directory is missing, incomplete or unreadable; the message says what to do."""


def snapshot_name(iteration: int) -> str:
    """'snapshots/000050.png' style name of an iteration's snapshot."""
    return f"{iteration:06d}.png"


def new_run_dir(out: str | os.PathLike, name: str) -> Path:
    """Create and return a fresh directory ``out/name`` (``name-2``, ``name-3``… if taken)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(
            f"The output directory {str(out)!r} is a file, not a directory. Give --out a "
            "directory (it is made if missing), or move the file away."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(
            f"The output directory {str(out)!r} cannot be made ({error.strerror or error}). "
            "Give --out a directory you can write to."
        ) from None
    if Path(name).name != name or name in ("", ".."):  # "." has the name "": refused before
        raise RunError(f"The run name {name!r} is not a plain folder name; give one like 'run-1'.")
    for n in range(1, 10_000):
        path = out / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise _unwritable(out, error) from None
        try:
            (path / SNAPSHOT_DIR).mkdir()
        except OSError as error:
            path.rmdir()  # no half-made run directory stays behind
            raise _unwritable(out, error) from None
        return path
    raise RunError(f"Could not find a free run directory name for {name!r} in {out}.")


def _unwritable(out: Path, error: OSError) -> RunError:
    return RunError(
        f"Cannot write in the output directory {str(out)!r} ({error.strerror or error}). "
        "Give --out a directory you can write to, or change its permissions."
    )


def find_run(out: str | os.PathLike, name: str) -> Path | None:
    """The newest run directory ``out/name`` (or ``name-2``…) that has its run.json, if any:
    how a sweep or a queue finds a run again after a crash."""
    found = [p.parent for p in Path(out).glob(f"{glob.escape(name)}*/{RUN_FILE}")]
    found = [p for p in found if p.name == name or p.name.startswith(f"{name}-")]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write a dict as indented UTF-8 JSON, atomically."""
    return atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a run directory's run.json, with a clear error when it is missing or corrupt."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a vqclip run directory: it has no {RUN_FILE}. "
            "Give the directory that `vqclip generate` created (inside --out)."
        )
    damaged = (
        "Its snapshots are intact: start the run again with `vqclip reproduce` on one of them "
        "(or `vqclip generate` with the same settings), or restore run.json from a copy."
    )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # bad JSON, bad UTF-8, a number of more than 4300 digits
        raise RunError(
            f"{path} is not valid JSON ({error}); the run record is damaged. {damaged}"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunError(
            f"{path} holds no run settings ('config'); the run record is damaged. {damaged}"
        )
    version = record.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > RUN_FORMAT:
        raise RunError(
            f"{path} was written by a newer vqclip (run format {brief(version)}; this vqclip "
            f"reads format {RUN_FORMAT} and older). Upgrade vqclip (pip install -U vqclip) "
            "to continue this run."
        )
    check_record(record, str(path), RunError, damaged, ("config", "iteration", "status"))
    # Settings a record leaves out (an older vqclip had fewer) keep their defaults, so every
    # reader finds each setting, as RunConfig.from_dict would fill it in.
    record["config"] = {**_default_settings(), **record["config"]}
    return record


def _default_settings() -> dict[str, Any]:
    from vqclip.config import RunConfig

    return RunConfig().to_dict()


def check_record(
    record: Any,
    where: str,
    error: type[Exception] = RunError,
    hint: str = "",
    required: tuple[str, ...] = ("config",),
) -> dict[str, Any]:
    """The one check of a run record's shape (run.json, or the recipe a PNG carries): raise
    ``error`` with a one-paragraph message naming the key when valid JSON holds something
    vqclip never writes (a key missing, a list where an object belongs, text where a number
    belongs, null, a number too large). Unknown keys and unknown settings are left alone (a
    newer vqclip may add some; running a recipe refuses unknown settings itself)."""
    from vqclip.config import ConfigError, RunConfig

    def refuse(key: str, value: Any, belongs: str) -> None:
        raise error(
            f"{where} holds {key} = {brief(value)}, where vqclip writes {belongs}: the record "
            f"is damaged or was edited by hand. {hint}".strip()
        )

    if not isinstance(record, dict):
        refuse("the whole record", record, "a JSON object")
    for key in required:
        if key not in record:
            raise error(f"{where} has no {key!r}: the record is damaged or incomplete. {hint}")
    config = record.get("config")
    if not isinstance(config, dict):
        refuse("'config'", config, "an object of settings")
    known = {k: v for k, v in config.items() if k in RunConfig.__dataclass_fields__}
    try:
        RunConfig.from_dict(known)
    except ConfigError as bad:
        raise error(f"{where}: {bad} {hint}".strip()) from None
    checks = {  # key -> (is what vqclip writes there, how to say it)
        "iteration": (_count, "a whole number from 0"),
        "status": (_text, "text"),
        "device": (_text, "text"),
        "precision": (_text, "text"),
        "threads": (lambda v: v is None or _count(v) and 1 <= v <= MAX_THREADS,
                    f"a whole number of threads from 1 to {MAX_THREADS}"),
        "versions": (lambda v: v is None or isinstance(v, dict), "an object"),
        "models": (_models, "an object of model files and their sha256 digests"),
        "plan": (_plan, "an object with clip_batch, checkpointing and changes"),
    }  # fmt: skip
    for key, (ok, belongs) in checks.items():
        if key in record and not ok(record[key]):
            refuse(repr(key), record[key], belongs)
    parent = record.get("parent")
    if parent is not None:
        if not (isinstance(parent, dict) and _text(parent.get("run"))
                and _count(parent.get("iteration"))):  # fmt: skip
            refuse("'parent'", parent, "an object naming the parent run and iteration")
        check_record(parent.get("recipe"), f"{where} (its parent's recipe)", error, hint,
                     ("config", "iteration"))  # fmt: skip
    return record


MAX_THREADS = 4096


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _models(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    # role -> one model's record; "clip" may hold a list of them (a CLIP ensemble)
    infos = [i for v in value.values() for i in (v if isinstance(v, list) and v else [v])]
    for info in infos:
        if info is None:
            continue
        if not isinstance(info, dict):
            return False
        digests = info.get("sha256", {})  # role -> digest; one digest alone reads too
        if isinstance(digests, str):
            continue
        if not isinstance(digests, dict) or not all(isinstance(d, str) for d in digests.values()):
            return False
    return True


def _plan(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    changes = value.get("changes", [])
    return (
        _count(value.get("clip_batch", 0))
        and isinstance(value.get("checkpointing", False), bool)
        and _text(value.get("modules"))
        and _count(value.get("candidates", 1))
        and value.get("candidates", 1) >= 1
        and ("clip_batch" not in value or "checkpointing" in value)
        and isinstance(changes, list)
        and all(
            isinstance(c, dict)
            and _count(c.get("iteration"))
            and _count(c.get("clip_batch"))
            and isinstance(c.get("checkpointing"), bool)
            for c in changes
        )
    )


def update_run(run_dir: str | os.PathLike, **changes: Any) -> dict[str, Any]:
    """Merge changes into run.json (atomically) and return the new record."""
    record = read_run(run_dir)
    record.update(changes, updated=_now())
    write_json(Path(run_dir) / RUN_FILE, record)
    return record


def save_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a run state (latent, optimiser, RNG states, iteration) atomically as state.pt."""
    import random

    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    extra = {  # every RNG in the process, as plain data so state.pt loads weights-only
        "torch_cpu_rng": torch.get_rng_state(),
        "numpy_rng": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python_rng": random.getstate(),
    }
    if torch.cuda.is_available():
        extra["torch_cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(Path(run_dir) / STATE_FILE) as tmp:
        torch.save({**state, "global_rng": extra}, tmp)
    return Path(run_dir) / STATE_FILE


def load_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Load state.pt saved by save_state (weights-only: it holds only tensors and plain data)."""
    import torch

    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise RunError(
            f"{run_dir} has no saved state ({STATE_FILE}) to resume from; a run saves it at "
            "each snapshot and when it stops. Start it again with `vqclip generate`."
        )
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notice about a foreign file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: say so instead of a pickle traceback
        # torch's own reasons run to many lines (weights-only advice): their first says it
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise RunError(
            f"{path} could not be read ({type(error).__name__}: {first}). It is damaged or "
            "was not written by vqclip; resume from a copy of the run, or start it again."
        ) from None


def save_latent(run_dir: str | os.PathLike, iteration: int, z: Any) -> Path:
    """Keep a snapshot's latent (small: [1, C, h, w]) so a new run can branch from it."""
    import torch

    path = Path(run_dir) / LATENT_DIR / f"{iteration:06d}.pt"
    with atomic_path(path) as tmp:
        torch.save(z.detach().cpu(), tmp)
    return path


def load_latent(run_dir: str | os.PathLike, iteration: int) -> Any:
    """A snapshot's latent saved by save_latent, with a clear error naming the ones that exist."""
    import torch

    path = Path(run_dir) / LATENT_DIR / f"{iteration:06d}.pt"
    if not path.is_file():
        have = sorted(int(p.stem) for p in (Path(run_dir) / LATENT_DIR).glob("[0-9]*.pt"))
        raise RunError(
            f"{run_dir} has no saved latent for iteration {iteration}; latents are kept at "
            f"snapshot iterations: {', '.join(map(str, have)) or 'none yet'}. Pick one of those."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
