"""Bad input typed into the panel: each is refused before anything runs, with the message
beside the field it is about and nothing written (the panel's rows of the bad-input table)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vqclip.config import RunConfig
from vqclip.ui import Panel

# (field, what is typed, words the message beside that field must hold)
CASES = [
    ("prompt", "", "Nothing to aim for"),
    ("prompt", "   \n ", "Nothing to aim for"),
    ("prompt", "\u200b\u200d", "only invisible characters"),
    ("prompt", "cat:0", "every prompt has weight 0"),
    ("prompt", "fog:", "ends in ':' with no weight"),
    ("prompt", "fog:0.5x", "looks like a weight"),
    ("prompt", "fog:nan", "finite numbers"),
    ("prompt", ":0.5", "has a weight but no text"),
    ("prompt", "a\x00b", "control character U+0000"),
    ("prompt", "x" * 100_000, "characters long"),
    ("iterations", 0, "at least 1"),
    ("iterations", -5, "at least 1"),
    ("cutn", 0, "must be at least 1"),
    ("lr", 0.0, "positive number"),
    ("lr", -1.0, "positive number"),
    ("size", [0, 64], "two positive whole numbers"),
    ("size", [20000, 20000], "larger than 4096"),
    ("seed", "twelve", "not a whole number"),
    ("seed", "-3", "from 0 to 2**63-1"),
    ("snapshots", ",,,", "snapshot"),
    ("snapshots", "every:0", "every:N needs N of at least 1"),
    ("snapshots", "5000", "beyond the run's"),
    ("snapshots", "banana", "banana"),
    ("init_image", "/no/such/picture.png", "does not exist"),
    ("image_prompts", "/no/such/prompt.png", "does not exist"),
    ("noise_prompt_seeds", "1, x", "not a whole number"),
    ("noise_prompt_weights", "0.5, 0.5", "give one weight per seed"),
    ("clip_model", "/no/such/clip.pt", "neither a known name nor an existing file"),
    ("vqgan_checkpoint", "", "go together"),
]


@pytest.fixture
def panel(tiny_model_dir, tiny_models, tmp_path) -> Panel:
    config = RunConfig(
        prompt="a lighthouse",
        size=[32, 32],
        iterations=10,
        snapshots="last",
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]),
        device="cpu",
    )
    return Panel(config, models=tiny_models, out=tmp_path / "runs", mode="background")


@pytest.mark.parametrize(
    "field, typed, words", CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)]
)
def test_bad_input_in_the_panel_is_shown_beside_its_field_and_nothing_runs(
    panel, tmp_path, field, typed, words
):
    if field == "vqgan_checkpoint":
        panel.fields["vqgan_config"].value = panel.fields[
            "vqgan_config"
        ].value  # one without the other
    if field == "clip_model":
        panel.form.fields[field].set(typed)  # a drop-down: the value joins its choices
    else:
        panel.fields[field].value = typed  # as typed
    beside = panel.field_errors[field].value
    assert words.lower() in beside.lower(), beside
    assert words.lower() in panel.problem.value.lower()
    assert not panel.run()
    assert "cannot run" in panel.status.value
    assert not panel.running and not (tmp_path / "runs").exists()  # nothing was written


def test_odd_pictures_upload_and_run(panel, tmp_path):
    """Pictures people have: palette, alpha, 16-bit grey, CMYK, 1x1, animated. Each is
    uploaded through the init image button, and a run starts from it and finishes."""
    import io

    from test_widgets import upload

    from vqclip.export import read_recipe

    frames = [Image.new("RGB", (24, 16), color) for color in ("red", "green", "blue")]
    kinds = {
        "palette.png": Image.new("P", (20, 20), 3),
        "alpha.png": Image.new("RGBA", (20, 20), (10, 20, 30, 0)),
        "grey16.png": Image.new("I;16", (20, 20), 40000),
        "cmyk.jpg": Image.new("CMYK", (20, 20), (0, 50, 100, 0)),
        "dot.png": Image.new("RGB", (1, 1), "red"),
        "animated.gif": frames[0],
    }
    panel.fields["iterations"].value = 2
    for name, image in kinds.items():
        buffer = io.BytesIO()
        extra = {"save_all": True, "append_images": frames[1:]} if name.endswith(".gif") else {}
        image.save(
            buffer, format=image.format or Path(name).suffix[1:].replace("jpg", "jpeg"), **extra
        )
        data = buffer.getvalue()
        upload(panel.upload_init, data, name)
        init = Path(panel.fields["init_image"].value)
        assert init.parent == tmp_path / "runs" / "inputs" and init.read_bytes() == data, name
        assert panel.field_errors["init_image"].value == "", name
        assert panel.run(), (name, panel.status.value)
        result = panel.wait(120)
        assert result.status == "done" and result.iteration == 2, (name, panel.status.value)
        assert read_recipe(result.final)["config"]["init_image"] == str(init), name
    with Image.open(tmp_path / "runs" / "inputs" / init.name) as kept:
        assert kept.n_frames == 3  # the animated picture was kept whole


def test_an_empty_upload_is_reported_not_ignored(panel, tmp_path):
    from test_widgets import upload

    upload(panel.upload_init, b"", "big photo.jpg")  # what Colab leaves of a 3 MB photo
    assert "upload arrived empty (big photo.jpg)" in panel.status.value
    assert "Drive path or URL" in panel.status.value
    assert panel.fields["init_image"].value == "" and not (tmp_path / "runs").exists()
    panel.upload_init.set_trait("value", ())  # no file at all
    assert "upload arrived empty:" in panel.status.value
