"""Image facts computed once per image and shared by every run that uses it.

:class:`FactStore` hands out :class:`~mammography.analysis.facts.ImageFacts`:
from memory when this store has seen the image, else from its on-disk entry,
else computed (:func:`~mammography.analysis.facts.compute_image_facts`) and
stored. Three seeds on one split, or the folds of a cross-validation, thus
find each image's breast, markers and film edges once.

An entry is keyed by

* the SHA-256 of the image file's *content* (a renamed or copied file hits,
  an edited one misses), memoised by path, size and mtime like the
  decoded-image cache's (:class:`mammography.data.dataset.ContentHashes`, the
  same memo files);
* the analysis size, :data:`~mammography.analysis.facts.FACTS_VERSION` and
  the package version (new mask rules never reuse old entries);
* what the user supplied for the image: the content of its breast-mask and
  ROI files and its artefact box.

Layout under the cache folder (beside the decoded-image cache's ``squares/``)::

    facts/<key[:2]>/<key>.npz    bit-packed masks, shapes, counts, view

A cache that cannot be written (read-only, full) only costs time; a damaged
entry is computed again.
"""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mammography import __version__
from mammography.analysis.facts import FACTS_VERSION, FactSources, ImageFacts, compute_image_facts
from mammography.atomic import sha256_bytes
from mammography.data.dataset import ContentHashes
from mammography.errors import OutputError
from mammography.parallel import map_in_processes, resolve_workers

__all__ = ["FactStore"]

_MASK_HINT = "fix the path in the manifest or leave the column empty"


class FactStore:
    """Image facts by image, computed at most once (see the module docstring).

    Parameters
    ----------
    root : the cache folder (the decoded-image cache's, e.g. ``AnalysisOptions.cache_dir``);
        None keeps the facts in memory only, for this store's lifetime.
    memory_bytes : most bytes of (bit-packed) facts kept in memory, the least
        recently used dropped first (about 40 kB an image at the default
        analysis size).

    Attributes
    ----------
    computed : how many images' facts this store computed (the rest came
        from memory or disk).
    loaded : how many it read from disk.
    """

    def __init__(self, root: str | Path | None = None, *, memory_bytes: int = 256 << 20):
        self.root = None if root is None else Path(root).expanduser()
        self.hashes = ContentHashes(self.root)
        self.computed = 0
        self.loaded = 0
        self.memory_bytes = max(0, int(memory_bytes))
        self._memory: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._held = 0

    def key(self, path: str | Path, analysis_size: int, sources: FactSources = FactSources()) -> str:
        """The entry key of ``path``'s facts at ``analysis_size`` with ``sources``."""
        parts = [
            f"image={self.hashes(path)}",
            f"size={int(analysis_size)}",
            f"facts={FACTS_VERSION}",
            f"pkg={__version__}",
            f"breast={'-' if sources.breast_mask_path is None else self.hashes(sources.breast_mask_path, 'breast mask', _MASK_HINT)}",
            f"bbox={'-' if sources.artifact_bbox is None else ','.join(str(int(v)) for v in sources.artifact_bbox)}",
            f"roi={'-' if sources.roi_path is None else self.hashes(sources.roi_path, 'ROI mask', _MASK_HINT)}",
        ]
        return sha256_bytes(";".join(parts).encode())

    def entry_path(self, key: str) -> Path | None:
        """Where the entry of ``key`` lives on disk (None without a cache folder)."""
        return None if self.root is None else self.root / "facts" / key[:2] / f"{key}.npz"

    def get(self, path: str | Path, analysis_size: int, sources: FactSources = FactSources()) -> ImageFacts:
        """The facts of the image at ``path``: from memory, from disk, or computed and stored."""
        key = self.key(path, analysis_size, sources)
        if key in self._memory:
            self._memory.move_to_end(key)
            return ImageFacts.from_arrays(self._memory[key])
        arrays = self._load(key)
        if arrays is None:
            arrays = compute_image_facts(path, analysis_size, sources).to_arrays()
            self.computed += 1
            self._store(key, arrays)
        else:
            self.loaded += 1
        self._remember(key, arrays)
        return ImageFacts.from_arrays(arrays)

    def prefetch(self, requests: Sequence[tuple[str | Path, int, FactSources]], *, workers: int | None = None,
                 progress: bool = False) -> int:
        """Compute, in worker processes, the facts of the requested images that neither memory nor disk holds.

        Parameters
        ----------
        requests : ``(path, analysis_size, sources)`` per image, as for :meth:`get`.
        workers : processes (:func:`mammography.parallel.resolve_workers`:
            None = one per CPU, at most 8, once 64 or more images lack
            facts; 1 = leave them to :meth:`get`, one by one).
        progress : show a progress bar.

        Returns
        -------
        How many images' facts were computed. Without a cache folder nothing
        is (the facts of a big set would not fit in memory to wait for
        :meth:`get`): :meth:`get` computes them as they are asked for.
        """
        if self.root is None:
            return 0
        missing: dict[str, tuple[str, int, FactSources]] = {}
        for path, size, sources in requests:
            key = self.key(path, size, sources)
            if key not in self._memory and key not in missing and not self.entry_path(key).is_file():
                missing[key] = (str(path), int(size), sources)
        n_workers = resolve_workers(workers, len(missing))
        if n_workers <= 1:
            return 0
        from tqdm.auto import tqdm

        # forked: an analysis runs inside scripts and notebooks that need not guard a re-import of themselves
        done = map_in_processes(_facts_arrays, list(missing.values()), n_workers, start="fork")
        for key, arrays in tqdm(zip(missing, done), total=len(missing), desc="image facts", unit="image",
                                disable=not progress, leave=False):
            self.computed += 1
            self._store(key, arrays)
            self._remember(key, arrays)
        return len(missing)

    def _remember(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        self._memory[key] = arrays
        self._held += sum(a.nbytes for a in arrays.values())
        while self._held > self.memory_bytes and self._memory:
            self._held -= sum(a.nbytes for a in self._memory.popitem(last=False)[1].values())

    def _load(self, key: str) -> dict[str, np.ndarray] | None:
        entry = self.entry_path(key)
        if entry is None or not entry.is_file():
            return None
        try:
            with np.load(entry, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            ImageFacts.from_arrays(arrays)  # a readable entry is a complete one
            return arrays
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None  # a damaged entry is a miss; it is rewritten

    def _store(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        from mammography.atomic import write_atomic

        entry = self.entry_path(key)
        if entry is None:
            return
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        try:
            write_atomic(entry, buffer.getvalue(), durable=False)
        except OutputError:
            pass


def _facts_arrays(job: tuple[str, int, FactSources]) -> dict[str, np.ndarray]:
    """:func:`compute_image_facts` in a worker process, as storable arrays."""
    path, size, sources = job
    return compute_image_facts(path, size, sources).to_arrays()
