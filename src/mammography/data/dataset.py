"""Model-ready mammograms as a torch Dataset, with a decoded-image disk cache.

Decoding a full-field DICOM (3000-4000 px, often JPEG 2000) and fitting it
into the square model input takes far longer than a training step at 512 px,
and every epoch and every later run would repeat it. :class:`DecodedImageCache`
stores the prepared square once, on disk, keyed by

* the SHA-256 of the *file content* (a renamed or copied file hits the
  cache, an edited file misses it), and
* the preprocessing settings: model size, laterality normalisation and
  :data:`PREPROCESS_VERSION` together with the package version (a new
  release of the reading code never reuses squares made by an old one).

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mammography import __version__
from mammography.atomic import sha256_file, write_atomic
from mammography.errors import ConfigError, ImageReadError, OutputError, printable
from mammography.io import prepare_input, read_mammogram
from mammography.io.files import require_regular_file
from mammography.io.geometry import Geometry
from mammography.limits import check_img_size, check_normalisation

__all__ = [
    "PREPROCESS_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreparedImage",
    "DecodedImageCache",
    "MammogramDataset",
    "default_cache_dir",
]

#: bump when the way a file becomes a model square changes (io windowing,
#: resizing, flipping, quantisation): old cache entries are then ignored
PREPROCESS_VERSION = "1"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_QUANT = 65535.0
_HASH_CHUNK = 1 << 20


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
    """

    square: np.ndarray
    geometry: Geometry


def _quantise(square: np.ndarray) -> np.ndarray:
    return np.round(np.clip(square, 0.0, 1.0) * _QUANT).astype(np.uint16)


def _dequantise(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / np.float32(_QUANT)


def _cache_write(path: Path, data) -> None:
    """Write a cache file atomically (concurrent workers each rename a complete file); a cache that
    cannot be written (read-only, full) only costs time, so failures are ignored."""
    try:
        write_atomic(path, data, durable=False)
    except OutputError:
        pass


def _prepare(path: Path, img_size: int, normalise_laterality: bool) -> PreparedImage:
    """Decode ``path`` and fit it into the square, quantised like a cache entry."""
    mammogram = read_mammogram(path)
    square, geometry = prepare_input(mammogram, size=img_size, normalise_laterality=normalise_laterality)
    return PreparedImage(_dequantise(_quantise(np.asarray(square, dtype=np.float32))), geometry)


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
        # a FIFO or device would block the hash forever: only regular files are read
        stat = require_regular_file(path, "image", ImageReadError, "check the manifest's image_path")
        path = Path(path).resolve()
        memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo_key in self._hash_memo:
            return self._hash_memo[memo_key]
        stat_name = hashlib.sha256(repr(memo_key).encode()).hexdigest()
        memo_file = self.root / "hashes" / stat_name[:2] / stat_name
        digest = None
        if memo_file.is_file():
            try:
                digest = memo_file.read_text()[:64].strip() or None
            except (OSError, UnicodeDecodeError):
                digest = None
        if digest is None:
            try:
                digest = sha256_file(path, _HASH_CHUNK)
            except OSError as exc:
                raise ImageReadError(f"cannot read image {printable(path)}: {exc.strerror or exc}") from None
            _cache_write(memo_file, digest.encode())
        self._hash_memo[memo_key] = digest
        return digest

    def key(self, path: str | Path) -> str:
        """Cache key of ``path`` under this cache's preprocessing settings."""
        return hashlib.sha256(f"{self.content_hash(path)};{self._settings}".encode()).hexdigest()

    def entry_paths(self, path: str | Path) -> tuple[Path, Path]:
        """``(square .npy, geometry .json)`` where ``path``'s entry lives."""
        key = self.key(path)
        folder = self.root / "squares" / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    # -- entries ------------------------------------------------------------
    def load(self, path: str | Path) -> PreparedImage | None:
        """The cached square of ``path``, or ``None`` on a miss (or an unreadable entry)."""
        npy, meta = self.entry_paths(path)
        if not meta.is_file():
            return None
        try:
            geometry = Geometry.from_dict(json.loads(meta.read_text()))
            stored = np.load(npy, allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None  # damaged entry: treat as a miss, it is rewritten
        if stored.dtype != np.uint16 or stored.shape != (self.img_size, self.img_size):
            return None
        return PreparedImage(_dequantise(stored), geometry)

    def store(self, path: str | Path, prepared: PreparedImage) -> None:
        """Write ``prepared`` as the entry of ``path`` (silently skipped if the cache is read-only)."""
        npy, meta = self.entry_paths(path)
        stored = _quantise(prepared.square)
        text = json.dumps(prepared.geometry.to_dict())
        _cache_write(npy, lambda handle: np.save(handle, stored, allow_pickle=False))
        if npy.is_file():  # the geometry marks the entry complete: only after its square
            _cache_write(meta, text.encode())

    def get(self, path: str | Path) -> PreparedImage:
        """The prepared square of ``path``: from the cache, else decoded and stored."""
        hit = self.load(path)
        if hit is not None:
            return hit
        prepared = _prepare(Path(path), self.img_size, self.normalise_laterality)
        self.store(path, prepared)
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
    try:
        values = tuple(float(v) for v in np.broadcast_to(np.asarray(values, dtype=np.float64), (3,)))
    except (TypeError, ValueError):
        raise ConfigError(f"normalisation {name} must be one or three numbers, got {values!r}") from None
    return check_normalisation(values, f"normalisation {name}", positive=(name == "std"))


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
    ):
        self.paths = [Path(p) for p in paths]
        if labels is not None and len(labels) != len(self.paths):
            raise ConfigError(f"{len(labels)} labels for {len(self.paths)} images")
        self.labels = [(-1 if labels is None else _label_index(labels[i])) for i in range(len(self.paths))]
        self.img_size = check_img_size(img_size, "image size")
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
        path = self.paths[i]
        if self.cache is not None:
            return self.cache.get(path)
        return _prepare(path, self.img_size, self.normalise_laterality)

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
