"""Tensor functions and cutouts: exact values, gradients, shapes, cut_pow really used."""

import math

import torch

from vqclip.cutouts import crop_and_resize, crop_boxes, make_cutouts, whole_image_boxes
from vqclip.ops import clamp_with_grad, spherical_distance, total_variation, vector_quantize
from vqclip.prompts import clip_normalize


def test_vector_quantize_picks_nearest_code_and_passes_gradient():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 3.0]])
    z = torch.tensor([[0.9, 1.2], [-1.5, 2.0]]).T.reshape(1, 2, 1, 2).requires_grad_(True)
    q = vector_quantize(z, codebook)
    assert torch.equal(q.detach().reshape(2, 2).T, torch.tensor([[1.0, 1.0], [-2.0, 3.0]]))
    q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_clamp_with_grad_keeps_gradients_that_lead_back_into_range():
    x = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    y = clamp_with_grad(x, 0.0, 1.0)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 1.0]))
    # d/dx of sum(y * g): descent moves x by -g. For x=-0.5, g=-1 moves it up (kept); g=+1 down (dropped).
    y.backward(torch.tensor([-1.0, 2.0, -1.0]))
    assert torch.equal(x.grad, torch.tensor([-1.0, 2.0, 0.0]))


def test_spherical_distance_matches_the_great_circle_formula():
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    d = spherical_distance(x, y)
    angle = torch.tensor([[0.0, math.pi], [math.pi / 2, math.pi / 2]])
    # 2 * arcsin(chord / 2) ** 2 with chord = 2 sin(angle / 2)  ->  angle ** 2 / 2
    assert torch.allclose(d, angle.pow(2) / 2, atol=1e-6)


def test_total_variation_of_a_flat_image_is_zero_and_of_stripes_is_not():
    assert total_variation(torch.ones(1, 3, 8, 8)).item() == 0
    stripes = torch.zeros(1, 3, 8, 8)
    stripes[..., ::2] = 1
    assert total_variation(stripes).item() == 1.0


def test_clip_normalize_uses_clips_mean_and_std():
    grey = torch.full((1, 3, 2, 2), 0.48145466)
    out = clip_normalize(grey)
    assert abs(out[0, 0].mean().item()) < 1e-6
    assert abs(out[0, 1, 0, 0].item() - (0.48145466 - 0.4578275) / 0.26130258) < 1e-6


def test_whole_image_cutout_of_clip_size_copies_pixels_exactly():
    image = torch.rand(1, 3, 32, 32)
    out = crop_and_resize(image, whole_image_boxes(1, 32, 32, image.device), 32)
    assert torch.allclose(out, image, atol=1e-6)


def test_whole_image_cutout_downscales_by_area_average():
    image = torch.rand(1, 3, 64, 64)
    out = crop_and_resize(image, whole_image_boxes(1, 64, 64, image.device), 32)
    assert torch.allclose(out, torch.nn.functional.avg_pool2d(image, 2), atol=1e-6)


def test_cut_pow_shapes_the_size_distribution():
    def mean_size(cut_pow):
        g = torch.Generator().manual_seed(0)
        boxes = crop_boxes(1, 4000, 256, 256, 32, cut_pow, g, torch.device("cpu"))
        return (boxes[:, 3] - boxes[:, 1]).mean().item()

    small, even, large = mean_size(3.0), mean_size(1.0), mean_size(0.3)
    assert small < even < large
    assert abs(even - (32 + 224 / 2)) < 6  # uniform between min and max size


def test_boxes_stay_inside_the_image():
    g = torch.Generator().manual_seed(1)
    boxes = crop_boxes(2, 500, 40, 90, 32, 1.0, g, torch.device("cpu"))
    assert boxes[:, 1].min() >= 0 and boxes[:, 2].min() >= 0
    assert boxes[:, 3].max() <= 90 and boxes[:, 4].max() <= 40
    assert set(boxes[:, 0].tolist()) == {0.0, 1.0}


def test_make_cutouts_shape_determinism_and_gradient():
    image = torch.rand(1, 3, 48, 64, requires_grad=True)
    a = make_cutouts(
        image, cutn=8, cut_size=16, cut_pow=1.0, generator=torch.Generator().manual_seed(3)
    )
    b = make_cutouts(
        image, cutn=8, cut_size=16, cut_pow=1.0, generator=torch.Generator().manual_seed(3)
    )
    assert a.shape == (8, 3, 16, 16)
    assert torch.equal(a, b)
    a.sum().backward()
    assert image.grad.abs().sum() > 0


def test_augmentations_change_cutouts_and_can_be_switched_off():
    image = torch.rand(1, 3, 32, 32)
    plain = make_cutouts(
        image,
        cutn=4,
        cut_size=32,
        cut_pow=1.0,
        generator=torch.Generator().manual_seed(0),
        augmentations=False,
        whole=True,
    )
    augmented = make_cutouts(
        image,
        cutn=4,
        cut_size=32,
        cut_pow=1.0,
        generator=torch.Generator().manual_seed(0),
        augmentations=True,
        whole=True,
    )
    assert torch.allclose(plain, image, atol=1e-6)
    assert not torch.allclose(augmented, image, atol=1e-2)


def test_vector_quantize_agrees_with_a_brute_force_nearest_code():
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(40, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
    z = torch.randn(2, 3, 4, 5, generator=g) * 2
    flat = z.movedim(1, -1).reshape(-1, 3)  # [40, 3]
    nearest = codebook[torch.cdist(flat, codebook).argmin(-1)]  # [40, 3]
    q = vector_quantize(z, codebook).movedim(1, -1).reshape(-1, 3)
    assert torch.allclose(q, nearest, atol=1e-6)  # the value: codes (+ z - z rounding)


def test_clamp_with_grad_for_every_side_and_sign():
    x = torch.tensor([-0.5, -0.5, 0.5, 0.5, 1.5, 1.5], requires_grad=True)
    clamp_with_grad(x, 0.0, 1.0).backward(torch.tensor([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]))
    # below: a step up (grad < 0) is kept; inside: all kept; above: a step down (grad > 0) kept
    assert torch.equal(x.grad, torch.tensor([-1.0, 0.0, -1.0, 1.0, 0.0, 1.0]))


def test_spherical_distance_of_unnormalised_rows_is_half_the_squared_angle():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 5, generator=g) * 3, torch.randn(4, 5, generator=g) * 0.2
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    expected = cos.clamp(-1, 1).arccos().pow(2) / 2
    assert torch.allclose(spherical_distance(x, y), expected, atol=1e-5)
    opposite = spherical_distance(x, -x).diagonal()  # chord 2 (and a rounding above it)
    assert torch.isfinite(opposite).all()  # arcsin of at most 1, never NaN
    assert torch.allclose(opposite, torch.full((3,), math.pi**2 / 2), atol=1e-2)


def test_cosine_similarity_of_unnormalised_rows():
    from vqclip.ops import cosine_similarity

    x = torch.tensor([[3.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    expected = torch.tensor(
        [[0.0, 1.0, 1 / math.sqrt(3)], [1 / math.sqrt(2), 1 / math.sqrt(2), 2 / math.sqrt(6)]]
    )
    assert torch.allclose(cosine_similarity(x, y), expected, atol=1e-6)


def test_total_variation_adds_both_directions_squared():
    ramp = (torch.arange(4.0) * 0.5)[:, None].expand(4, 4)  # rows 0, 0.5, 1, 1.5
    down = ramp.expand(1, 3, 4, 4)
    assert total_variation(down).item() == 0.25  # vertical steps of 0.5, none across
    across = down.transpose(-1, -2)
    assert total_variation(across).item() == 0.25
    assert total_variation(down + across).item() == 0.5
