"""Benchmark mammogram reading, breast masking and model-input preparation.

Writes N synthetic 1024 x 832 12-bit DICOM mammograms to a temporary folder,
once uncompressed and once JPEG 2000 (lossless) compressed, then measures, side
by side in one run:

* bare pydicom decoding (``dcmread`` + ``pixel_array``), the floor;
* :func:`mammography.io.read_mammogram` (decode + rescale + window + checks);
* :func:`mammography.io.breast_mask` and :func:`mammography.io.prepare_input`
  (512 px) on the read images.

Usage::

    python bench/bench_io.py [--n 8] [--repeats 2]

Runs in well under a minute on two cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
import torch
from scipy import ndimage

from mammography.io import breast_mask, prepare_input, read_mammogram

SHAPE = (1024, 832)


def phantom_stored(seed: int, shape=SHAPE) -> np.ndarray:
    """A breast-like 12-bit image: textured half-ellipse, noise, corner marker."""
    H, W = shape
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    dist = ((rows - H / 2) / (0.42 * H)) ** 2 + (cols / (0.7 * W)) ** 2
    texture = ndimage.gaussian_filter(rng.standard_normal((H // 4, W // 4)).astype(np.float32), 3)
    texture = np.kron(texture, np.ones((4, 4), dtype=np.float32))
    texture = (texture - texture.min()) / np.ptp(texture)
    image = np.where(dist <= 1, 0.3 + 0.4 * texture + 0.2 * np.sqrt(np.clip(1 - dist, 0, 1)), 0.03)
    image += rng.normal(0, 0.01, shape).astype(np.float32)
    image[30:100, W - 110 : W - 40] = 0.97
    return np.rint(np.clip(image, 0, 1) * 4000 + 40).astype(np.uint16)


def make_dataset(stored: np.ndarray, laterality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2200, 3000
    ds.PixelSpacing = [0.1, 0.1]
    ds.ImageLaterality, ds.ViewPosition = laterality, "CC"
    ds.PixelData = stored.tobytes()
    return ds


def write_files(folder: Path, n: int) -> tuple[list[Path], list[Path]]:
    plain, j2k = [], []
    for i in range(n):
        stored = phantom_stored(i)
        ds = make_dataset(stored, "L" if i % 2 == 0 else "R")
        plain.append(folder / f"plain_{i:03d}.dcm")
        ds.save_as(plain[-1], enforce_file_format=True)
        ds.compress(JPEG2000Lossless)
        j2k.append(folder / f"j2k_{i:03d}.dcm")
        ds.save_as(j2k[-1], enforce_file_format=True)
    return plain, j2k


def best_pass(fn, items, repeats: int) -> float:
    """Seconds per item of the fastest of ``repeats`` passes over ``items``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="files per kind (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="passes; the fastest counts (default 2)")
    args = parser.parse_args()
    # One intra-op thread: per-image figures, steady on a shared machine
    # (torch's thread pool spins badly when the cores are oversubscribed).
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        plain, j2k = write_files(Path(tmp), args.n)
        write_s = time.perf_counter() - start
        size_plain = sum(p.stat().st_size for p in plain) / len(plain) / 1e6
        size_j2k = sum(p.stat().st_size for p in j2k) / len(j2k) / 1e6
        images = [read_mammogram(p) for p in plain]
        for a, b in zip(images, (read_mammogram(p) for p in j2k)):
            assert np.array_equal(a.pixels, b.pixels), "J2K lossless read differs from uncompressed"

        rows = [
            ("pydicom dcmread+pixel_array, uncompressed", best_pass(lambda p: pydicom.dcmread(p).pixel_array, plain, args.repeats)),
            ("read_mammogram, uncompressed", best_pass(read_mammogram, plain, args.repeats)),
            ("pydicom dcmread+pixel_array, JPEG 2000", best_pass(lambda p: pydicom.dcmread(p).pixel_array, j2k, args.repeats)),
            ("read_mammogram, JPEG 2000 lossless", best_pass(read_mammogram, j2k, args.repeats)),
            ("breast_mask (1024x832)", best_pass(lambda m: breast_mask(m.pixels), images, args.repeats)),
            ("prepare_input (512, laterality flip)", best_pass(lambda m: prepare_input(m, 512), images, args.repeats)),
        ]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench_io: {args.n} files of {SHAPE[0]}x{SHAPE[1]} 12-bit per kind, best of {args.repeats} passes")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}; "
          f"files written in {write_s:.1f} s; {size_plain:.2f} MB uncompressed, {size_j2k:.2f} MB JPEG 2000 per file")
    print(f"{'step':<44} {'ms/image':>9} {'images/s':>9}")
    for name, seconds in rows:
        print(f"{name:<44} {seconds * 1000:9.1f} {1 / seconds:9.1f}")
    timing = dict(rows)
    print("ratios:")
    print(f"  read_mammogram / bare pydicom, uncompressed: "
          f"{timing['read_mammogram, uncompressed'] / timing['pydicom dcmread+pixel_array, uncompressed']:.2f}x")
    print(f"  read_mammogram / bare pydicom, JPEG 2000:    "
          f"{timing['read_mammogram, JPEG 2000 lossless'] / timing['pydicom dcmread+pixel_array, JPEG 2000']:.2f}x")
    print(f"  JPEG 2000 / uncompressed read_mammogram:     "
          f"{timing['read_mammogram, JPEG 2000 lossless'] / timing['read_mammogram, uncompressed']:.2f}x")


if __name__ == "__main__":
    main()
