"""prompts.py on its own, against independent computations: pictures read and cropped, text
tokenised and encoded, image and noise prompts turned into targets (tiny CLIP, CPU, fp32)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import clip
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vqclip import prompts
from vqclip.config import ConfigError, RunConfig
from vqclip.cutouts import make_cutouts

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]


def test_clip_normalize_every_channel_in_the_images_dtype():
    image = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    out = prompts.clip_normalize(image)
    assert out.dtype == torch.float64
    assert torch.allclose(out, (image - MEAN.double()) / STD.double(), atol=1e-7)
    half = torch.rand(1, 3, 2, 2).bfloat16()  # the constants follow the image's dtype
    assert prompts.clip_normalize(half).dtype == torch.bfloat16


def test_clip_dtype_is_the_weights_dtype():
    model = SimpleNamespace(
        visual=SimpleNamespace(conv1=SimpleNamespace(weight=torch.zeros(1).bfloat16()))
    )
    assert prompts.clip_dtype(model) == torch.bfloat16


def test_encode_images_and_text_match_clip_itself(tiny_models):
    model = tiny_models.clip
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.encode_image((images - MEAN) / STD).float()
        got = prompts.encode_images(model, images)
        text = F.normalize(model.encode_text(clip.tokenize("a unicorn")).float(), dim=-1)
    assert torch.allclose(got, expected, atol=1e-5) and got.dtype == torch.float32
    encoded = prompts.encode_text(model, "a unicorn", torch.device("cpu"))
    assert encoded.shape == (1, text.shape[1]) and torch.allclose(encoded, text, atol=1e-5)


def test_a_long_prompt_is_cut_with_a_warning():
    long = "word " * 200
    with pytest.warns(UserWarning, match="longer than CLIP's 77-token limit; only its beginning"):
        tokens = prompts.tokenize(long, torch.device("cpu"))
    assert torch.equal(tokens, clip.tokenize(long, truncate=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(prompts.tokenize("a cat", torch.device("cpu")), clip.tokenize("a cat"))


def test_open_rgb_reads_modes_as_rgb_and_names_a_bad_file(tmp_path):
    Image.new("L", (3, 2), 77).save(tmp_path / "grey.png")
    with prompts.open_rgb(str(tmp_path / "grey.png")) as im:
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (77, 77, 77)
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert prompts.open_rgb(str(tmp_path / "white16.png")).getpixel((1, 1)) == (255, 255, 255)
    (tmp_path / "bad.png").write_text("no picture")
    with pytest.raises(ConfigError) as caught:
        prompts.open_rgb(str(tmp_path / "bad.png"), "init_image")
    assert str(caught.value).startswith(
        f"The init_image file {str(tmp_path / 'bad.png')!r} could not"
    )
    assert "save it again as PNG or JPEG." in str(caught.value)


def _columns(tmp_path, width: int, height: int = 2, tall: bool = False) -> str:
    """A picture whose column k (row k when tall) is (10 k, 255 - 10 k, 7): each one told apart."""
    pixels = np.zeros((height, width, 3), np.uint8)
    for k in range(width):
        pixels[:, k] = (10 * k, 255 - 10 * k, 7)
    path = tmp_path / f"columns{width}x{height}{'t' if tall else ''}.png"
    Image.fromarray(pixels.transpose(1, 0, 2) if tall else pixels).save(path)
    return str(path)


def _colour(out, y, x):
    return [round(v * 255) for v in out[0, :, y, x].tolist()]


@pytest.mark.parametrize("tall", [False, True])
def test_load_rgb_crops_the_middle_to_the_pixel(tmp_path, tall):
    """No scaling (the picture already covers the size): the crop keeps the middle columns
    (rows), rounding an odd margin down, pixel for pixel. (Before the larger pictures below,
    so a broken scale fails here fast.)"""
    for width, first in ((5, 1), (6, 2)):  # margins 3 and 4: (3 // 2, 4 // 2)
        out = prompts.load_rgb(_columns(tmp_path, width, tall=tall), (2, 2))
        assert out.shape == (1, 3, 2, 2)
        for k in range(2):
            y, x = (k, 0) if tall else (0, k)
            assert _colour(out, y, x) == [10 * (first + k), 255 - 10 * (first + k), 7]


@pytest.mark.parametrize("tall", [False, True])
def test_load_rgb_scales_both_sides_to_cover_then_crops(tmp_path, tall):
    """16 x 2 (left 4 red, middle 8 green, right 4 blue) to 8 x 8: scaled 4 times to 64 x 8,
    the middle 8 columns are all green; squashed instead, red and blue would show."""
    pixels = np.zeros((2, 16, 3), np.uint8)
    pixels[:, :4], pixels[:, 4:12], pixels[:, 12:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(pixels.transpose(1, 0, 2) if tall else pixels).save(tmp_path / "p.png")
    out = prompts.load_rgb(str(tmp_path / "p.png"), (8, 8))
    assert out.shape == (1, 3, 8, 8)
    assert torch.equal(out[0], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 8, 8))


def test_load_rgb_covers_the_size_and_crops_the_centre(tmp_path):
    # Small on purpose: a broken scale (say width * im.width) must not ask for a huge picture.
    pixels = np.zeros((4, 12, 3), np.uint8)
    pixels[:, :4] = (255, 0, 0)  # left third red, middle green, right blue
    pixels[:, 4:8] = (0, 255, 0)
    pixels[:, 8:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = prompts.load_rgb(str(tmp_path / "wide.png"), (4, 4))
    assert out.shape == (1, 3, 4, 4) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 4, 4))
    tall = prompts.load_rgb(str(tmp_path / "wide.png"), (6, 8))  # scaled up to cover 6x8
    assert tall.shape == (1, 3, 8, 6)
    assert torch.equal(tall[0, :, 4, 3], torch.tensor([0.0, 1.0, 0.0]))  # the centre kept


def test_noise_targets_are_seeded_unit_directions():
    a = prompts.noise_target(5, -0.5, 16, torch.device("cpu"))
    expected = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    assert torch.equal(a.embeds, expected)
    assert (a.label, a.weight, a.stop) == ("noise:5", -0.5, float("-inf"))
    assert not torch.equal(prompts.noise_target(6, 1.0, 16, torch.device("cpu")).embeds, a.embeds)


def test_targets_text_then_images_then_noise(tiny_models, tmp_path):
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    config = RunConfig(prompt="a cat:2 | fog:-1:0.5", image_prompts=[f"{tmp_path / 'red.png'}:0.3"],
                       noise_prompt_seeds=[1, 2], noise_prompt_weights=[0.25], size=[32, 32],
                       cutn=3, seed=4, augment=False)  # fmt: skip
    model = tiny_models.clip
    targets = prompts.encode_targets(config, model, 32, torch.device("cpu"))
    assert [(t.label, t.weight, t.stop) for t in targets] == [
        ("a cat", 2.0, float("-inf")),
        ("fog", -1.0, 0.5),
        (f"image:{tmp_path / 'red.png'}", 0.3, float("-inf")),
        ("noise:1", 0.25, float("-inf")),
        ("noise:2", 1.0, float("-inf")),  # unweighted noise prompts pull with 1
    ]
    image = prompts.load_rgb(str(tmp_path / "red.png"), (32, 32))
    cutouts = make_cutouts(image, cutn=3, cut_size=32, cut_pow=1.0,
                           generator=torch.Generator().manual_seed(4), augmentations=False)  # fmt: skip
    with torch.no_grad():
        expected = F.normalize(prompts.encode_images(model, cutouts), dim=-1)
    assert targets[2].embeds.shape == (3, expected.shape[1])
    assert torch.allclose(targets[2].embeds, expected, atol=1e-5)
    assert torch.allclose(targets[4].embeds.norm(dim=-1), torch.ones(1))
    cat = prompts.encode_text(model, "a cat", torch.device("cpu"))
    assert torch.equal(targets[0].embeds, cat)


# --- what mutation testing found unchecked (scripts/mutants.sh prompts) -----------------------
# The "meta" device stands for a second device on a machine with a CPU only: a tensor made
# without device= lands on the CPU, and meta and CPU tensors cannot be mixed.

META = torch.device("meta")


def test_clip_normalize_makes_its_constants_on_the_images_device():
    out = prompts.clip_normalize(torch.zeros(1, 3, 2, 2, device=META))
    assert out.device == META and out.shape == (1, 3, 2, 2)


def test_encode_images_feeds_clip_its_own_dtype_and_returns_float32():
    seen = []
    model = SimpleNamespace(
        visual=SimpleNamespace(conv1=SimpleNamespace(weight=torch.zeros(1, dtype=torch.float64))),
        encode_image=lambda x: seen.append(x.dtype) or x.sum(dim=(2, 3)),
    )
    images = torch.rand(2, 3, 4, 4)
    out = prompts.encode_images(model, images)
    assert seen == [torch.float64] and out.dtype == torch.float32
    expected = ((images.double() - MEAN.double()) / STD.double()).sum(dim=(2, 3)).float()
    assert torch.allclose(out, expected)


def test_the_long_prompt_warning_in_full_points_at_the_caller():
    long = "Attack ships on fire off the shoulder of Orion. " * 10
    with pytest.warns(UserWarning) as caught:
        tokens = prompts.tokenize(long, META)
    (warning,) = caught
    assert str(warning.message) == (
        f"The prompt {long[:60]!r}… is longer than CLIP's 77-token limit; only its beginning "
        "is used."
    )
    assert warning.filename != prompts.__file__
    assert tokens.device == META and prompts.tokenize("a cat", META).device == META


def test_open_rgb_names_the_file_and_the_error_in_full(tmp_path):
    (tmp_path / "bad.png").write_text("no picture")
    with pytest.raises(ConfigError) as caught:
        prompts.open_rgb(str(tmp_path / "bad.png"))
    path = str(tmp_path / "bad.png")
    assert str(caught.value) == (
        f"The image file {path!r} could not be read as a picture (UnidentifiedImageError: "
        f"cannot identify image file {path!r}). It may be truncated, not an image, or in a "
        "format Pillow cannot read: open it in an image viewer, or save it again as PNG or JPEG."
    )


def test_sixteen_and_thirty_two_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 129, 32896, 65535]], np.uint16)  # / 257, rounded
    Image.fromarray(values).save(tmp_path / "g16.png")
    with prompts.open_rgb(str(tmp_path / "g16.png")) as im:
        assert [im.getpixel((x, 0)) for x in range(5)] == [(v,) * 3 for v in (0, 0, 1, 128, 255)]
    wide = np.array([[-500, 0, 32896, 70000]], np.int32)  # mode I: below 0 and above 65535
    Image.fromarray(wide).save(tmp_path / "g32.tif")
    with Image.open(tmp_path / "g32.tif") as im:
        assert im.mode == "I"
    with prompts.open_rgb(str(tmp_path / "g32.tif")) as im:
        assert [im.getpixel((x, 0)) for x in range(4)] == [(v,) * 3 for v in (0, 0, 128, 255)]


def test_a_noise_prompt_is_drawn_on_the_cpu_whatever_the_default_device():
    expected = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    with torch.device(META):  # a notebook that set another default device
        target = prompts.noise_target(5, 1.0, 16, torch.device("cpu"))
    assert torch.equal(target.embeds, expected)
    assert prompts.noise_target(5, 1.0, 16, META).embeds.device == META


def test_text_and_noise_targets_are_made_on_the_device_asked_for(tiny_models):
    """(Not an image prompt: its cutouts need a random generator, which the meta device has
    not; on a CPU-only machine its device cannot be checked.)"""
    import copy

    config = RunConfig(prompt="a cat", noise_prompt_seeds=[1])
    model = copy.deepcopy(tiny_models.clip).to(META)
    targets = prompts.encode_targets(config, model, 32, META)
    assert [t.label for t in targets] == ["a cat", "noise:1"]
    assert [t.embeds.device for t in targets] == [META] * 2


def test_a_cache_keeps_each_text_and_image_encoded_once(tiny_models, tmp_path, monkeypatch):
    """A prompt timeline calls encode_targets at each change with one cache: new weights of
    the same texts and pictures encode nothing again, a new text only itself."""
    Image.new("RGB", (32, 32), (20, 200, 30)).save(tmp_path / "green.png")
    picture = str(tmp_path / "green.png")
    base = RunConfig(prompt="a cat | fog:0.5", image_prompts=[picture], size=[32, 32], cutn=2,
                     seed=4)  # fmt: skip
    texts: list[str] = []
    images: list[str] = []
    real_text, real_image = prompts.encode_text, prompts.encode_image_prompt
    monkeypatch.setattr(
        prompts, "encode_text", lambda m, text, d: texts.append(text) or real_text(m, text, d)
    )
    monkeypatch.setattr(
        prompts,
        "encode_image_prompt",
        lambda m, spec, c, s, d: images.append(spec.text) or real_image(m, spec, c, s, d),
    )
    cache: dict = {}
    cpu = torch.device("cpu")
    first = prompts.encode_targets(base, tiny_models.clip, 32, cpu, cache)
    assert sorted(cache) == [("image", picture), ("text", "a cat"), ("text", "fog")]
    reweighted = base.replace(prompt="a cat:0.2 | fog:2", image_prompts=[f"{picture}:0.7"])
    again = prompts.encode_targets(reweighted, tiny_models.clip, 32, cpu, cache)
    assert (texts, images) == (["a cat", "fog"], [picture])  # nothing encoded again
    assert [t.weight for t in again] == [0.2, 2.0, 0.7]
    assert all(a.embeds is b.embeds for a, b in zip(first, again))
    prompts.encode_targets(base.replace(prompt="a dog | fog"), tiny_models.clip, 32, cpu, cache)
    assert texts == ["a cat", "fog", "a dog"]
    prompts.encode_targets(base, tiny_models.clip, 32, cpu)  # no cache: encoded afresh
    assert texts == ["a cat", "fog", "a dog", "a cat", "fog"]
