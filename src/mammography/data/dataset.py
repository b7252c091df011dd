"""Model-ready mammograms as a torch Dataset, with a decoded-image disk cache.

Decoding a full-field DICOM (3000-4000 px, often JPEG 2000) and fitting it
into the square model input takes far longer than a training step at 512 px,
and every epoch and every later run would repeat it. :class:`DecodedImageCache`
stores the prepared square once, on disk, keyed by

* the SHA-256 of the *file content* (a renamed or copied file hits the
  cache, an edited file misses it), and
* the preprocessing settings: model size, laterality normalisation and
  :data:`PREPROCESS_VERSION` together with the package version (a new
  release of the reading code never reuses squares made by an old one), and
  the laterality hint the caller gave for the file (the manifest's value),
  since it decides the flip.

Each square carries the laterality and view it was prepared with and their
sources (:func:`mammography.io.with_orientation`: manifest hint, header
tags, PatientID and name tokens, the image), stored beside it in the cache.

Hashing a large file costs a read of it, so the hash is memoised by
``(absolute path, size, mtime)``: in memory for the dataset's lifetime and on
disk in the cache, so a later run does not read the file at all.

The square is stored as ``uint16`` (``round(x * 65535)``). Squares made
without a cache go through the same rounding, so a run gives the same tensors
whether or not the cache was cold, warm or switched off.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mammography import __version__
from mammography.errors import ConfigError, ImageReadError
from mammography.io import prepare_input, read_mammogram, with_orientation
from mammography.io.geometry import Geometry
from mammography.io.orientation import normalise_laterality

__all__ = [
    "PREPROCESS_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreparedImage",
    "DecodedImageCache",
    "MammogramDataset",
    "default_cache_dir",
    "laterality_hints",
]

#: bump when the way a file becomes a model square changes (io windowing,
#: resizing, flipping, quantisation): old cache entries are then ignored.
#: 2: files without a window are windowed by percentiles inside the breast;
#: laterality for the flip from manifest, tags, PatientID/name tokens, image.
PREPROCESS_VERSION = "2"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_QUANT = 65535.0
_ORIENTATION_FIELDS = ("laterality", "laterality_source", "view", "view_source")
_HASH_CHUNK = 1 << 20


def laterality_hints(table) -> list | None:
    """The ``laterality`` column of a manifest or ``val_predictions.csv`` table as
    :class:`MammogramDataset` hints (None when the table has no such column).

    A run's predictions record the laterality each validation image was
    flipped by in training, so passing them makes every later command flip
    the image the same way.
    """
    if table is None or "laterality" not in getattr(table, "columns", ()):
        return None
    return table["laterality"].tolist()


def default_cache_dir() -> Path:
    """``$MAMMOGRAPHY_CACHE`` if set, else ``~/.cache/mammography``."""
    env = os.environ.get("MAMMOGRAPHY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mammography"


@dataclass(frozen=True)
class PreparedImage:
    """A mammogram fitted into the square model input.

    Attributes
    ----------
    square : float32 (S, S) in [0, 1], dense = bright, padding = 0.
    geometry : how the original pixels map into ``square``.
    laterality, laterality_source, view, view_source : as resolved by
        :func:`mammography.io.with_orientation` (None when unknown).
    """

    square: np.ndarray
    geometry: Geometry
    laterality: str | None = None
    laterality_source: str | None = None
    view: str | None = None
    view_source: str | None = None

    def orientation(self) -> dict:
        """``laterality, laterality_source, view, view_source`` as a dict (for tables and the cache)."""
        return {k: getattr(self, k) for k in _ORIENTATION_FIELDS}


def _quantise(square: np.ndarray) -> np.ndarray:
    return np.round(np.clip(square, 0.0, 1.0) * _QUANT).astype(np.uint16)


def _dequantise(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / np.float32(_QUANT)


def _atomic_write_bytes(path: Path, write) -> None:
    """``write(file_object)`` into a temp file beside ``path``, then rename it over ``path``.

    Concurrent DataLoader workers (or runs) writing the same entry each
    rename a complete file, so readers never see a partial one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _prepare(path: Path, img_size: int, normalise_laterality: bool, laterality_hint=None) -> PreparedImage:
    """Decode ``path``, resolve its laterality (the manifest's ``laterality_hint`` first) and view, and fit it
    into the square, quantised like a cache entry."""
    mammogram = with_orientation(read_mammogram(path), laterality_hint=laterality_hint)
    square, geometry = prepare_input(mammogram, size=img_size, normalise_laterality=normalise_laterality)
    return PreparedImage(
        _dequantise(_quantise(np.asarray(square, dtype=np.float32))),
        geometry,
        **{k: getattr(mammogram, k) for k in _ORIENTATION_FIELDS},
    )


def _hint_text(hint) -> str:
    """The part of a cache key a laterality hint contributes ('' for no hint)."""
    return normalise_laterality(hint) or ""


class DecodedImageCache:
    """On-disk cache of prepared model squares (see the module docstring).

    Layout under ``root``::

        squares/<key[:2]>/<key>.npy    uint16 (S, S)
        squares/<key[:2]>/<key>.json   geometry (written last: marks the entry complete)
        hashes/<stat[:2]>/<stat>       SHA-256 of a file, memoised by path/size/mtime

    Parameters
    ----------
    root : cache folder (created on first write).
    img_size : model input side.
    normalise_laterality : whether right breasts are mirrored.
    """

    def __init__(self, root: str | Path, img_size: int, normalise_laterality: bool = True):
        self.root = Path(root).expanduser()
        self.img_size = int(img_size)
        self.normalise_laterality = bool(normalise_laterality)
        self._hash_memo: dict[tuple[str, int, int], str] = {}
        self._settings = f"size={self.img_size};flip={int(self.normalise_laterality)};prep={PREPROCESS_VERSION};pkg={__version__}"

    # -- keys ---------------------------------------------------------------
    def content_hash(self, path: str | Path) -> str:
        """SHA-256 of the file's bytes, memoised by (path, size, mtime)."""
        path = Path(path).resolve()
        try:
            stat = path.stat()
        except OSError as exc:
            raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}; check the manifest's image_path") from exc
        memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo_key in self._hash_memo:
            return self._hash_memo[memo_key]
        stat_name = hashlib.sha256(repr(memo_key).encode()).hexdigest()
        memo_file = self.root / "hashes" / stat_name[:2] / stat_name
        digest = None
        if memo_file.is_file():
            digest = memo_file.read_text().strip() or None
        if digest is None:
            digest = _sha256_file(path)
            try:
                _atomic_write_bytes(memo_file, lambda handle: handle.write(digest.encode()))
            except OSError:  # read-only cache: still usable, just slower
                pass
        self._hash_memo[memo_key] = digest
        return digest

    def key(self, path: str | Path, laterality_hint=None) -> str:
        """Cache key of ``path`` (given ``laterality_hint``) under this cache's preprocessing settings."""
        text = f"{self.content_hash(path)};{self._settings};hint={_hint_text(laterality_hint)}"
        return hashlib.sha256(text.encode()).hexdigest()

    def entry_paths(self, path: str | Path, laterality_hint=None) -> tuple[Path, Path]:
        """``(square .npy, geometry .json)`` where ``path``'s entry lives."""
        key = self.key(path, laterality_hint)
        folder = self.root / "squares" / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    # -- entries ------------------------------------------------------------
    def load(self, path: str | Path, laterality_hint=None) -> PreparedImage | None:
        """The cached square of ``path``, or ``None`` on a miss (or an unreadable entry)."""
        npy, meta = self.entry_paths(path, laterality_hint)
        if not meta.is_file():
            return None
        try:
            record = json.loads(meta.read_text())
            geometry = Geometry.from_dict(record)
            stored = np.load(npy, allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None  # damaged entry: treat as a miss, it is rewritten
        if stored.dtype != np.uint16 or stored.shape != (self.img_size, self.img_size):
            return None
        orientation = record.get("orientation") or {}
        return PreparedImage(_dequantise(stored), geometry, **{k: orientation.get(k) for k in _ORIENTATION_FIELDS})

    def store(self, path: str | Path, prepared: PreparedImage, laterality_hint=None) -> None:
        """Write ``prepared`` as the entry of ``path`` (silently skipped if the cache is read-only)."""
        npy, meta = self.entry_paths(path, laterality_hint)
        stored = _quantise(prepared.square)
        text = json.dumps({**prepared.geometry.to_dict(), "orientation": prepared.orientation()})
        try:
            _atomic_write_bytes(npy, lambda handle: np.save(handle, stored, allow_pickle=False))
            _atomic_write_bytes(meta, lambda handle: handle.write(text.encode()))
        except OSError:
            pass

    def get(self, path: str | Path, laterality_hint=None) -> PreparedImage:
        """The prepared square of ``path``: from the cache, else decoded and stored."""
        hit = self.load(path, laterality_hint)
        if hit is not None:
            return hit
        prepared = _prepare(Path(path), self.img_size, self.normalise_laterality, laterality_hint)
        self.store(path, prepared, laterality_hint)
        return prepared


def _label_index(label) -> int:
    """Density label 1..4 -> class index 0..3; missing -> -1."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return -1
    value = int(label)
    if not 1 <= value <= 4:
        raise ConfigError(f"density label {label!r} is not 1..4 (labels passed to MammogramDataset are 1-based)")
    return value - 1


def _three(values, name: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in np.broadcast_to(np.asarray(values, dtype=np.float64), (3,)))
    if name == "std" and min(values) <= 0:
        raise ConfigError(f"normalisation std must be positive, got {values}")
    return values


class MammogramDataset(Dataset):
    """Mammograms as model input tensors.

    Parameters
    ----------
    paths : image files (DICOM, PNG, JPEG, TIFF).
    labels : BI-RADS density labels **1..4** (as in manifests and
        ``val_predictions.csv``), one per path, or ``None``; items carry the
        0-based class index ``label - 1`` (``-1`` when unknown).
    img_size : side of the square model input.
    normalise_laterality : mirror right breasts so the chest wall is on the left.
    mean, std : per-channel normalisation (a scalar or 3 values); ``None``
        means ImageNet statistics.
    cache_dir : folder of the decoded-image cache; ``None`` decodes every
        time (library default: nothing is written unless asked). Training uses
        :func:`default_cache_dir` unless ``--no-cache``.
    laterality_hints : the manifest's laterality per path (L/R/LEFT/RIGHT,
        anything else = no hint), or ``None``; it comes first when deciding
        the flip (:func:`mammography.io.resolve_laterality`).

    Items are ``dict(image=Tensor (3, S, S) float32, label=int, index=int)``:
    the grayscale square replicated to three channels, then normalised.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | None = None,
        img_size: int = 512,
        normalise_laterality: bool = True,
        mean=None,
        std=None,
        cache_dir: str | Path | None = None,
        laterality_hints: Sequence | None = None,
    ):
        self.paths = [Path(p) for p in paths]
        if labels is not None and len(labels) != len(self.paths):
            raise ConfigError(f"{len(labels)} labels for {len(self.paths)} images")
        if laterality_hints is not None and len(laterality_hints) != len(self.paths):
            raise ConfigError(f"{len(laterality_hints)} laterality hints for {len(self.paths)} images")
        self.laterality_hints = [None] * len(self.paths) if laterality_hints is None else list(laterality_hints)
        self.labels = [(-1 if labels is None else _label_index(labels[i])) for i in range(len(self.paths))]
        if int(img_size) < 32:
            raise ConfigError(f"image size {img_size} is too small for EfficientNet-B0 (use at least 32)")
        self.img_size = int(img_size)
        self.normalise_laterality = bool(normalise_laterality)
        self.mean = _three(IMAGENET_MEAN if mean is None else mean, "mean")
        self.std = _three(IMAGENET_STD if std is None else std, "std")
        self.cache = (
            DecodedImageCache(cache_dir, self.img_size, self.normalise_laterality) if cache_dir is not None else None
        )

    def __len__(self) -> int:
        return len(self.paths)

    def prepared(self, i: int) -> PreparedImage:
        """Square and geometry of image ``i`` (from the cache when one is set)."""
        path, hint = self.paths[i], self.laterality_hints[i]
        if self.cache is not None:
            return self.cache.get(path, hint)
        return _prepare(path, self.img_size, self.normalise_laterality, hint)

    def geometry(self, i: int) -> Geometry:
        """How image ``i``'s original pixels map into the model square."""
        return self.prepared(i).geometry

    def square(self, i: int) -> np.ndarray:
        """Unnormalised (S, S) float32 model-space image in [0, 1] (for display)."""
        return self.prepared(i).square

    def to_tensor(self, square: np.ndarray) -> torch.Tensor:
        """(S, S) square -> normalised (3, S, S) float32 tensor."""
        gray = torch.from_numpy(np.ascontiguousarray(square, dtype=np.float32))
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (gray.unsqueeze(0).expand(3, -1, -1) - mean) / std

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return {"image": self.to_tensor(self.square(i)), "label": self.labels[i], "index": int(i)}
