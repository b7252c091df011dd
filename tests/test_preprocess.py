"""The preprocessing record and the one input function, for both pipelines.

The earlier project's rule is checked two ways: here against a from-scratch
rendering of its documented chain (PIL RGB image -> torchvision v2 tensor
functions), and in ``test_pipelines_runs.py`` against tensors and
probabilities produced by that project's own code.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from mammography.data.dataset import MammogramDataset
from mammography.data.preprocess import FIT_PAD, PIPELINES_CROP, Preprocessing
from mammography.errors import ConfigError
from mammography.io.geometry import Geometry, compute_crop_geometry, compute_geometry
from mammography.io.pipelines import read_pipelines_image
from mammography.io.prepare import prepare_pipelines_input


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    import pandas as pd

    from mammography.synth.dataset import generate_dataset

    root = tmp_path_factory.mktemp("phantoms")
    manifest = pd.read_csv(generate_dataset(root, n=6, seed=3, size=(200, 152)))
    return [str(root / p) for p in manifest["image_path"]]


def _reference_rgb(path) -> np.ndarray:
    """The earlier project's documented DICOM rule, written out step by step."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    arr = arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = arr.max() - arr
    lo, hi = np.percentile(arr, [0.5, 99.5])
    arr = (np.clip(arr, lo, hi) - lo) / (hi - lo)
    gray = (arr * 255.0).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.merge("RGB", [Image.fromarray(gray)] * 3))


def _reference_tensor(rgb: np.ndarray, size: int, mean, std) -> torch.Tensor:
    t = tvf.to_image(Image.fromarray(rgb))
    t = tvf.resize(t, [size], interpolation=InterpolationMode.BICUBIC, antialias=False)
    t = tvf.center_crop(t, [size, size])
    t = tvf.to_dtype(t, torch.float32, scale=True)
    return tvf.normalize(t, list(mean), list(std))


def test_pipelines_input_is_the_documented_chain_bit_for_bit(phantoms):
    prep = Preprocessing.pipelines_crop(96)
    photometrics = set()
    for path in phantoms:
        photometrics.add(pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation)
        rgb = _reference_rgb(path)
        gray = read_pipelines_image(path)
        assert gray.dtype == np.uint8 and gray.ndim == 2
        np.testing.assert_array_equal(gray, rgb[..., 0])
        ours = prep.to_tensor(prep.prepare(path))
        ref = _reference_tensor(rgb, 96, prep.mean, prep.std)
        assert ours.shape == ref.shape == (3, 96, 96)
        assert torch.equal(ours, ref)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}  # both inversions exercised


def test_cached_pipelines_squares_are_exact(phantoms, tmp_path):
    prep = Preprocessing.pipelines_crop(64)
    cold = MammogramDataset(phantoms, preprocessing=prep, cache_dir=tmp_path)
    warm = MammogramDataset(phantoms, preprocessing=prep, cache_dir=tmp_path)
    plain = MammogramDataset(phantoms, preprocessing=prep)
    for i in range(len(phantoms)):
        first = cold[i]["image"]
        assert torch.equal(warm[i]["image"], first) and torch.equal(plain[i]["image"], first)
    stored = list((tmp_path / "squares").rglob("*.npy"))
    assert stored and all(np.load(p).dtype == np.uint8 for p in stored)


def test_colour_raster_keeps_its_three_channels(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    prep = Preprocessing.pipelines_crop(48)
    prepared = prep.prepare(path)
    assert prepared.channels is not None and prepared.channels.shape == (3, 48, 48)
    assert torch.equal(prep.to_tensor(prepared), _reference_tensor(rgb, 48, prep.mean, prep.std))
    # a grey raster is one channel, replicated
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    grey = prep.prepare(tmp_path / "grey.png")
    assert grey.channels is None
    assert torch.equal(prep.to_tensor(grey), _reference_tensor(np.repeat(rgb[..., :1], 3, axis=2), 48, prep.mean, prep.std))


@pytest.mark.parametrize("shape,size", [((256, 208), 96), ((3000, 2400), 512), ((500, 701), 64), ((300, 300), 32)])
def test_crop_geometry_matches_torchvision(shape, size):
    image = torch.zeros((1, *shape), dtype=torch.uint8)
    resized = tvf.resize(image, [size], interpolation=InterpolationMode.BICUBIC, antialias=False)
    g = compute_crop_geometry(shape, size)
    assert g.resized_shape == tuple(resized.shape[-2:])
    # mark where the crop starts: the pixel the crop puts at (0, 0) of the square
    marker = torch.arange(resized.numel(), dtype=torch.float64).view(resized.shape)
    crop = tvf.center_crop(marker, [size, size])
    top, left = divmod(int(crop[0, 0, 0]), resized.shape[-1])
    assert g.offset == (-top, -left)
    assert g.crops == (shape[0] != shape[1])


def test_crop_geometry_maps_heatmaps_back_without_the_cut_strips():
    g = compute_crop_geometry((400, 200), 64)  # resized 128 x 64: 32 rows cut at top and bottom
    assert g.resized_shape == (128, 64) and g.offset == (-32, 0)
    assert g.visible_box() == (0, 0, 64, 64)
    assert g.image_area().all()
    visible = g.visible_original()
    assert visible.shape == (400, 200)
    rows = np.flatnonzero(visible[:, 0])
    assert rows[0] == 100 and rows[-1] == 299 and visible[100:300].all()
    # a map with all its weight in the square's top row lands just below the cut strip
    hm = np.zeros((64, 64), np.float32)
    hm[0] = 1.0
    back = g.to_original(hm)
    assert back[:96].max() == 0.0 and back[120:].max() == 0.0
    assert 100 <= int(back[:, 100].argmax()) <= 106 and back[:, 100].max() > 0.9
    # original -> model -> original for an image of the visible band
    band = np.zeros((400, 200), np.float32)
    band[150:250, 50:150] = 1.0
    square = g.to_model(band, antialias=False)
    assert square.shape == (64, 64) and square.sum() > 0
    np.testing.assert_allclose(g.to_original(square)[160:240, 60:140], 1.0, atol=1e-5)
    # a resized-frame mask is cropped the way the model saw it
    frame = np.zeros((128, 64), bool)
    frame[:32] = True  # entirely in the cut strip
    frame[32] = True   # the square's first row
    placed = g.place_resized(frame)
    assert placed.shape == (64, 64) and placed[0].all() and placed[1:].sum() == 0


def test_fit_pad_geometry_is_unchanged_by_the_generalisation():
    g = compute_geometry((400, 200), 64, flip=True)
    assert not g.crops and g.offset == (0, 16) and g.visible_box() == (0, 16, 64, 48)
    assert g.visible_original().all()
    area = g.image_area()
    assert area[:, 16:48].all() and not area[:, :16].any() and not area[:, 48:].any()
    frame = np.zeros((64, 32), bool)
    frame[:, 0] = True  # left edge of the image in its own orientation
    placed = g.place_resized(frame)
    assert placed[:, 47].all() and placed.sum() == 64  # mirrored to the right edge


def test_record_round_trip_and_checks():
    ours = Preprocessing.fit_pad(128, normalise_laterality=True)
    again = Preprocessing.from_record(ours.to_record())
    assert again == ours and again.pipeline == FIT_PAD and again.version == "2"
    # a record written before 'pipeline' existed is this project's rule, at the version it names
    old = Preprocessing.from_record({"normalise_laterality": True, "version": "1"}, img_size=64)
    assert old.pipeline == FIT_PAD and old.img_size == 64 and old.version == "1"
    with pytest.raises(ConfigError, match="newer than this mammography"):
        Preprocessing.from_record({"version": "9"}, img_size=64)
    legacy = Preprocessing.pipelines_crop(96, mean=[0.5] * 3, std=[0.25] * 3)
    assert Preprocessing.from_record(legacy.to_record()) == legacy and legacy.pipeline == PIPELINES_CROP
    assert legacy.cache_key() != ours.cache_key()
    with pytest.raises(ConfigError, match="img_size"):
        Preprocessing.fit_pad(60000)
    with pytest.raises(ConfigError, match="finite"):
        Preprocessing.fit_pad(64, mean=float("nan"))
    with pytest.raises(ConfigError, match=r"std must be in \(0"):
        Preprocessing.fit_pad(64, std=0.0)
    with pytest.raises(ConfigError, match="never mirrored"):
        Preprocessing(PIPELINES_CROP, 64, normalise_laterality=True)
    with pytest.raises(ConfigError, match="unknown preprocessing"):
        Preprocessing("resize-only", 64)


def test_geometry_round_trips_through_dict():
    g = compute_crop_geometry((300, 250), 64)
    assert Geometry.from_dict(g.to_dict()) == g


def test_memory_cache_thumbnail_is_reproduced(tmp_path):
    """Rasters the earlier project served from its in-memory cache were shrunk to a thumbnail first."""
    from mammography.io.pipelines import memory_cache_used

    rng = np.random.default_rng(4)
    grey = (rng.random((300, 220)) * 255).astype(np.uint8)
    path = tmp_path / "exam.png"
    Image.fromarray(grey).save(path)
    prep = Preprocessing.pipelines_crop(64, thumbnail=True)
    # the earlier chain: PIL RGB, thumbnail((S, S), BICUBIC), tensor resize of the shorter side, crop
    pil = Image.open(path).convert("RGB")
    pil.thumbnail((64, 64), Image.BICUBIC)
    expected = _reference_tensor(np.asarray(pil), 64, prep.mean, prep.std)
    assert torch.equal(prep.to_tensor(prep.prepare(path)), expected)
    assert not torch.equal(Preprocessing.pipelines_crop(64).to_tensor(Preprocessing.pipelines_crop(64).prepare(path)),
                           expected)
    # when that cache was on: its 'auto' picked it for <= 1000 images none of which is DICOM
    pngs = [f"img_{i}.png" for i in range(12)]
    assert memory_cache_used("auto", pngs) and memory_cache_used("memory", ["a.dcm"])
    assert not memory_cache_used("auto", pngs + ["x.DCM"]) and not memory_cache_used("auto", pngs * 100)
    assert not memory_cache_used("disk", pngs) and not memory_cache_used(None, pngs)
