"""Model-input geometry: aspect-preserving fit, padding, flips, and mapping back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _io_phantom import breast_phantom
from mammography.errors import ConfigError
from mammography.io import Geometry, Mammogram, compute_geometry, fit_to_square, prepare_input

SHAPES = [(1024, 832), (100, 60), (60, 100), (37, 53), (512, 512), (3000, 2400)]


def centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    total = image.sum()
    return np.array([(rows * image).sum() / total, (cols * image).sum() / total])


def gaussian_blob(shape, center, sigma) -> np.ndarray:
    rows, cols = np.indices(shape).astype(np.float64)
    return np.exp(-((rows - center[0]) ** 2 + (cols - center[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [64, 512])
def test_fit_keeps_aspect_and_centres(shape, size):
    g = compute_geometry(shape, size)
    h, w = g.resized_shape
    assert max(h, w) == size
    assert abs(h / w - shape[0] / shape[1]) <= 1.0 / min(h, w)  # aspect kept to rounding
    top, left = g.offset
    assert abs((size - h) - 2 * top) <= 1 and abs((size - w) - 2 * left) <= 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("flip", [False, True])
def test_point_round_trip(shape, flip):
    g = compute_geometry(shape, 128, flip=flip)
    rng = np.random.default_rng(0)
    rows = rng.uniform(0, shape[0] - 1, 50)
    cols = rng.uniform(0, shape[1] - 1, 50)
    back = g.model_to_original(*g.original_to_model(rows, cols))
    np.testing.assert_allclose(back[0], rows, atol=1e-6)
    np.testing.assert_allclose(back[1], cols, atol=1e-6)


@pytest.mark.parametrize("shape", [(1024, 832), (300, 180), (90, 140)])
@pytest.mark.parametrize("flip", [False, True])
def test_image_round_trip_within_one_pixel(shape, flip):
    """A blob placed into model space and mapped back lands within one original pixel."""
    g = compute_geometry(shape, 128, flip=flip)
    center = (shape[0] * 0.37, shape[1] * 0.71)
    blob = gaussian_blob(shape, center, sigma=4.0 / g.scale)  # about 4 model pixels wide
    model = g.to_model(blob)
    expected_model = np.array(g.original_to_model(*center))
    assert np.abs(centroid(model) - expected_model).max() < 0.5
    back = g.to_original(model)
    assert back.shape == shape
    assert np.abs(centroid(back) - np.array(center)).max() < 1.0


@pytest.mark.parametrize("flip, expected", [(False, (31, 16)), (True, (31, 133))])
def test_single_model_pixel_lands_on_the_right_original_pixel(flip, expected):
    # 300 x 150 into 100: scale 1/3, resized 100 x 50, offset (0, 25).
    # Model pixel (10, 30) covers original rows 30..32 and columns 15..17,
    # centre (31, 16); mirrored, column 149 - 16 = 133.
    g = compute_geometry((300, 150), 100, flip=flip)
    assert g.resized_shape == (100, 50) and g.offset == (0, 25)
    heat = np.zeros((100, 100), dtype=np.float32)
    heat[10, 30] = 1.0
    out = g.to_original(heat)
    assert np.unravel_index(np.argmax(out), out.shape) == expected


@pytest.mark.parametrize("shape", [(1024, 832), (40, 30), (37, 53)])
@pytest.mark.parametrize("flip", [False, True])
def test_model_pixel_maps_to_model_to_original(shape, flip):
    g = compute_geometry(shape, 64, flip=flip)
    top, left = g.offset
    h, w = g.resized_shape
    for r, c in [(top + 3, left + 2), (top + h // 2, left + w // 2), (top + h - 4, left + w - 3)]:
        heat = np.zeros((64, 64), dtype=np.float32)
        heat[r, c] = 1.0
        out = g.to_original(heat)
        peak = np.unravel_index(np.argmax(out), out.shape)
        expected = g.model_to_original(r, c)
        assert abs(peak[0] - expected[0]) <= 1.0 and abs(peak[1] - expected[1]) <= 1.0


def test_heatmap_upsampling_shapes_and_values():
    g = compute_geometry((200, 120), 512)
    assert g.to_original(np.ones((16, 16))).shape == (200, 120)
    stacked = torch.rand(2, 3, 16, 16)
    assert g.to_original(stacked).shape == (2, 3, 200, 120)
    np.testing.assert_allclose(g.to_original(np.full((16, 16), 0.7)), 0.7, atol=1e-6)
    assert g.to_original(np.ones((16, 16)), mode="nearest").shape == (200, 120)


def test_padding_never_reaches_the_original():
    g = compute_geometry((200, 100), 64)  # 64 x 32 image between 16-column pads
    heat = np.ones((64, 64), dtype=np.float32)
    top, left = g.offset
    h, w = g.resized_shape
    heat[top : top + h, left : left + w] = 0.0
    assert g.to_original(heat).max() == 0.0


def test_flip_mirrors_the_map():
    g = compute_geometry((200, 100), 64, flip=True)
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:, :32] = 1.0  # left half of the model input
    out = g.to_original(heat)
    assert out[:, -40:].min() > 0.99 and out[:, :40].max() < 0.01  # right half of the original


def test_fit_to_square_pads_with_zeros_and_antialiases():
    ones, g = fit_to_square(np.ones((200, 100), dtype=np.float32), 64)
    assert ones.shape == (64, 64) and ones.dtype == np.float32
    top, left = g.offset
    h, w = g.resized_shape
    np.testing.assert_allclose(ones[top : top + h, left : left + w], 1.0, atol=1e-6)
    assert ones[:, :left].max() == 0.0 and ones[:, left + w :].max() == 0.0
    checker = (np.indices((512, 256)).sum(axis=0) % 2).astype(np.float32)
    small, g = fit_to_square(checker, 64)  # 8x reduction of a one-pixel pattern
    inside = small[g.offset[0] : g.offset[0] + 64, g.offset[1] + 1 : g.offset[1] + 31]
    np.testing.assert_allclose(inside, 0.5, atol=0.02)  # averaged, not aliased to 0/1


def test_geometry_dict_round_trip():
    g = compute_geometry((1024, 832), 512, flip=True)
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_bad_arguments():
    with pytest.raises(ConfigError):
        compute_geometry((100, 100), 4)
    with pytest.raises(ConfigError):
        fit_to_square(np.zeros((2, 3, 4)), 64)
    with pytest.raises(ConfigError):
        compute_geometry((100, 80), 64).to_model(np.zeros((80, 100)))


# -- prepare_input ---------------------------------------------------------------------


def mammogram(side: str | None, shape=(160, 120)) -> Mammogram:
    image, _, _ = breast_phantom(shape, side=side or "L", marker=False)
    return Mammogram(
        pixels=image.astype(np.float32),
        original_shape=shape,
        pixel_spacing=None,
        laterality=side,
        view="CC",
        photometric_interpretation="MONOCHROME2",
        path=None,
    )


@pytest.mark.parametrize(
    "side, normalise, flipped", [("R", True, True), ("L", True, False), ("R", False, False), (None, True, False)]
)
def test_prepare_input_flips_right_breasts_only(side, normalise, flipped):
    m = mammogram(side)
    square, g = prepare_input(m, size=64, normalise_laterality=normalise)
    assert square.shape == (64, 64) and square.dtype == np.float32
    assert 0.0 <= square.min() and square.max() <= 1.0
    assert g.flipped is flipped and g.original_shape == m.original_shape
    expected, _ = fit_to_square(m.pixels[:, ::-1] if flipped else m.pixels, 64)
    np.testing.assert_allclose(square, expected, atol=1e-6)


def test_prepare_input_puts_every_chest_wall_on_the_left():
    for side in ("L", "R"):
        square, g = prepare_input(mammogram(side), size=64)
        top, left = g.offset
        h, w = g.resized_shape
        image = square[top : top + h, left : left + w]
        assert image[:, : w // 4].mean() > image[:, -w // 4 :].mean() + 0.2
