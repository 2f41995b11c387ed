"""Export: PNG recipes, GIF/MP4, strips and sheets, on tiny gradient frames."""

from __future__ import annotations

import json
import subprocess
import sys

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
    labels = ["a very long prompt that will not fit in two lines of a tiny thumbnail"] * 5
    path = contact_sheet(images, labels, tmp_path / "sheet.png", columns=4, thumb=40)
    with Image.open(path) as im:
        assert im.width == 4 * 40
        assert 2 * 40 < im.height < 2 * 40 * 2
    with pytest.raises(ExportError, match="2 labels for 5 images"):
        contact_sheet(images, ["x", "y"], tmp_path / "bad.png")


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
