"""The record store: sweeps kept between commands and found again by their provenance.

One sweep, one record: ``explain``, ``analyze``, ``report-pack`` and
``explore`` ask :func:`mammography.cam.sweep.run_maps` for a run's maps; it
looks here first and sweeps only when no stored record matches, then stores
the new one. By default the store lives beside the decoded-image cache,
``<cache>/records`` (``--cache-dir`` moves both, ``--no-cache`` turns both
off)::

    <cache>/records/<checkpoint SHA-256[:16]>/<input key[:24]>-<layers key[:8]>/
        record.json, images.parquet, maps.zarr/     (mammography.cam.record)

The *input key* (:meth:`SweepKey.digest`) covers everything that decides
the maps except the layers: the checkpoint's SHA-256, the preprocessing
record, every image path with its label and laterality (the laterality
decides the flip), the CAM method, the target, the precision, the tool's
version and the CAM engine's source. Records of one input key differ only
in their layers: a record whose layers include the requested ones serves
(:meth:`RecordStore.find`); a new sweep of other layers is stored beside
them, and a record whose layers the new one covers is removed.

The store is a cache: a record that cannot be read is a miss, one that
cannot be written is skipped (a read-only or full disk costs time, never
the command). :class:`MemoryStore` keeps records in this process only (what
``report-pack --site --no-cache`` shares with its explorer).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mammography import __version__

__all__ = ["RECORDS_DIR", "MemoryStore", "RecordStore", "SweepKey", "engine_fingerprint", "open_store"]

log = logging.getLogger(__name__)

#: the store's folder inside the decoded-image cache
RECORDS_DIR = "records"
#: the modules whose code decides a map's values (a changed engine never reuses an old record)
_ENGINE_MODULES = ("base", "methods", "layers", "result", "runmaps", "sweep")


@functools.lru_cache(maxsize=1)
def engine_fingerprint() -> str:
    """SHA-256 of the CAM engine's source files (:data:`_ENGINE_MODULES`)."""
    from mammography.atomic import sha256_bytes

    folder = Path(__file__).parent
    return sha256_bytes(b"".join((folder / f"{name}.py").read_bytes() for name in _ENGINE_MODULES))


@dataclass(frozen=True)
class SweepKey:
    """What decides a run's maps, the layers apart (module docstring).

    Build it with :meth:`of`.
    """

    checkpoint_sha256: str
    preprocessing: dict
    method: str
    target_mode: str
    autocast: str | None
    image_paths: tuple[str, ...]
    y_true: tuple[int, ...]
    laterality: tuple[str | None, ...]

    @classmethod
    def of(cls, run, method: str, target_mode: str, autocast: str | None = None) -> "SweepKey":
        """The key of a sweep of every validation image of ``run`` (a :class:`~mammography.runs.Run`)."""
        from mammography.data.dataset import laterality_hints

        table = run.predictions
        hints = laterality_hints(table)
        return cls(
            checkpoint_sha256=run.checkpoint_sha256,
            preprocessing=run.preprocessing.to_record(),
            method=method,
            target_mode=target_mode,
            autocast=autocast,
            image_paths=tuple(table["image_path"].astype(str)),
            y_true=tuple(int(v) for v in table["y_true"]),
            laterality=tuple(None if pd.isna(h) else str(h) for h in (hints or [None] * len(table))),
        )

    def digest(self) -> str:
        """Hex SHA-256 of the key, with the tool version and the engine's fingerprint."""
        from mammography.atomic import sha256_bytes

        text = json.dumps({
            "checkpoint_sha256": self.checkpoint_sha256, "preprocessing": self.preprocessing,
            "method": self.method, "target_mode": self.target_mode, "autocast": self.autocast,
            "image_paths": self.image_paths, "y_true": self.y_true, "laterality": self.laterality,
            "tool_version": __version__, "engine": engine_fingerprint(),
        }, sort_keys=True)
        return sha256_bytes(text.encode("utf-8"))

    def accepts(self, maps, layers: Sequence[str]) -> bool:
        """True when ``maps`` (a :class:`~mammography.cam.sweep.RunMaps`) answers a request for ``layers``."""
        return (
            maps.checkpoint_sha256 == self.checkpoint_sha256
            and maps.preprocessing == self.preprocessing
            and maps.method == self.method
            and maps.target_mode == self.target_mode
            and maps.autocast == self.autocast
            and set(layers) <= set(maps.layers)
            and tuple(maps.image_paths) == self.image_paths
            and tuple(int(v) for v in maps.y_true) == self.y_true
        )


def _layers_key(layers: Sequence[str]) -> str:
    from mammography.atomic import sha256_bytes

    return sha256_bytes("\n".join(sorted(layers)).encode("utf-8"))[:8]


class RecordStore:
    """Sweep records on disk under ``root`` (module docstring).

    Parameters
    ----------
    root : the store's folder (created on the first write).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"RecordStore({str(self.root)!r})"

    def _folder(self, key: SweepKey) -> Path:
        return self.root / key.checkpoint_sha256[:16]

    def _candidates(self, key: SweepKey) -> list[Path]:
        folder = self._folder(key)
        if not folder.is_dir():
            return []
        prefix = key.digest()[:24] + "-"
        return sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and p.is_dir())

    def find(self, key: SweepKey, layers: Sequence[str]):
        """The stored sweep of ``key`` holding ``layers`` (a :class:`~mammography.cam.sweep.RunMaps` of
        just those layers, in that order), or None."""
        from mammography.cam.record import load_record
        from mammography.errors import MammographyError

        for folder in self._candidates(key):
            try:
                record = load_record(folder)
                if not set(layers) <= set(record.layers) or record.info.get("tool_version") != __version__:
                    continue
                maps = record.to_run_maps(list(layers))
            except (MammographyError, OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("record %s unreadable (%s): sweeping again", folder, exc)
                continue
            if key.accepts(maps, layers):
                return maps
        return None

    def put(self, maps, key: SweepKey) -> Path | None:
        """Store ``maps`` (the sweep of ``key``); records whose layers it covers are removed.

        Returns the record folder, or None when the store cannot be written.
        """
        from mammography.cam.record import load_record, write_record
        from mammography.errors import MammographyError

        folder = self._folder(key) / f"{key.digest()[:24]}-{_layers_key(maps.layers)}"
        try:
            write_record(maps, folder)
        except (MammographyError, OSError) as exc:
            log.debug("sweep record not stored in %s: %s", folder, exc)
            return None
        for other in self._candidates(key):
            if other == folder:
                continue
            try:
                covered = set(load_record(other).layers) <= set(maps.layers)
            except (MammographyError, OSError, ValueError, KeyError, TypeError):
                covered = True  # unreadable: nothing would ever use it
            if covered:
                shutil.rmtree(other, ignore_errors=True)
        return folder


class MemoryStore:
    """Sweep records kept in this process (no file is written); same interface as :class:`RecordStore`."""

    def __init__(self):
        self._records: dict[str, list] = {}

    def find(self, key: SweepKey, layers: Sequence[str]):
        for maps in self._records.get(key.digest(), []):
            if key.accepts(maps, layers):
                return maps.with_layers(list(layers))
        return None

    def put(self, maps, key: SweepKey) -> None:
        kept = [m for m in self._records.get(key.digest(), []) if not set(m.layers) <= set(maps.layers)]
        self._records[key.digest()] = [*kept, maps]


def open_store(cache_dir: str | Path | None) -> RecordStore | None:
    """The record store of a decoded-image cache folder (``<cache_dir>/records``); None without a cache."""
    return None if cache_dir is None else RecordStore(Path(cache_dir).expanduser() / RECORDS_DIR)
