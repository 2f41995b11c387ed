"""Export: PNG recipes, GIF/MP4, strips and sheets, on tiny gradient frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import vqclip
from vqclip import export
from vqclip.export import (
    ExportError,
    comparison_strip,
    contact_sheet,
    export_run,
    format_parameters,
    label_image,
    list_snapshots,
    make_gif,
    make_mp4,
    read_recipe,
    save_png,
)

RECIPE = {
    "config": {
        "prompt": "Oregon 💚 painting",
        "size": [33, 31],
        "seed": 7,
        "iterations": 300,
        "lr": 0.1,
        "cutn": 32,
        "cut_pow": 1.0,
        "optimizer": "adam",
        "vqgan": "vqgan_imagenet_f16_16384",
        "clip_model": "ViT-B/32",
        "init_image": None,
    },
    "iteration": 50,
    "models": {"vqgan": {"sha256": "0123456789abcdef"}},
    "versions": {"vqclip": "0.1.0"},
}


def gradient(w: int = 33, h: int = 31, shift: int = 0) -> np.ndarray:
    """[h, w, 3] uint8: red grows left to right, green top to bottom, blue = shift."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full_like(x, shift)], -1).round().astype(np.uint8)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    for k, it in enumerate([10, 50, 100]):
        recipe = {**RECIPE, "iteration": it}
        save_png(gradient(shift=60 * k), run / "snapshots" / f"{it:06d}.png", recipe)
    (run / "snapshots" / ".000200.png.abc123.tmp").write_bytes(b"half a png")
    (run / "run.json").write_text(json.dumps({"config": RECIPE["config"]}))
    return run


# --- PNG ------------------------------------------------------------------------------------


def test_png_round_trip_keeps_recipe_parameters_and_software(tmp_path):
    path = save_png(gradient(), tmp_path / "a.png", RECIPE)
    assert read_recipe(path) == RECIPE
    with Image.open(path) as im:
        text = im.text
    first, second = text["parameters"].splitlines()
    assert first == "Oregon 💚 painting"
    assert second.startswith("Steps: 50, Total steps: 300, Seed: 7, Size: 33x31, ")
    assert "Model: vqgan_imagenet_f16_16384" in second and "CLIP: ViT-B/32" in second
    assert "Model hash: 0123456789" in second and "Init image" not in second
    assert text["Software"] == f"vqclip {vqclip.__version__}"
    assert "machine-generated" in text["Comment"].lower()
    assert b"iTXtvqclip" in path.read_bytes()  # UTF-8 chunk, not Latin-1 tEXt


def test_format_parameters_tolerates_missing_keys_and_quotes_awkward_values():
    assert format_parameters({}) == ""
    assert format_parameters({"config": {"prompt": "a unicorn"}}) == "a unicorn"
    text = format_parameters({"config": {"prompt": "Time: 12:30", "init_image": "a,b.png"}})
    assert text.splitlines() == ["Time: 12:30", 'Init image: "a,b.png"']


def test_pixels_survive_from_array_tensor_and_float(tmp_path):
    torch = pytest.importorskip("torch")
    array = gradient()
    save_png(array, tmp_path / "u8.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "u8.png")), array)

    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255  # [3, H, W] in [0, 1]
    save_png(tensor, tmp_path / "t.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t.png")), array)

    save_png(array.astype(np.float32) / 255, tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as im:
        assert im.mode == "RGB"
        assert np.array_equal(np.asarray(im), array)


def test_to_pil_rejects_wrong_shapes():
    with pytest.raises(ExportError, match=r"shape \(4, 5\)"):
        export.to_pil(np.zeros((4, 5), np.int64))
    with pytest.raises(ExportError, match="HxWx3"):
        export.to_pil(np.zeros((4, 5, 7), np.uint8))


def test_export_does_not_import_torch_or_matplotlib():
    code = "import sys, vqclip.export; print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_read_recipe_on_foreign_png(tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "foreign.png")
    with pytest.raises(ExportError, match="without a vqclip recipe") as info:
        read_recipe(tmp_path / "foreign.png")
    assert isinstance(info.value, ValueError)
    assert "run.json" in str(info.value)


def test_read_recipe_on_corrupt_json(tmp_path):
    info = PngInfo()
    info.add_itxt("vqclip", '{"config": {"prompt": "a unic')
    Image.fromarray(gradient()).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(ExportError, match="JSON is corrupt"):
        read_recipe(tmp_path / "bad.png")


def test_read_recipe_on_non_png(tmp_path):
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(ExportError, match="is not an image"):
        read_recipe(tmp_path / "notes.png")
    Image.fromarray(gradient()).save(tmp_path / "photo.jpg")
    with pytest.raises(ExportError, match="is a JPEG image, not a PNG"):
        read_recipe(tmp_path / "photo.jpg")


# --- snapshots and animations ---------------------------------------------------------------


def test_list_snapshots_sorts_and_ignores_temp_and_other_files(run_dir):
    (run_dir / "snapshots" / "notes.txt").write_text("x")
    (run_dir / "snapshots" / "50.png").write_bytes(b"")
    found = list_snapshots(run_dir)
    assert [i for i, _ in found] == [10, 50, 100]
    assert [p.name for _, p in found] == ["000010.png", "000050.png", "000100.png"]
    assert list_snapshots(run_dir / "nowhere") == []


def test_gif_frames_durations_and_comment(tmp_path):
    frames = [gradient(shift=s) for s in (0, 100, 200)]
    path = make_gif(frames, tmp_path / "a.gif", fps=10, hold_last=0.5, metadata=RECIPE)
    with Image.open(path) as im:
        assert im.n_frames == 3
        assert im.size == (33, 31)
        assert im.info["loop"] == 0
        assert json.loads(im.info["comment"]) == RECIPE
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert durations == [100, 100, 600]  # the last frame holds 0.5 s more


def test_mp4_frame_count_even_size_and_metadata(tmp_path):
    frames = [gradient(shift=s) for s in (0, 100, 200)]  # 33x31: both sides odd
    Image.fromarray(frames[2]).save(tmp_path / "f2.png")
    mixed = [frames[0], Image.fromarray(frames[1]), tmp_path / "f2.png"]  # array, PIL, path
    path = make_mp4(mixed, tmp_path / "a.mp4", fps=10, hold_last=0.5, metadata=RECIPE)
    props = iio.improps(path, plugin="FFMPEG")
    assert props.shape[1:] == (32, 34, 3)
    read = list(iio.imiter(path, plugin="FFMPEG"))
    assert len(read) == 3 + 5  # 0.5 s hold at 10 fps
    assert abs(int(read[0][5, 5, 0]) - int(frames[0][5, 5, 0])) < 12  # roughly the same picture
    assert "Oregon 💚 painting".encode() in path.read_bytes()  # the comment tag


def test_labels_change_only_the_label_region():
    frame = gradient(64, 64)
    labelled = np.asarray(label_image(frame, "it 50")).astype(int)
    corner = np.abs(labelled[-20:, :24] - frame[-20:, :24]).sum()
    assert corner > 1000
    assert np.array_equal(labelled[:30, 30:], frame[:30, 30:])


def test_gif_labels_are_burnt_in(tmp_path):
    frames = [gradient(64, 64, s) for s in (0, 200)]
    plain = make_gif(frames, tmp_path / "plain.gif")
    labelled = make_gif(frames, tmp_path / "labelled.gif", labels=["it 1", "it 2"])
    a, b = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (plain, labelled))
    assert np.abs(a[-20:, :24] - b[-20:, :24]).mean() > 10
    with pytest.raises(ExportError, match="2 frames"):
        make_gif(frames, tmp_path / "x.gif", labels=["only one"])
    with pytest.raises(ExportError, match="hold_last >= 0"):
        make_mp4(frames, tmp_path / "x.mp4", hold_last=-1)


def test_export_run_writes_gif_and_mp4(run_dir):
    gif, mp4 = export_run(run_dir, gif=True, mp4=True, fps=10, hold_last=0.2)
    assert (gif, mp4) == (run_dir / "animation.gif", run_dir / "animation.mp4")
    with Image.open(gif) as im:
        assert im.n_frames == 3
        assert json.loads(im.info["comment"])["iteration"] == 100  # last snapshot's recipe
    assert len(list(iio.imiter(mp4, plugin="FFMPEG"))) == 3 + 2


def test_export_run_without_snapshots(tmp_path):
    (tmp_path / "empty" / "snapshots").mkdir(parents=True)
    with pytest.raises(ExportError, match="No snapshots in"):
        export_run(tmp_path / "empty")


# --- strips and sheets ----------------------------------------------------------------------


def test_comparison_strip(run_dir):
    path = comparison_strip(run_dir, at=[10, 100])
    assert path == run_dir / "strip_10_100.png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > im.height  # side by side
    grid = comparison_strip(run_dir, path=run_dir / "grid.png", columns=2, title="")
    with Image.open(grid) as im:
        assert im.height > im.width * 0.8  # two rows of two columns


def test_comparison_strip_missing_iteration_lists_existing(run_dir):
    with pytest.raises(ExportError, match=r"iteration\(s\) 75 .*exist at: 10, 50, 100"):
        comparison_strip(run_dir, at=[10, 75])


def test_contact_sheet_size(tmp_path):
    images = [gradient(shift=s) for s in range(0, 250, 50)]  # 5 images -> 2 rows of 4
    path = contact_sheet(images, ["a cat"] * 5, tmp_path / "sheet.png", columns=4, thumb=40)
    with Image.open(path) as im:
        assert im.width == 4 * 40
        assert 2 * 40 < im.height < 2 * 40 * 2
    with pytest.raises(ExportError, match="2 labels for 5 images"):
        contact_sheet(images, ["x", "y"], tmp_path / "bad.png")


def _text_rows(path, thumb: int) -> int:
    """How many lines of text lie under the picture of a one-cell sheet: bands of pixel
    rows holding ink (non-white), counted top to bottom."""
    with Image.open(path) as im:
        caption = np.asarray(im.convert("L"))[thumb:]
    inked = (caption < 160).any(axis=1)
    return int(np.count_nonzero(inked[1:] & ~inked[:-1]) + inked[0])


def test_a_long_caption_is_wrapped_whole_never_cut(tmp_path):
    label = "#12 border collie puppies on a hill / pencil drawing · lr 0.05 · seed 2 · 0.287"
    path = contact_sheet([gradient()], [label], tmp_path / "sheet.png", columns=1, thumb=256)
    lines = export._caption_lines(label, export._font(256 // 16), 256 - 2 * 8)
    assert " ".join(lines) == label  # every word, the score last
    assert lines[-1].endswith("0.287") and len(lines) >= 3
    assert _text_rows(path, 256) == len(lines)  # each line drawn, none dropped
    # A word wider than the cell is broken, not cut.
    word = "x" * 80
    assert "".join(export._caption_lines(word, export._font(8), 36)) == word


@pytest.mark.parametrize("text", ["💚", "Tannhäuser", "🧑‍🚀"])
def test_emoji_and_accents_are_drawn_not_as_boxes(tmp_path, text):
    def caption(label: str) -> np.ndarray:
        path = contact_sheet([gradient()], [label], tmp_path / "s.png", columns=1, thumb=128)
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))[128:]

    missing = caption("\ue000" * len(text))  # a private-use character: no font has it (a box)
    drawn = caption(text)
    assert (drawn < 160).sum() > 20  # ink
    assert not np.array_equal(drawn, missing)  # and not the missing-glyph box
    writer = export._font(32)
    assert writer.runs("Oregon 💚 painting")[1] == ("💚", writer.emoji)


def _fake_sweep(folder, prompts, styles, seeds, scores):
    """A finished sweep on disk without running anything: sweep.json, ranking.json and a
    final.png (and two snapshots) per candidate; ``scores`` in expansion order."""
    entries, rows, missing, k = [], [], [], 0
    for prompt in prompts:
        for style in styles:
            for seed in seeds:
                run = folder / "runs" / f"{k:03d}"
                save_png(gradient(shift=k * 20), run / "final.png")
                for it in (5, 10):
                    save_png(gradient(shift=it), run / "snapshots" / f"{it:06d}.png")
                entries.append({"index": k, "prompt": prompt.strip(), "style": style,
                                "seed": seed, "vary": {}, "config": {"prompt": prompt,
                                "name": f"{k:03d}"}, "job": k + 1, "run": f"runs/{k:03d}"})  # fmt: skip
                if scores[k] is None:  # failed, as rank_sweep records it
                    missing.append({"index": k, "prompt": prompt.strip(), "style": style,
                                    "seed": seed, "vary": {}, "status": "failed",
                                    "error": "boom"})  # fmt: skip
                else:
                    rows.append({"index": k, "prompt": prompt.strip(), "style": style,
                                 "seed": seed, "vary": {}, "run": f"runs/{k:03d}",
                                 "score": scores[k], "styled_score": scores[k]})  # fmt: skip
                k += 1
    rows.sort(key=lambda row: -row["score"])
    record = {"prompts": prompts, "styles": styles, "seeds": seeds, "vary": None,
              "base": {}, "candidates": entries}  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps(record), encoding="utf-8")
    ranking = {"judge": "ViT-B/32", "snapshots_ranked": False, "ranking": rows, "missing": missing}
    (folder / "ranking.json").write_text(json.dumps(ranking), encoding="utf-8")


@pytest.fixture
def drawn(monkeypatch):
    """What each sheet was given: {file name: (labels, columns, title)}; still drawn."""
    from vqclip import sweep

    seen = {}

    def spy(images, labels, path, columns=4, **kwargs):
        seen[Path(path).name] = (list(labels), columns, kwargs.get("title"))
        return contact_sheet(images, labels, path, columns=columns, **kwargs)

    monkeypatch.setattr(sweep, "contact_sheet", spy)
    return seen


def test_grids_keep_the_axes_in_the_order_given_and_every_label_names_its_seed(tmp_path, drawn):
    from vqclip.sweep import sheets

    # watercolor scores best, so score order would put it first
    _fake_sweep(tmp_path, ["Oregon 💚", "a unicorn"], ["painting", "pencil drawing", "watercolor"],
                [1, 2], [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.9, 0.8])  # fmt: skip
    names = [p.name for p in sheets(tmp_path)]
    assert names == ["contact_sheet.png", "grid_seed1.png", "grid_seed2.png", "evolution.png"]
    labels, columns, _ = drawn["grid_seed1.png"]
    assert columns == 3
    assert [label.split(" · ")[0] for label in labels] == [
        "Oregon 💚 / painting", "Oregon 💚 / pencil drawing", "Oregon 💚 / watercolor",
        "a unicorn / painting", "a unicorn / pencil drawing", "a unicorn / watercolor",
    ]  # fmt: skip
    for sheet, (labels, *_) in drawn.items():
        assert all(" · seed " in label for label in labels), sheet
    assert drawn["grid_seed2.png"][0][0] == "Oregon 💚 / painting · seed 2 · 0.200"


def test_a_trailing_space_a_duplicate_or_a_missing_candidate_still_makes_the_grid(tmp_path, drawn):
    from vqclip.sweep import sheets

    # "a cat " as typed (sweep.json keeps it), twice; one candidate failed (no score)
    _fake_sweep(tmp_path, ["a cat ", "a dog", "a cat "], ["", "painting"], [1],
                [0.5, 0.3, None, 0.4, 0.2, 0.1])  # fmt: skip
    names = [p.name for p in sheets(tmp_path)]
    assert "grid_seed1.png" in names
    labels, columns, _ = drawn["grid_seed1.png"]
    assert columns == 2 and len(labels) == 4  # a cat, a dog x (bare, painting): no duplicate
    assert labels[2].startswith("a dog · seed 1 · missing: failed (its error is in ranking.json")
    assert (
        labels[0] == "a cat · seed 1 · 0.500" and labels[1] == "a cat / painting · seed 1 · 0.300"
    )
    assert "1 of 6 candidates missing" in drawn["contact_sheet.png"][2]


# --- atomicity ------------------------------------------------------------------------------


def _fail_midway(target, *args, **kwargs):
    """Stand-in writer: writes half a file to the path it was given, then fails."""
    with open(target, "wb") as f:
        f.write(b"half a file")
    raise OSError("disk full")


def _pil_fails(monkeypatch):
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: _fail_midway(fp))


def _imageio_fails(monkeypatch):
    monkeypatch.setattr(iio, "imwrite", _fail_midway)


def _matplotlib_fails(monkeypatch):
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", lambda self, fname, **k: _fail_midway(fname))


FRAMES = [gradient(shift=s) for s in (0, 100)]


@pytest.mark.parametrize(
    ("name", "break_writer", "write"),
    [
        ("a.png", _pil_fails, lambda path, run: save_png(FRAMES[0], path, RECIPE)),
        ("a.gif", _pil_fails, lambda path, run: make_gif(FRAMES, path)),
        ("a.mp4", _imageio_fails, lambda path, run: make_mp4(FRAMES, path)),
        ("s.png", _matplotlib_fails, lambda path, run: comparison_strip(run, path=path)),
    ],
)
def test_failed_write_leaves_previous_file_and_no_temp(
    run_dir, tmp_path, monkeypatch, name, break_writer, write
):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"previous version")
    break_writer(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        write(out / name, run_dir)
    assert (out / name).read_bytes() == b"previous version"
    assert [p.name for p in out.iterdir()] == [name]


def test_parameters_name_local_model_files_their_hashes_and_the_precision_used():
    from vqclip.export import format_parameters

    recipe = {
        "config": {"prompt": "a unicorn", "vqgan_checkpoint": "/m/my.ckpt", "clip_model": "/m/c.pt",
                   "precision": "auto", "vqgan": "vqgan_imagenet_f16_16384"},
        "models": {"vqgan": {"sha256": {"config": "a" * 64, "checkpoint": "b" * 64}},
                   "clip": {"sha256": {"weights": "c" * 64}}},
        "precision": "bf16",
    }  # fmt: skip
    line = format_parameters(recipe).splitlines()[1]
    assert "Model: my.ckpt" in line and "CLIP: c.pt" in line and "Precision: bf16" in line
    assert "Model hash: bbbbbbbbbb" in line and "CLIP hash: cccccccccc" in line
