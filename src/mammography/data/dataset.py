"""Model-ready mammograms as a torch Dataset, with a decoded-image disk cache.

Decoding a full-field DICOM (3000-4000 px, often JPEG 2000) and fitting it
into the square model input takes far longer than a training step at 512 px,
and every epoch and every later run would repeat it. :class:`DecodedImageCache`
stores the prepared square once, on disk, keyed by

* the SHA-256 of the *file content* (a renamed or copied file hits the
  cache, an edited file misses it), and
* everything in the run's :class:`~mammography.data.preprocess.Preprocessing`
  that decides the square (pipeline, model size, laterality normalisation,
  :data:`PREPROCESS_VERSION`) together with the package version (a new
  release of the reading code never reuses squares made by an old one).

Hashing a large file costs a read of it, so the hash is memoised by
``(absolute path, size, mtime)``: in memory for the dataset's lifetime and on
disk in the cache, so a later run does not read the file at all.

Each square carries the laterality and view it was prepared with and their
sources (:func:`mammography.io.with_orientation`: manifest hint, header
tags, PatientID and name tokens, the image), stored beside it in the cache.

The square is stored in the pipeline's integer form (uint16 for this
project's runs, uint8 -- exactly what the model saw -- for the earlier
project's). Squares made without a cache go through the same rounding, so a
run gives the same tensors whether the cache was cold, warm or switched off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mammography.atomic import sha256_bytes, sha256_file, write_atomic
from mammography.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_VERSION,
    PreparedImage,
    Preprocessing,
)
from mammography.errors import ConfigError, ImageReadError, OutputError, printable
from mammography.io.files import require_regular_file
from mammography.io.geometry import Geometry
from mammography.io.orientation import normalise_laterality as _laterality_value

__all__ = [
    "laterality_hints",
    "PREPROCESS_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreparedImage",
    "ContentHashes",
    "DecodedImageCache",
    "MammogramDataset",
    "default_cache_dir",
]

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


def _cache_write(path: Path, data) -> None:
    """Write a cache file atomically (concurrent workers each rename a complete file); a cache that
    cannot be written (read-only, full) only costs time, so failures are ignored."""
    try:
        write_atomic(path, data, durable=False)
    except OutputError:
        pass


class ContentHashes:
    """SHA-256 of files' contents, memoised by ``(absolute path, size, mtime)``.

    In memory for this object's lifetime and, when ``root`` is given, on
    disk under ``root/hashes`` (so a later process does not read the file at
    all). Shared by the decoded-image cache and the image-facts store of
    :mod:`mammography.analysis`, which key their entries by file content.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = None if root is None else Path(root).expanduser()
        self._memo: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: str | Path, what: str = "image", hint: str = "check the manifest's image_path") -> str:
        """SHA-256 of the file's bytes (``what`` and ``hint`` name the file and the fix in errors)."""
        # a FIFO or device would block the hash forever: only regular files are read
        stat = require_regular_file(path, what, ImageReadError, hint)
        path = Path(path).resolve()
        memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if memo_key in self._memo:
            return self._memo[memo_key]
        stat_name = sha256_bytes(repr(memo_key).encode())
        memo_file = None if self.root is None else self.root / "hashes" / stat_name[:2] / stat_name
        digest = None
        if memo_file is not None and memo_file.is_file():
            try:
                digest = memo_file.read_text()[:64].strip() or None
            except (OSError, UnicodeDecodeError):
                digest = None
        if digest is None:
            try:
                digest = sha256_file(path, _HASH_CHUNK)
            except OSError as exc:
                raise ImageReadError(f"cannot read {what} {printable(path)}: {exc.strerror or exc}") from None
            if memo_file is not None:
                _cache_write(memo_file, digest.encode())
        self._memo[memo_key] = digest
        return digest


class DecodedImageCache:
    """On-disk cache of prepared model squares (see the module docstring).

    Layout under ``root``::

        squares/<key[:2]>/<key>.npy    uint16 or uint8 (S, S), or (3, S, S) for colour inputs
        squares/<key[:2]>/<key>.json   geometry (written last: marks the entry complete)
        hashes/<stat[:2]>/<stat>       SHA-256 of a file, memoised by path/size/mtime

    Parameters
    ----------
    root : cache folder (created on first write).
    preprocessing : the run's :class:`~mammography.data.preprocess.Preprocessing`.
    """

    def __init__(self, root: str | Path, preprocessing: Preprocessing):
        self.root = Path(root).expanduser()
        self.preprocessing = preprocessing
        self._hashes = ContentHashes(self.root)

    @property
    def img_size(self) -> int:
        return self.preprocessing.img_size

    # -- keys ---------------------------------------------------------------
    def content_hash(self, path: str | Path) -> str:
        """SHA-256 of the file's bytes, memoised by (path, size, mtime) (:class:`ContentHashes`)."""
        return self._hashes(path)

    def key(self, path: str | Path, laterality: str | None = None) -> str:
        """Cache key of ``path`` under this cache's preprocessing."""
        settings = self.preprocessing.cache_key(laterality)
        return sha256_bytes(f"{self.content_hash(path)};{settings}".encode())

    def entry_paths(self, path: str | Path, laterality: str | None = None) -> tuple[Path, Path]:
        """``(square .npy, geometry .json)`` where ``path``'s entry lives."""
        key = self.key(path, laterality)
        folder = self.root / "squares" / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    # -- entries ------------------------------------------------------------
    def load(self, path: str | Path, laterality: str | None = None) -> PreparedImage | None:
        """The cached square of ``path``, or ``None`` on a miss (or an unreadable entry)."""
        npy, meta = self.entry_paths(path, laterality)
        if not meta.is_file():
            return None
        try:
            record = json.loads(meta.read_text())
            geometry = Geometry.from_dict(record)
            stored = np.load(npy, allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # damaged entry: treat as a miss, it is rewritten
        size = self.img_size
        if stored.shape not in ((size, size), (3, size, size)):
            return None
        try:
            prepared = self.preprocessing.dequantise(stored, geometry)
        except ConfigError:  # another pipeline's dtype under this key: a miss
            return None
        return prepared.with_orientation(record.get("orientation"))

    def store(self, path: str | Path, prepared: PreparedImage, laterality: str | None = None) -> None:
        """Write ``prepared`` as the entry of ``path`` (silently skipped if the cache is read-only)."""
        npy, meta = self.entry_paths(path, laterality)
        pixels = prepared.channels if prepared.channels is not None else prepared.square
        stored = self.preprocessing.quantise(pixels)
        text = json.dumps({**prepared.geometry.to_dict(), "orientation": prepared.orientation()})
        _cache_write(npy, lambda handle: np.save(handle, stored, allow_pickle=False))
        if npy.is_file():  # the geometry marks the entry complete: only after its square
            _cache_write(meta, text.encode())

    def get(self, path: str | Path, laterality: str | None = None) -> PreparedImage:
        """The prepared square of ``path``: from the cache, else decoded and stored."""
        hit = self.load(path, laterality)
        if hit is not None:
            return hit
        prepared = self.preprocessing.prepare(Path(path), laterality)
        self.store(path, prepared, laterality)
        return prepared


def _label_index(label) -> int:
    """Density label 1..4 -> class index 0..3; missing -> -1."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return -1
    value = int(label)
    if not 1 <= value <= 4:
        raise ConfigError(f"density label {label!r} is not 1..4 (labels passed to MammogramDataset are 1-based)")
    return value - 1


class MammogramDataset(Dataset):
    """Mammograms as model input tensors, made by a run's preprocessing.

    Parameters
    ----------
    paths : image files (DICOM, PNG, JPEG, TIFF).
    labels : BI-RADS density labels **1..4** (as in manifests and
        ``val_predictions.csv``), one per path, or ``None``; items carry the
        0-based class index ``label - 1`` (``-1`` when unknown).
    preprocessing : the :class:`~mammography.data.preprocess.Preprocessing`
        that makes the model input (a run's ``Run.preprocessing``). When
        omitted, this project's fit-pad rule is built from ``img_size``,
        ``normalise_laterality``, ``mean`` and ``std`` (``None`` = ImageNet).
    cache_dir : folder of the decoded-image cache; ``None`` decodes every
        time (library default: nothing is written unless asked). Training uses
        :func:`default_cache_dir` unless ``--no-cache``.
    laterality_hints : the manifest's laterality per path (L/R/LEFT/RIGHT,
        anything else = no hint), or ``None``; where the run's preprocessing
        record says so, it comes first when deciding the flip
        (:func:`mammography.io.resolve_laterality`).

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
        *,
        preprocessing: Preprocessing | None = None,
        laterality_hints: Sequence | None = None,
    ):
        self.paths = [Path(p) for p in paths]
        if labels is not None and len(labels) != len(self.paths):
            raise ConfigError(f"{len(labels)} labels for {len(self.paths)} images")
        if laterality_hints is not None and len(laterality_hints) != len(self.paths):
            raise ConfigError(f"{len(laterality_hints)} laterality hints for {len(self.paths)} images")
        self.labels = [(-1 if labels is None else _label_index(labels[i])) for i in range(len(self.paths))]
        if preprocessing is None:
            preprocessing = Preprocessing.fit_pad(img_size, mean, std, normalise_laterality)
        self.preprocessing = preprocessing
        self.laterality_hints = [None] * len(self.paths) if laterality_hints is None else [
            _laterality_value(v) for v in laterality_hints]
        self.cache = DecodedImageCache(cache_dir, preprocessing) if cache_dir is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def prepared(self, i: int) -> PreparedImage:
        """Square and geometry of image ``i`` (from the cache when one is set)."""
        path, laterality = self.paths[i], self.laterality_hints[i]
        if self.cache is not None:
            return self.cache.get(path, laterality)
        return self.preprocessing.prepare(path, laterality)

    def geometry(self, i: int) -> Geometry:
        """How image ``i``'s original pixels map into the model square."""
        return self.prepared(i).geometry

    def square(self, i: int) -> np.ndarray:
        """Unnormalised (S, S) float32 model-space image in [0, 1] (for display)."""
        return self.prepared(i).square

    def to_tensor(self, square: PreparedImage | np.ndarray) -> torch.Tensor:
        """Prepared image (or an (S, S) square) -> normalised (3, S, S) float32 tensor."""
        return self.preprocessing.to_tensor(square)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return {"image": self.to_tensor(self.prepared(i)), "label": self.labels[i], "index": int(i)}
