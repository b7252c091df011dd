"""MammogramDataset and its decoded-image disk cache, on real phantom DICOM files."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from mammography.data.preprocess import Preprocessing
from mammography.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodedImageCache,
    MammogramDataset,
    default_cache_dir,
)
from mammography.errors import ConfigError
from mammography.io import prepare_input, read_mammogram
from mammography.synth import generate_dataset

SIZE = 64


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """8 phantom DICOM files (2 patients, CC/MLO, L/R) and their manifest rows."""
    root = tmp_path_factory.mktemp("phantoms")
    manifest = generate_dataset(root, n=8, seed=3, size=(128, 104))
    table = pd.read_csv(manifest)
    table["image_path"] = [str(root / p) for p in table["image_path"]]
    return table


def cached_squares(cache_dir):
    return sorted((cache_dir / "squares").rglob("*.npy"))


def test_item_is_normalised_three_channel_square_with_0_based_label(phantoms):
    ds = MammogramDataset(phantoms["image_path"], phantoms["density_label"].tolist(), img_size=SIZE)
    item = ds[1]
    assert set(item) == {"image", "label", "index"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["label"] == phantoms["density_label"].iloc[1] - 1
    assert item["index"] == 1
    # undoing the ImageNet normalisation gives back the display square on every channel
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    square = torch.from_numpy(ds.square(1))
    assert torch.allclose(item["image"] * std + mean, square.expand(3, -1, -1), atol=1e-5)
    assert 0.0 <= float(square.min()) and float(square.max()) <= 1.0 and float(square.max()) > 0.5


def test_square_and_geometry_match_prepare_input_and_flip_right_breasts(phantoms):
    ds = MammogramDataset(phantoms["image_path"], img_size=SIZE)
    ds_raw = MammogramDataset(phantoms["image_path"], img_size=SIZE, normalise_laterality=False)
    for i, laterality in enumerate(phantoms["laterality"]):
        expected, geometry = prepare_input(read_mammogram(phantoms["image_path"][i]), size=SIZE)
        # stored as uint16: identical up to 1/65535
        np.testing.assert_allclose(ds.square(i), expected, atol=1.0 / 65535)
        assert ds.geometry(i) == geometry
        assert ds.geometry(i).flipped == (laterality == "R")
        assert ds_raw.geometry(i).flipped is False
    assert ds[0]["label"] == -1  # no labels given


def test_labels_are_1_based_and_checked(phantoms):
    paths = phantoms["image_path"][:2].tolist()
    assert [MammogramDataset(paths, [4, None], img_size=SIZE).labels] == [[3, -1]]
    with pytest.raises(ConfigError, match="1..4"):
        MammogramDataset(paths, [0, 2], img_size=SIZE)
    with pytest.raises(ConfigError):
        MammogramDataset(paths, [1], img_size=SIZE)


def test_cache_writes_one_entry_per_image_and_gives_identical_tensors(phantoms, tmp_path):
    cache = tmp_path / "cache"
    labels = phantoms["density_label"].tolist()
    uncached = MammogramDataset(phantoms["image_path"], labels, img_size=SIZE)
    cold = MammogramDataset(phantoms["image_path"], labels, img_size=SIZE, cache_dir=cache)
    first = [cold[i]["image"] for i in range(len(cold))]
    assert len(cached_squares(cache)) == len(phantoms)
    warm = MammogramDataset(phantoms["image_path"], labels, img_size=SIZE, cache_dir=cache)
    for i in range(len(warm)):
        assert torch.equal(warm[i]["image"], first[i])
        assert torch.equal(uncached[i]["image"], first[i])  # cache or not: same tensors
        assert warm.geometry(i) == uncached.geometry(i)
    assert len(cached_squares(cache)) == len(phantoms)  # nothing re-written


def test_cache_hit_is_read_from_disk_not_decoded_again(phantoms, tmp_path):
    cache_dir = tmp_path / "cache"
    path = phantoms["image_path"][0]
    ds = MammogramDataset([path], img_size=SIZE, cache_dir=cache_dir)
    ds.square(0)
    npy, _ = DecodedImageCache(cache_dir, Preprocessing.fit_pad(SIZE)).entry_paths(path)
    marker = np.full((SIZE, SIZE), 65535 // 4, dtype=np.uint16)
    np.save(npy, marker)  # overwrite the entry: a decode would not give this
    fresh = MammogramDataset([path], img_size=SIZE, cache_dir=cache_dir)
    np.testing.assert_allclose(fresh.square(0), 0.25, atol=1e-4)


def test_cache_key_follows_content_and_settings(phantoms, tmp_path):
    cache_dir = tmp_path / "cache"
    src = phantoms["image_path"][0]
    copy = tmp_path / "renamed.dcm"
    shutil.copy(src, copy)
    cache = DecodedImageCache(cache_dir, Preprocessing.fit_pad(SIZE))
    # same bytes under another name: same entry
    assert cache.key(src) == cache.key(copy)
    # other settings: other entries
    assert DecodedImageCache(cache_dir, Preprocessing.fit_pad(SIZE * 2)).key(src) != cache.key(src)
    unflipped = Preprocessing.fit_pad(SIZE, normalise_laterality=False)
    assert DecodedImageCache(cache_dir, unflipped).key(src) != cache.key(src)
    # the earlier project's pipeline never shares an entry with this project's
    assert DecodedImageCache(cache_dir, Preprocessing.pipelines_crop(SIZE)).key(src) != cache.key(src)
    # normalisation is applied after the cache: it does not split entries
    assert DecodedImageCache(cache_dir, Preprocessing.fit_pad(SIZE, mean=0.5, std=0.25)).key(src) == cache.key(src)
    # other bytes: other entry (the memo is keyed by size/mtime, so it notices)
    other = phantoms["image_path"][1]
    shutil.copy(other, copy)
    assert cache.key(copy) == cache.key(other) != cache.key(src)
    # the content hash is memoised on disk for later runs
    assert list((cache_dir / "hashes").rglob("*"))


def test_dataloader_workers_share_the_cache(phantoms, tmp_path):
    cache = tmp_path / "cache"
    ds = MammogramDataset(phantoms["image_path"], phantoms["density_label"].tolist(), img_size=SIZE, cache_dir=cache)
    loaded = list(DataLoader(ds, batch_size=3, num_workers=2))
    images = torch.cat([batch["image"] for batch in loaded])
    indices = torch.cat([batch["index"] for batch in loaded]).tolist()
    assert indices == list(range(len(ds)))
    assert len(cached_squares(cache)) == len(ds)
    reference = MammogramDataset(phantoms["image_path"], img_size=SIZE)
    assert torch.equal(images, torch.stack([reference[i]["image"] for i in range(len(ds))]))


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAMMOGRAPHY_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MAMMOGRAPHY_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "mammography")
