"""Cutouts by value: the crop boxes, the augmentation's affine map and noise, and what
make_cutouts does by default, each compared with the draws replayed from a twin generator
and an independent computation of what the docstrings promise."""

from __future__ import annotations

import math

import pytest
import torch

from vqclip.cutouts import (
    augment,
    crop_and_resize,
    crop_and_resize_matmul,
    crop_boxes,
    make_cutouts,
    resize_weights,
    whole_image_boxes,
)

CPU = torch.device("cpu")


def twins(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Two generators in the same state: one for the code, one to replay its draws."""
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "batch, cutn, height, width, cut_size, cut_pow",
    [
        (1, 200, 64, 64, 16, 1.0),  # square image, uniform sizes
        (2, 150, 40, 90, 24, 2.5),  # wide image: sizes up to the height, favouring small
        (3, 100, 80, 30, 8, 0.4),  # tall image: sizes up to the width, favouring large
        (2, 50, 20, 28, 32, 1.0),  # cut_size beyond the image: every crop is the short side
        (1, 50, 40, 20, 32, 1.0),  # … of a tall image: the width
    ],
)
def test_crop_boxes_are_the_documented_draws(batch, cutn, height, width, cut_size, cut_pow):
    generator, replay = twins(batch * 1000 + cutn)
    boxes = crop_boxes(batch, cutn, height, width, cut_size, cut_pow, generator, CPU)
    # One [batch, cutn, 3] draw per call: size, x and y of each crop.
    u = torch.rand(batch, cutn, 3, generator=replay).double().tolist()
    short = min(height, width)
    smallest = min(short, cut_size)
    expected = []
    for b in range(batch):
        for draw_size, draw_x, draw_y in u[b]:
            # size = min_size + (max_size - min_size) * u ** cut_pow, whole pixels
            size = math.floor(smallest + (short - smallest) * draw_size**cut_pow)
            x0 = math.floor(draw_x * (width - size + 1))  # every position 0 … width - size
            y0 = math.floor(draw_y * (height - size + 1))
            expected.append([b, x0, y0, x0 + size, y0 + size])
    assert boxes.shape == (batch * cutn, 5) and boxes.dtype == torch.float32
    assert boxes.tolist() == expected
    sizes = boxes[:, 3] - boxes[:, 1]
    assert sizes.min() >= smallest and sizes.max() <= short
    assert boxes[:, 3].max() <= width and boxes[:, 4].max() <= height
    # The generator moved on by exactly that one draw.
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=replay))


def test_whole_image_boxes_cover_each_image():
    boxes = whole_image_boxes(3, 40, 90, CPU)
    assert boxes.tolist() == [[i, 0, 0, 90, 40] for i in range(3)]


def ramp(count: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Cutouts whose channels hold each pixel centre's x and y in grid_sample's normalised
    coordinates (-1 … 1, align_corners=False) and one: [count, 3, size, size]."""
    centres = (torch.arange(size, dtype=dtype) * 2 + 1) / size - 1
    x = centres[None, :].expand(size, size)
    y = centres[:, None].expand(size, size)
    return torch.stack([x, y, torch.ones_like(x)])[None].repeat(count, 1, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augment_is_a_flip_rotation_zoom_and_shift_plus_scaled_noise(dtype):
    count, size = 64, 32
    generator, replay = twins(11)
    out = augment(ramp(count, size, dtype), generator)
    assert out.dtype == dtype and out.shape == (count, 3, size, size)
    u = torch.rand(count, 6, generator=replay).double()
    noise = torch.randn(count, 3, size, size, generator=replay, dtype=dtype)
    amount = 0.1 * u[:, 5]  # noise of up to 0.1 standard deviations per cutout
    moved = out.double() - noise.double() * amount[:, None, None, None]
    # The constant channel stays one wherever it is sampled, the corners turned in from
    # outside included (reflected, not padded with zeros): what is left is the noise exactly.
    assert (moved[:, 2] - 1).abs().max() < 1e-6
    # Where each output pixel near the centre samples the input (the ramp reads it back):
    # mirror x for half the cutouts, rotate by up to ±15°, zoom by 0.95…1.05 (coordinates
    # divided by it), shift by up to ±10 % of the cutout (0.1 of the -1…1 range each way).
    angle = (u[:, 0] - 0.5) * math.radians(30)
    zoom = 0.95 + 0.1 * u[:, 1]
    mirror = torch.where(u[:, 2] < 0.5, -1.0, 1.0).double()
    shift_x, shift_y = (u[:, 3] - 0.5) * 0.2, (u[:, 4] - 0.5) * 0.2
    centre = slice(size // 4, 3 * size // 4)  # |coordinate| <= 0.5: never near the border
    xo = ramp(1, size, torch.float64)[0, 0, centre, centre][None]
    yo = ramp(1, size, torch.float64)[0, 1, centre, centre][None]
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    xm = xo * mirror[:, None, None]
    x_in = (c * xm - s * yo) / zoom[:, None, None] + shift_x[:, None, None]
    y_in = (s * xm + c * yo) / zoom[:, None, None] + shift_y[:, None, None]
    assert torch.allclose(moved[:, 0, centre, centre], x_in, atol=1e-5)
    assert torch.allclose(moved[:, 1, centre, centre], y_in, atol=1e-5)
    # The draws cover each kind of change: both mirror states, both turns, both zooms.
    assert (mirror < 0).any() and (mirror > 0).any()
    assert angle.min() < -0.2 and angle.max() > 0.2 and angle.abs().max() <= math.pi / 12


def test_augment_keeps_a_low_precision_dtype():
    generator = torch.Generator().manual_seed(0)
    out = augment(ramp(4, 16, torch.bfloat16), generator)
    assert out.dtype == torch.bfloat16


def test_make_cutouts_by_default_crops_with_roi_align_and_augments():
    image = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(5))
    generator, replay = twins(6)
    got = make_cutouts(image, cutn=6, cut_size=16, cut_pow=1.3, generator=generator)
    boxes = crop_boxes(2, 6, 48, 40, 16, 1.3, replay, CPU)
    expected = augment(crop_and_resize(image, boxes, 16), replay)
    assert got.shape == (12, 3, 16, 16)
    assert torch.equal(got, expected)


def test_make_cutouts_whole_and_unaugmented_is_the_plain_resize():
    image = torch.rand(
        2, 3, 48, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(7)
    )
    generator = torch.Generator().manual_seed(8)
    got = make_cutouts(
        image, cutn=5, cut_size=24, cut_pow=1.0, generator=generator, whole=True,
        augmentations=False,
    )  # fmt: skip
    assert got.dtype == torch.float64 and got.shape == (2, 3, 24, 24)
    assert torch.equal(got, crop_and_resize(image, whole_image_boxes(2, 48, 40, CPU), 24))
    # Neither cropping at random nor augmenting: the generator was not touched.
    assert torch.equal(
        torch.rand(3, generator=generator),
        torch.rand(3, generator=torch.Generator().manual_seed(8)),
    )


def test_make_cutouts_matmul_runs_the_products_in_the_dtype_asked():
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(9))
    generator, replay = twins(10)
    got = make_cutouts(
        image, cutn=4, cut_size=16, cut_pow=1.0, generator=generator, augmentations=False,
        resize="matmul", resize_dtype=torch.bfloat16,
    )  # fmt: skip
    boxes = crop_boxes(1, 4, 40, 56, 16, 1.0, replay, CPU)
    expected = crop_and_resize_matmul(image, boxes, 16, torch.bfloat16)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    # bf16 products round visibly: the same crops through roi_align differ.
    assert (got - crop_and_resize(image, boxes, 16)).abs().max() > 1e-3


def test_matmul_cutouts_equal_roi_align_for_boxes_over_the_edge():
    # Boxes no larger than the image but partly outside it: roi_align samples a point down to
    # -1 and up to the image's size (clamped to the edge pixel) and drops the points beyond.
    image = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor(
        [
            [0, -1.0, -1.0, 7.0, 7.0],  # first samples exactly at -1: kept
            [1, 13.0, 17.0, 21.0, 25.0],  # last samples exactly at the size: kept
            [0, -1.5, -1.5, 6.5, 6.5],  # first samples at -1.5: dropped
            [1, -3.0, 2.0, 9.0, 20.0],
            [0, -0.75, 0.0, 7.25, 8.0],
        ]
    )
    expected = crop_and_resize(image, boxes, 8)
    assert torch.allclose(crop_and_resize_matmul(image, boxes, 8), expected, atol=1e-6)
    # The dropped samples count as zeros: a box half off the image is darker than the pixels.
    assert expected[2, :, 0, 0].abs().max() < image[0, :, 0, 0].abs().max()


def test_resize_weights_keep_the_dtype_of_the_boxes():
    start = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    length = torch.tensor([9.0, 5.0, 16.0], dtype=torch.float64)
    weights = resize_weights(start, length, 4, 16)
    assert weights.dtype == torch.float64 and weights.shape == (3, 4, 16)
    assert torch.allclose(weights, resize_weights(start.float(), length.float(), 4, 16).double())
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, dtype=torch.float64))


def test_every_tensor_is_made_on_the_images_device():
    # The meta device holds no data but checks placement: a tensor made on the default
    # device (the CPU) meets the meta ones and fails, or comes out on the wrong device.
    meta = torch.device("meta")
    generator = torch.Generator().manual_seed(0)
    assert crop_boxes(2, 3, 16, 24, 8, 1.0, generator, meta).device == meta
    assert whole_image_boxes(2, 16, 24, meta).device == meta
    start, length = torch.zeros(3, device=meta), torch.full((3,), 10.0, device=meta)
    assert resize_weights(start, length, 4, 16).device == meta
    assert augment(torch.zeros(2, 3, 8, 8, device=meta), generator).device == meta
    image = torch.zeros(1, 3, 16, 24, device=meta)
    for whole in (False, True):
        cutouts = make_cutouts(
            image, cutn=2, cut_size=8, cut_pow=1.0, generator=generator, whole=whole,
            resize="matmul",
        )  # fmt: skip
        assert cutouts.device == meta
