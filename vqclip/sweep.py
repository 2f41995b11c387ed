"""Panning for gold: prompts x styles x seeds as a sweep of ordinary runs, ranked by CLIP.

Optionally one more setting is an axis too (``vary``, e.g. lr or size; see sweep_spec.py,
which also reads sweeps from YAML or JSON files). A sweep is a folder: ``sweep.json`` (the
expansion, each candidate's settings and run directory), a queue (``queue.sqlite``, one job
per candidate, so several workers can share the candidates), one ordinary run directory per
candidate under ``runs/`` (resumable, with the full recipe), ``ranking.json`` (every
candidate, and on request each of its snapshots, scored by CLIP against its prompt with and
without the style words) and the contact sheets (``contact_sheet.png``: the candidates
sorted by score; per-seed grids; the evolution of the best; ``best_snapshots.png``). Models
load once for the whole sweep; new candidates of one shape are optimised together as one
batch where memory allows (``batch``; by default on a GPU only, see queue.worker.auto_batch). An interrupted sweep continues with ``run_sweep`` again:
finished candidates are kept, a candidate cut short resumes from its saved state, a failed
one is tried again. Paths inside the folder are relative to it (the queue's to its own
folder), so a sweep works the same from any directory and can be moved whole.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vqclip.config import (
    ConfigError,
    PromptChange,
    RunConfig,
    check_name,
    parse_change,
    parse_prompts,
    slug,
)
from vqclip.credentials import signing_for
from vqclip.export import contact_sheet, list_snapshots
from vqclip.models import Models, load_clip
from vqclip.prompts import encode_images, encode_text, load_rgb
from vqclip.queue import Job, JobQueue
from vqclip.queue.store import anchored, check_iterations
from vqclip.queue.worker import work, work_on_ray
from vqclip.state import BEST_FILE, FINAL_FILE, RunError, write_json
from vqclip.sweep_spec import check_vary

SWEEP_FILE = "sweep.json"
RANKING_FILE = "ranking.json"
SHEET_FILE = "contact_sheet.png"
BEST_SHEET_FILE = "best_snapshots.png"
RUNS_DIR = "runs"
QUEUE_FILE = "queue.sqlite"


@dataclass(frozen=True)
class Candidate:
    """One run of a sweep: an idea, a style (may be empty), a seed and its settings."""

    index: int
    prompt: str  # the idea without the style words, what the ranking judges first
    style: str
    seed: int
    config: RunConfig  # the full run settings (prompt with the style, seed, out, name)
    vary: dict[str, Any] = field(default_factory=dict)  # the varied setting's value, if any

    @property
    def label(self) -> str:
        return _label({"prompt": self.prompt, "style": self.style, "vary": self.vary})


def styled(prompt: str, style: str) -> str:
    """'Oregon 💚' + 'painting' -> 'Oregon 💚 painting'; in a weighted prompt every item
    that pulls (weight > 0) gets the style, and those that push away stay as they are."""
    if not style:
        return prompt
    items = []
    for spec in parse_prompts(prompt):
        text = f"{spec.text} {style}" if spec.weight > 0 else spec.text
        stop = f":{spec.stop:g}" if spec.stop != float("-inf") else ""
        items.append(f"{text}:{spec.weight:g}{stop}" if spec.weight != 1 or stop else text)
    return " | ".join(items)


def styled_change(line: str, style: str) -> str:
    """A timeline line with its text prompts styled as the candidate's prompt is, so a story
    keeps its style after each change."""
    change = parse_change(line)
    if change.kind != "prompt":
        return line
    return PromptChange(change.iteration, change.kind, styled(change.value, style)).line()


def expand(
    base: RunConfig,
    prompts: Sequence[str],
    styles: Sequence[str],
    seeds: Sequence[int],
    vary: tuple[str, Sequence[Any]] | None = None,
) -> list[Candidate]:
    """Every prompt x style x value x seed as a Candidate (styles may hold "" for the bare
    prompt); ``vary`` is one more setting and its values, e.g. ("lr", [0.05, 0.1])."""
    prompts, styles, seeds = axes(prompts, styles, seeds)
    if not prompts:
        raise ConfigError("A sweep needs at least one prompt: give one, or --prompts FILE.")
    if not seeds:
        raise ConfigError("A sweep needs at least one seed, e.g. --seeds 1,2.")
    if vary is not None:
        setting, values = check_vary(vary[0], list(vary[1]), "vary")
        changes = [{setting: value} for value in values]
    else:
        changes = [{}]
    found = []
    for prompt in prompts:
        for style in styles:
            for change in changes:
                for seed in seeds:
                    k = len(found)
                    name = f"{k:03d}-{slug(styled(prompt, style))}{_vary_slug(change)}-s{seed}"
                    config = base.replace(
                        prompt=styled(prompt, style),
                        timeline=[styled_change(line, style) for line in base.timeline],
                        seed=seed,
                        name=name,
                        **change,
                    )
                    check_iterations(config.validate().iterations)  # the queue's bound
                    found.append(Candidate(k, prompt, style, seed, config, change))
    return found


def axes(
    prompts: Sequence[str], styles: Sequence[str], seeds: Sequence[int]
) -> tuple[list[str], list[str], list[int]]:
    """The sweep's axes as it runs them: prompts and styles trimmed and each once (a
    trailing space is no new prompt), seeds each once; no style means the bare prompt."""
    prompts = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    styles = list(dict.fromkeys(s.strip() for s in styles)) or [""]
    return prompts, styles, list(dict.fromkeys(seeds))


def _vary_slug(change: dict[str, Any]) -> str:
    """{'lr': 0.05} -> '-lr0.05'; {'size': [128, 96]} -> '-size128x96'; text (a path to an
    init image, say) as a folder-safe slug of its last part."""
    return "".join(
        f"-{k}{slug(Path(v).stem, 20) if isinstance(v, str) else _show(v)}"
        for k, v in change.items()
    )


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_folder(base: RunConfig, prompts: Sequence[str], name: str | None = None) -> Path:
    """Where a new sweep goes (under ``base.out``); refused when it already holds one."""
    if name is not None:
        check_name(name)  # the sweep's folder stays inside --out
    first = next((p.strip() for p in prompts if p.strip()), "")
    folder = Path(base.out) / (name or f"{datetime.now():%Y%m%d-%H%M%S}-sweep-{slug(first)}")
    if (folder / SWEEP_FILE).exists():
        raise RunError(f"{folder} already holds a sweep: continue it with --resume {folder}.")
    return folder


def start_sweep(
    base: RunConfig,
    prompts: Sequence[str],
    styles: Sequence[str],
    seeds: Sequence[int],
    name: str | None = None,
    vary: tuple[str, Sequence[Any]] | None = None,
) -> Path:
    """Make the sweep folder under ``base.out``: sweep.json and a queue holding one job per
    candidate (workers drain it, here or in other processes). Return the folder.

    Everything is checked first, and the folder is built under a temporary name and renamed
    when whole: a refusal or a crash leaves no half-made sweep behind. Paths inside it are
    relative to it, so it works from any directory and can be moved."""
    base = anchored(base)  # files it names are found from any directory
    candidates = expand(base, prompts, styles, seeds, vary)
    folder = sweep_folder(base, prompts, name)
    prompts, styles, seeds = axes(prompts, styles, seeds)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunError(
            f"{folder} exists and is not an empty folder: give the sweep another --name, "
            "or move that one away."
        )
    building = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)  # left by a crash of this very process id
    try:
        queue = JobQueue(building / QUEUE_FILE)
        entries = []
        for candidate in candidates:
            config = candidate.config.replace(out=str(building / RUNS_DIR))
            entries.append(
                {
                    "index": candidate.index,
                    "prompt": candidate.prompt,
                    "style": candidate.style,
                    "seed": candidate.seed,
                    "vary": candidate.vary,
                    "config": config.replace(out=RUNS_DIR).to_dict(),  # relative to the sweep
                    "job": queue.add(config),
                    "run": None,
                }
            )
        record = {
            "prompts": prompts,
            "styles": styles,
            "seeds": seeds,
            "vary": dict([check_vary(vary[0], list(vary[1]), "vary")]) if vary else None,
            "base": base.to_dict(),
            "candidates": entries,
        }
        write_json(building / SWEEP_FILE, record)
        if folder.is_dir():
            folder.rmdir()  # empty (checked above): the finished sweep takes its place
        os.replace(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return folder


def read_sweep(folder: str | Path) -> dict[str, Any]:
    """A sweep's sweep.json, with a clear error when the folder holds none."""
    path = Path(folder) / SWEEP_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{folder} is not a sweep folder: it has no {SWEEP_FILE}.") from None
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(
            f"{path} could not be read ({error}); the sweep folder is damaged."
        ) from None


def run_sweep(
    folder: str | Path,
    models: Models | None = None,
    *,
    workers: int = 1,
    batch: int | None = None,
    ray: str | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] = print,
) -> list[Job]:
    """Run every candidate not yet done; return the jobs this process ran.

    The candidates are jobs in the sweep's queue: a candidate cut short (Stop, Ctrl-C, a
    crash) resumes from its saved state, a failed one is tried again, finished ones are
    skipped. ``batch``: how many new candidates of one shape each worker optimises together
    (None: up to 8 on a GPU, 1 on the CPU; see queue.worker.auto_batch). ``workers`` above 1
    starts that many more worker processes on the same queue, worker i on GPU i when the
    machine has several; ``ray`` sends the candidates as Ray tasks to the cluster at that
    address ("local" starts one here). Models load once per worker.
    """
    folder = Path(folder)
    record = read_sweep(folder)  # a clear error if this is no sweep
    queue = JobQueue(folder / QUEUE_FILE, create=False)
    for job_id in queue.retry_failed():
        say(f"job {job_id}: failed before; trying it again")
    if ray is not None:
        try:
            return work_on_ray(queue, None if ray == "local" else ray, say=say)
        finally:
            record_runs(folder)
    command = [sys.executable, "-m", "vqclip", "queue", "work", "--queue", str(queue.path)]
    if batch is not None:
        command += ["--batch", str(batch)]
    device = str(record.get("base", {}).get("device", "auto"))
    helpers = [
        subprocess.Popen([*command, "--quiet"], env=helper_env(i, device, say))
        for i in range(1, workers)
    ]
    try:
        ran = work(
            queue, models=models, batch=batch, progress=progress, should_stop=should_stop, say=say
        )
    finally:
        for helper in helpers:
            if sys.exc_info()[0] is not None:
                helper.terminate()  # Ctrl-C here stops them too; their jobs stay resumable
            helper.wait()
        record_runs(folder)
    return ran


def helper_env(
    worker: int, device: str, say: Callable[[str], None] = print
) -> dict[str, str] | None:
    """The environment of helper worker ``worker`` (1, 2, …; this process is worker 0 on
    the first GPU): on a machine with several GPUs its own one, GPU ``worker`` of those
    visible, through CUDA_VISIBLE_DEVICES. None (inherit) on the CPU or with one GPU."""
    if device == "cpu" or ":" in device:  # the CPU, or a GPU the settings name
        return None
    count = torch.cuda.device_count()
    if count < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in visible.split(",")] if visible else [str(k) for k in range(count)]
    gpus = gpus[:count]
    if worker >= len(gpus):
        say(f"worker {worker}: more workers than GPUs ({len(gpus)}); it shares GPU "
            f"{gpus[worker % len(gpus)]}")  # fmt: skip
    return {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[worker % len(gpus)]}


def record_runs(folder: str | Path) -> dict[str, Any]:
    """Copy each candidate's run directory (relative to the sweep), status and error from
    its job into sweep.json."""
    folder = Path(folder)
    record = read_sweep(folder)
    jobs = {job.id: job for job in JobQueue(folder / QUEUE_FILE, create=False).jobs()}
    for entry in record["candidates"]:
        job = jobs.get(entry["job"])
        if job is None:
            continue
        entry["status"], entry["error"] = job.status, job.error
        if job.run_dir:
            entry["run"] = os.path.relpath(os.path.abspath(job.run_dir), os.path.abspath(folder))
    write_json(folder / SWEEP_FILE, record)
    return record


def sweep_status(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The sweep's candidates by how far they got: ``done``, ``failed`` (each with its
    ``error``) and ``unfinished`` (queued, running or stopped), as sweep.json entries."""
    record = record_runs(folder)
    found: dict[str, list[dict[str, Any]]] = {"done": [], "failed": [], "unfinished": []}
    for entry in record["candidates"]:
        status = entry.get("status")
        found[status if status in ("done", "failed") else "unfinished"].append(entry)
    return found


def _run_dir(folder: Path, entry: dict[str, Any]) -> Path | None:
    """The candidate's run directory as its job recorded it (see record_runs)."""
    return folder / entry["run"] if entry.get("run") else None


def load_judge(name: str | None, models: Models) -> tuple[torch.nn.Module, str]:
    """The CLIP model that ranks, and its name: ``name`` (loaded on the models' device), or
    the one the sweep optimised with (which flatters its own pictures a little); of a CLIP
    ensemble, its first CLIP (one judge keeps scores comparable with single-CLIP sweeps)."""
    if name is None:
        if len(models.clips) > 1:
            return (
                models.clip,
                f"{models.clip_info.name} (the first CLIP of the ensemble optimised)",
            )
        return models.clip, f"{models.clip_info.name} (the model optimised)"
    judge, info = load_clip(name, device=models.device)
    return judge, info.name


@torch.no_grad()
def clip_score(model: torch.nn.Module, image_path: Path, text: str, size: int) -> float:
    """Cosine similarity of CLIP's embedding of a picture (resized to cover ``size``,
    centre-cropped) and of a text: how well the picture fits the words."""
    device = next(model.parameters()).device
    pixels = load_rgb(str(image_path), (size, size)).to(device)  # [1, 3, S, S]
    image = F.normalize(encode_images(model, pixels), dim=-1)
    words = encode_text(model, text, device)
    return float((image * words).sum())


class _Judge:
    """CLIP scores of pictures against texts, each text encoded once (as clip_score)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.size = int(model.visual.input_resolution)
        self.device = next(model.parameters()).device
        self.texts: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def scores(self, image_path: Path, *texts: str) -> list[float]:
        pixels = load_rgb(str(image_path), (self.size, self.size)).to(self.device)
        image = F.normalize(encode_images(self.model, pixels), dim=-1)  # [1, D]
        for text in texts:
            if text not in self.texts:
                self.texts[text] = encode_text(self.model, text, self.device)  # [1, D]
        return [float((image * self.texts[text]).sum()) for text in texts]


RANK_BY = ("final", "best")  # which picture of each candidate the ranking judges


def rank_sweep(
    folder: str | Path,
    judge: torch.nn.Module,
    judge_name: str,
    *,
    snapshots: bool = False,
    by: str = "final",
) -> list[dict]:
    """Score every finished candidate by CLIP fit to its prompt without the style words
    (``score``) and with them (``styled_score``); write ranking.json, best first.

    ``by`` picks the picture judged: "final" (final.png) or "best" (each candidate's
    best.png, the picture keep-best chose during its run; a candidate without one, made by
    an older vqclip, is judged by its final.png). Each row names the file in ``image``.

    With ``snapshots`` every snapshot of each candidate is scored the same way too (its
    ``snapshots`` list), and ``best_iteration``/``best_score`` name the snapshot that fits
    its prompt best: early iterations are sometimes the gold.
    """
    if by not in RANK_BY:
        raise ConfigError(
            f"rank by {by!r}? A sweep ranks each candidate's 'final' picture or its 'best' "
            "(keep-best's best.png); give one of those."
        )
    folder = Path(folder)
    record = record_runs(folder)
    scorer = _Judge(judge)
    rows, missing = [], []
    for entry in record["candidates"]:
        run_dir = _run_dir(folder, entry)
        if entry.get("status") != "done" or run_dir is None or not (run_dir / FINAL_FILE).is_file():
            missing.append(
                {key: entry.get(key) for key in ("index", "prompt", "style", "seed", "vary")}
                | {"status": entry.get("status") or "queued", "error": entry.get("error")}
            )
            continue
        plain, with_style = _plain_text(entry["prompt"]), _plain_text(entry["config"]["prompt"])
        image = BEST_FILE if by == "best" and (run_dir / BEST_FILE).is_file() else FINAL_FILE
        score, styled_score = scorer.scores(run_dir / image, plain, with_style)
        row = {
            "index": entry["index"],
            "prompt": entry["prompt"],
            "style": entry["style"],
            "seed": entry["seed"],
            "vary": entry.get("vary") or {},
            "run": str(run_dir.relative_to(folder)),
            "image": image,  # the picture judged, in the run's folder
            "score": score,
            "styled_score": styled_score,
        }
        if snapshots:
            row["snapshots"] = [
                dict(zip(("iteration", "score", "styled_score"), (i, *scorer.scores(path, plain, with_style))))
                for i, path in list_snapshots(run_dir)
            ]  # fmt: skip
            if row["snapshots"]:
                best = max(row["snapshots"], key=lambda s: (s["score"], -s["iteration"]))
                row["best_iteration"], row["best_score"] = best["iteration"], best["score"]
        rows.append(row)
    rows.sort(key=lambda row: (-row["score"], row["index"]))
    ranking = {
        "judge": judge_name,
        "snapshots_ranked": snapshots,
        "ranked_by": by,
        "ranking": rows,
        "missing": missing,  # candidates with no picture yet: failed (with the error) or not run
    }
    write_json(folder / RANKING_FILE, ranking)
    return rows


def _plain_text(prompt: str) -> str:
    """The words of the prompts that pull, without weights: what a picture should show."""
    return ", ".join(spec.text for spec in parse_prompts(prompt) if spec.weight > 0)


def sheets(folder: str | Path, evolution_top: int = 3) -> list[Path]:
    """Contact sheets from ranking.json: all candidates by score (contact_sheet.png), one
    prompt x style grid per seed, and the evolution of the top candidates over their
    snapshots. When the snapshots were ranked too, the evolution marks each candidate's
    best iteration and best_snapshots.png shows every candidate at its best iteration,
    sorted by that score. Every sheet names the judge. Returns the files written."""
    folder = Path(folder)
    ranking = json.loads((folder / RANKING_FILE).read_text(encoding="utf-8"))
    rows, judge = ranking["ranking"], ranking["judge"]
    if not rows:
        raise RunError(f"No candidate of {folder} has finished yet: nothing to put on a sheet.")
    judged = f"Ranked by CLIP {judge}: similarity to the prompt without its style words"
    if ranking.get("ranked_by") == "best":
        judged += " (each candidate's best picture)"
    record = read_sweep(folder)
    signing = signing_for(RunConfig.from_dict(record["base"]))  # as the sweep's settings say
    entries = record["candidates"]
    missing = len(entries) - len({row["index"] for row in rows})
    written = [
        contact_sheet(
            [_picture(folder, row) for row in rows],
            [f"#{k + 1} {_label(row)} · seed {row['seed']} · {row['score']:.3f}"
             for k, row in enumerate(rows)],
            folder / SHEET_FILE,
            credentials=signing,
            columns=min(4, len(rows)),
            title=judged + (f". {missing} of {len(entries)} candidates missing (failed or "
                            "not finished)" if missing > 0 else ""),
        )
    ]  # fmt: skip
    # The axes in the order given (first appearance in the expansion), never score order;
    # built from the candidates, so a prompt given with a trailing space or twice still
    # finds its cells.
    prompts = list(dict.fromkeys(entry["prompt"].strip() for entry in entries))
    styles = list(dict.fromkeys(entry["style"].strip() for entry in entries))
    changes = [json.loads(c) for c in dict.fromkeys(_cell(entry)[2] for entry in entries)]
    down = "prompts" + (f" x {next(iter(changes[0]))}" if changes[0] else "")
    absent = {(_cell(m), m["seed"]): m for m in ranking.get("missing") or []}
    for seed in dict.fromkeys(entry["seed"] for entry in entries):
        grid: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in rows:
            if row["seed"] == seed:
                grid.setdefault(_cell(row), row)  # a duplicate candidate: its best
        if not grid:
            continue  # nothing of this seed finished: no sheet to draw
        cells = [
            (grid.get(_cell(key)), key)
            for p in prompts
            for v in changes
            for s in styles
            for key in [{"prompt": p, "style": s, "vary": v, "seed": seed}]
        ]
        written.append(
            contact_sheet(
                [_missing_tile() if row is None else _picture(folder, row) for row, _ in cells],
                [f"{_label(key)} · seed {seed} · "
                 + (_absent(absent.get((_cell(key), seed))) if row is None else f"{row['score']:.3f}")
                 for row, key in cells],
                folder / f"grid_seed{seed}.png",
                credentials=signing,
                columns=len(styles),
                title=f"Seed {seed}: {down} down, styles across. {judged}",
            )
        )  # fmt: skip
    top = rows[:evolution_top]
    snapshots = [dict(list_snapshots(folder / row["run"])) for row in top]
    shared = sorted(set.intersection(*(set(s) for s in snapshots)))  # one column per iteration
    if shared:
        written.append(
            contact_sheet(
                [found[i] for found in snapshots for i in shared],
                [_evolution_label(k, row, i) for k, row in enumerate(top) for i in shared],
                folder / "evolution.png",
                credentials=signing,
                columns=len(shared),
                title=f"The top {len(top)} as they evolved"
                + ("; 'best' marks each one's best iteration" if "snapshots" in top[0] else "")
                + f". {judged}",
            )
        )
    best = sorted(
        (row for row in rows if "best_iteration" in row),
        key=lambda row: (-row["best_score"], row["index"]),
    )
    if best:
        written.append(
            contact_sheet(
                [dict(list_snapshots(folder / row["run"]))[row["best_iteration"]] for row in best],
                [f"#{k + 1} {_label(row)} · seed {row['seed']} · it {row['best_iteration']} · "
                 f"{row['best_score']:.3f}" for k, row in enumerate(best)],
                folder / BEST_SHEET_FILE,
                credentials=signing,
                columns=min(4, len(best)),
                title=f"Each candidate at its best snapshot. {judged}",
            )
        )  # fmt: skip
    return written


def _picture(folder: Path, row: dict[str, Any]) -> Path:
    """The picture a ranking row judged (final.png in rankings made before keep-best)."""
    return folder / row["run"] / row.get("image", FINAL_FILE)


def _evolution_label(k: int, row: dict[str, Any], iteration: int) -> str:
    label = f"#{k + 1} {_label(row)} · seed {row['seed']} · it {iteration}"
    scored = {s["iteration"]: s["score"] for s in row.get("snapshots", [])}
    if iteration in scored:
        label += f" · {scored[iteration]:.3f}"
        if iteration == row.get("best_iteration"):
            label += " · best"
    return label


def _cell(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["prompt"].strip(), row["style"].strip(), json.dumps(row.get("vary") or {})


def _absent(missing: dict[str, Any] | None) -> str:
    """Why a grid cell has no picture, as far as ranking.json says."""
    status = (missing or {}).get("status")
    if status == "failed":
        return "missing: failed (its error is in ranking.json; retry with --resume)"
    return "missing: not finished" if status else "missing: failed or not finished"


def _missing_tile() -> Any:
    """A grey tile for a grid cell whose candidate failed or has not finished."""
    from PIL import Image

    return Image.new("RGB", (64, 64), (200, 200, 200))


def _label(row: dict[str, Any]) -> str:
    label = f"{row['prompt']} / {row['style']}" if row["style"] else row["prompt"]
    for setting, value in (row.get("vary") or {}).items():
        label += f" · {setting} {_show(value)}"
    return label


def candidates_of(folder: str | Path) -> list[Candidate]:
    """The sweep's candidates as recorded in sweep.json (``out`` as a path from here)."""
    home = Path(os.path.abspath(folder))
    return [
        Candidate(
            e["index"],
            e["prompt"],
            e["style"],
            e["seed"],
            RunConfig.from_dict({**e["config"], "out": str(home / e["config"]["out"])}),
            e.get("vary") or {},
        )
        for e in read_sweep(folder)["candidates"]
    ]


__all__ = [
    "Candidate",
    "candidates_of",
    "clip_score",
    "expand",
    "rank_sweep",
    "read_sweep",
    "run_sweep",
    "sheets",
    "start_sweep",
    "styled",
    "sweep_status",
]
