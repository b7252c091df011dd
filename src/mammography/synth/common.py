"""What both phantom writers share: the manifest's columns, sizes, parameter checks, the class
allocation and the patient split, UIDs, and writing DICOM and PNG files.

:mod:`mammography.synth.dataset` (clean phantoms) and
:mod:`mammography.synth.film_dataset` (digitised film) both build on these,
so a data set of either style is planned, split and written the same way.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from mammography.atomic import write_atomic
from mammography.errors import ConfigError

__all__ = ["MANIFEST_COLUMNS", "STUDY_DATE", "STUDY_TIME", "VIEWS_PER_PATIENT", "parse_size"]


MANIFEST_COLUMNS = (
    "image_path",
    "density_label",
    "accession",
    "patient_id",
    "view",
    "laterality",
    "dense_fraction",
    "roi_path",
    "breast_mask_path",
    "split",
    "artifact_bbox",
)
"""Columns of ``manifest.csv``, in order."""

VIEWS_PER_PATIENT = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
STUDY_DATE = "20240115"
STUDY_TIME = "093000"
_WIDTH_PER_ROW = 0.8125  # 832 / 1024: the default aspect


def parse_size(value) -> tuple[int, int]:
    """Image size from ``"HxW"``, ``"H"``, an int or a pair.

    A single number is the row count; the width follows the default aspect
    (``round(0.8125 * rows)``, 832 for 1024).

    Raises
    ------
    ConfigError
        Malformed text or a size below 64 x 48.
    """
    try:
        if isinstance(value, str):
            parts = value.lower().replace("×", "x").split("x")
            if len(parts) > 2:
                raise ValueError
            numbers = [int(p.strip()) for p in parts]
        elif isinstance(value, (int, np.integer)):
            numbers = [int(value)]
        else:
            numbers = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"size {value!r} is not 'HxW' (e.g. 1024x832) or a row count") from None
    if len(numbers) == 1:
        numbers.append(int(round(_WIDTH_PER_ROW * numbers[0])))
    if len(numbers) != 2:
        raise ConfigError(f"size {value!r} is not 'HxW' (e.g. 1024x832) or a row count")
    rows, cols = numbers
    if rows < 64 or cols < 48:
        raise ConfigError(f"size {rows}x{cols} is too small: use at least 64x48")
    if rows * cols > 8192 * 8192:
        raise ConfigError(f"size {rows}x{cols} is too large: use at most 8192x8192 pixels")
    return rows, cols


def _allocate(total: int, mix: np.ndarray) -> np.ndarray:
    """Patients per class by largest remainder; then every class with a positive
    share gets at least one patient (taken from the largest class) when possible."""
    quota = mix * total
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    positive = np.flatnonzero(mix > 0)
    if total >= positive.size:
        for k in positive:
            if counts[k] == 0:
                counts[np.argmax(counts)] -= 1
                counts[k] = 1
    return counts


def _stratified_split(rng: np.random.Generator, classes: np.ndarray, val_frac: float) -> np.ndarray:
    """Patients' splits: ``round(val_frac * N)`` in val (1..N-1), spread over the classes.

    Each class gets the floor of its share; the rest goes to the classes with
    the largest remainders, preferring classes that keep a training patient.
    """
    splits = np.full(classes.size, "train", dtype=object)
    total = classes.size
    if val_frac <= 0 or total < 2:
        return splits
    n_val = min(max(int(round(val_frac * total)), 1), total - 1)
    labels = np.unique(classes)
    sizes = np.array([(classes == c).sum() for c in labels])
    quota = val_frac * sizes
    counts = np.minimum(np.floor(quota).astype(int), np.maximum(sizes - 1, 0))
    tiebreak = rng.random(labels.size)
    for capacity in (np.maximum(sizes - 1, 0), sizes):  # keep a train patient first
        while counts.sum() < n_val:
            room = np.flatnonzero(counts < capacity)
            if room.size == 0:
                break
            best = room[np.lexsort((tiebreak[room], -(quota[room] - counts[room])))[0]]
            counts[best] += 1
    for label, count in zip(labels, counts):
        members = rng.permutation(np.flatnonzero(classes == label))
        splits[members[:count]] = "val"
    return splits


def _check_mix(class_mix) -> np.ndarray:
    try:
        mix = np.asarray([float(v) for v in class_mix], dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"class_mix {class_mix!r} must be 4 numbers, e.g. 0.1,0.4,0.4,0.1") from None
    if mix.size != 4 or not np.all(np.isfinite(mix)) or np.any(mix < 0) or mix.sum() <= 0:
        raise ConfigError(
            f"class_mix {class_mix!r} must be 4 non-negative numbers with a positive sum, "
            "e.g. 0.1,0.4,0.4,0.1"
        )
    return mix / mix.sum()


def _check_share(name: str, value, allow_one: bool = True) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    ok = ok and 0.0 <= value <= 1.0 and (allow_one or value < 1.0)
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1{']' if allow_one else ')'}, got {value!r}")


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def _uid(seed: int, *parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["mammography.synth", str(seed), *parts])


def _save_dicom(path: Path, ds) -> None:
    """Write a data set as a DICOM file (preamble, file meta), atomically, creating its folder."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, buffer.getvalue())


def _set_pixels(ds, stored: np.ndarray, bits: int, photometric: str) -> None:
    """The Image Pixel module of a 16-bit container holding ``bits``-bit unsigned values."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()


def _write_png(path: Path, mask: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    _atomic_write(path, buffer.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (phantoms are cheap to redraw: no fsync)."""
    write_atomic(path, data, durable=False)
