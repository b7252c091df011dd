"""The per-run sweep record on disk: one documented format, read lazily.

A sweep (:func:`mammography.cam.sweep.sweep_run`) is stored as a folder::

    <record>/
        record.json        format, provenance, sizes; written last: its presence
                           marks a complete record
        images.parquet     one row per image, in sweep order (columns below)
        maps.zarr/         Zarr group, one float32 array per layer:
                           (N, h, w), or (N, 4, h, w) for every class,
                           chunked by CHUNK_IMAGES images

``images.parquet`` columns: ``image_path`` (absolute), ``y_true`` (1..4,
0 = unknown), ``y_pred`` (1..4, recomputed; 0 on an error row), ``target`` (0-based class each
map explains; ``target_0`` .. ``target_3`` for every class), ``p_A`` ..
``p_D``, ``logit_A`` .. ``logit_D``, ``orig_h``, ``orig_w``, ``resized_h``,
``resized_w``, ``offset_top``, ``offset_left``, ``flipped`` (the
:class:`~mammography.io.geometry.Geometry`), and ``error`` (empty, or why
the image could not be explained; such rows have NaN probabilities and zero
maps).

``record.json``::

    {"format": "mammography-run-record", "format_version": 1,
     "tool_version": "...", "n_images": N,
     "provenance": {"run_id", "run_path", "checkpoint_sha256", "preprocessing",
                    "method", "layers", "target_mode", "autocast"},
     "maps": {"<layer>": {"shape": [...], "chunks": [...]}},
     "shards": null}

A *sharded* record (written piecewise, e.g. by a distributed job) has the
same ``record.json`` at its root with ``"shards": [{"id", "path",
"n_images"}, ...]`` (in order) and one complete record folder per shard
under ``shards/``; :func:`load_record` reads both kinds the same way.

``autocast`` (``null`` = float32, ``"bf16"``, ``"fp16"``) was added after
format version 1 was first written; a record without it is float32.

Provenance decides reuse (:func:`matches`): a record stands for a new sweep
of the same checkpoint (SHA-256), preprocessing record, CAM method, target
mode and precision whose layers it contains, over the same images. The
record store (:mod:`mammography.cam.store`) keeps records between commands.

The tables and maps are read on demand: :class:`StoredRecord` gives the
predictions at once and each layer's maps as a Zarr array (sliced without
loading the rest).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mammography import __version__
from mammography.data.labels import CLASS_LETTERS
from mammography.errors import RunError
from mammography.io.geometry import Geometry

__all__ = [
    "CHUNK_IMAGES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RECORD_FILE",
    "StoredRecord",
    "load_record",
    "matches",
    "record_files",
    "record_table",
    "write_record",
]

FORMAT_NAME = "mammography-run-record"
FORMAT_VERSION = 1
RECORD_FILE = "record.json"
TABLE_FILE = "images.parquet"
MAPS_DIR = "maps.zarr"
#: images per stored chunk of a layer's maps (a few MB at 512 px, one read per chunk)
CHUNK_IMAGES = 256
_PROBS = tuple(f"p_{c}" for c in CLASS_LETTERS)
_LOGITS = tuple(f"logit_{c}" for c in CLASS_LETTERS)
_GEOMETRY = ("orig_h", "orig_w", "resized_h", "resized_w", "offset_top", "offset_left", "flipped")


def record_table(maps) -> pd.DataFrame:
    """The ``images.parquet`` table of a :class:`~mammography.cam.sweep.RunMaps`."""
    probs = np.asarray(maps.probs, dtype=np.float32)
    table = pd.DataFrame({
        "image_path": [str(p) for p in maps.image_paths],
        "y_true": np.asarray(maps.y_true, dtype=np.int8),
        # 0 for a row with an error (NaN probabilities): argmax would name class A
        "y_pred": np.where(np.isnan(probs).any(axis=1), 0, probs.argmax(axis=1) + 1).astype(np.int8)
        if len(probs) else np.zeros(0, np.int8),
    })
    targets = np.asarray(maps.targets)
    if targets.ndim == 1:
        table["target"] = targets.astype(np.int8)
    else:
        for k in range(targets.shape[1]):
            table[f"target_{k}"] = targets[:, k].astype(np.int8)
    for j, name in enumerate(_PROBS):
        table[name] = probs[:, j]
    logits = np.asarray(maps.logits, dtype=np.float32)
    for j, name in enumerate(_LOGITS):
        table[name] = logits[:, j]
    g = maps.geometries
    columns = (
        [x.original_shape[0] for x in g], [x.original_shape[1] for x in g],
        [x.resized_shape[0] for x in g], [x.resized_shape[1] for x in g],
        [x.offset[0] for x in g], [x.offset[1] for x in g],
    )
    for name, values in zip(_GEOMETRY[:-1], columns):
        table[name] = np.asarray(values, dtype=np.int32)
    table["flipped"] = np.asarray([x.flipped for x in g], dtype=bool)
    table["error"] = list(getattr(maps, "errors", None) or [""] * len(table))
    return table


def _provenance(maps) -> dict:
    return {
        "run_id": maps.run_id,
        "run_path": Path(maps.run_path).as_posix(),
        "checkpoint_sha256": maps.checkpoint_sha256,
        "preprocessing": maps.preprocessing,
        "method": maps.method,
        "layers": list(maps.layers),
        "target_mode": maps.target_mode,
        "autocast": getattr(maps, "autocast", None),
    }


def _write_folder(maps, folder: Path) -> dict:
    """Write a complete record of ``maps`` into the empty ``folder``; return its ``record.json`` dict."""
    import zarr

    folder.mkdir(parents=True, exist_ok=True)
    table = record_table(maps)
    table.to_parquet(folder / TABLE_FILE, index=False)
    group = zarr.open_group(str(folder / MAPS_DIR), mode="w")
    layout = {}
    for name, array in maps.maps.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        chunks = (max(1, min(CHUNK_IMAGES, len(array))), *array.shape[1:])
        stored = group.create_array(name=name.replace("/", "_"), shape=array.shape, chunks=chunks, dtype="float32")
        if len(array):
            stored[...] = array
        layout[name] = {"shape": list(array.shape), "chunks": list(chunks), "key": name.replace("/", "_")}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "n_images": len(table),
        "provenance": _provenance(maps),
        "maps": layout,
        "shards": None,
    }


def write_record(maps, folder: str | Path) -> Path:
    """Store a sweep's :class:`~mammography.cam.sweep.RunMaps` as a record folder, atomically.

    The record is written into a temporary folder beside ``folder`` and
    renamed into place (an existing record there is replaced), so readers
    see the old record or the complete new one.

    Returns
    -------
    Path
        ``folder``.
    """
    from mammography.atomic import temp_path, write_atomic

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(folder)
    try:
        info = _write_folder(maps, tmp)
        write_atomic(tmp / RECORD_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
        old = temp_path(folder) if folder.exists() else None
        if old is not None:
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def record_files(maps) -> dict[str, bytes]:
    """The files of ``maps``' record folder by relative POSIX path, ``record.json`` last
    (for writers that commit several outputs together, e.g. through a
    :class:`~mammography.atomic.FileBatch`). Same maps, same bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mammography-record-") as tmp:
        folder = Path(tmp) / "record"
        info = _write_folder(maps, folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}
    files[RECORD_FILE] = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return files


@dataclass(eq=False)
class StoredRecord:
    """A record read back: the table at once, the maps on demand.

    Attributes
    ----------
    folder : the record folder.
    info : ``record.json`` as read.
    table : ``images.parquet`` (all shards, in order).
    """

    folder: Path
    info: dict
    table: pd.DataFrame

    @property
    def provenance(self) -> dict:
        return self.info["provenance"]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.provenance["layers"])

    def __len__(self) -> int:
        return len(self.table)

    def _parts(self) -> list[tuple[Path, dict]]:
        shards = self.info.get("shards")
        if not shards:
            return [(self.folder, self.info)]
        return [(self.folder / s["path"], json.loads((self.folder / s["path"] / RECORD_FILE).read_text()))
                for s in shards]

    def layer(self, name: str):
        """The maps of layer ``name``: a Zarr array (unsharded) or a numpy array (shards joined)."""
        import zarr

        if name not in self.info["maps"] and not self.info.get("shards"):
            raise RunError(f"{self.folder}: the record has no maps of layer {name} (it has {', '.join(self.layers)})")
        arrays = []
        for folder, info in self._parts():
            key = info["maps"][name]["key"]
            arrays.append(zarr.open_group(str(folder / MAPS_DIR), mode="r")[key])
        return arrays[0] if len(arrays) == 1 else np.concatenate([a[...] for a in arrays])

    def to_run_maps(self, layers: Sequence[str] | None = None):
        """The record as an in-memory :class:`~mammography.cam.sweep.RunMaps` (the given layers only)."""
        from mammography.cam.runmaps import RunMaps

        t, p = self.table, self.provenance
        target_columns = [c for c in t.columns if c.startswith("target_")]
        targets = t[sorted(target_columns)].to_numpy(np.int64) if target_columns else t["target"].to_numpy(np.int64)
        size = int(p["preprocessing"]["img_size"])
        geometries = [
            Geometry(original_shape=(int(r.orig_h), int(r.orig_w)), size=size,
                     resized_shape=(int(r.resized_h), int(r.resized_w)),
                     offset=(int(r.offset_top), int(r.offset_left)), flipped=bool(r.flipped))
            for r in t.itertuples(index=False)
        ]
        names = list(layers) if layers is not None else list(self.layers)
        return RunMaps(
            maps={name: np.asarray(self.layer(name)[...], dtype=np.float32) for name in names},
            logits=t[list(_LOGITS)].to_numpy(np.float32),
            probs=t[list(_PROBS)].to_numpy(np.float32),
            targets=targets,
            y_true=t["y_true"].to_numpy(np.int64),
            image_paths=t["image_path"].astype(str).tolist(),
            geometries=geometries,
            method=p["method"],
            target_mode=p["target_mode"],
            run_id=p["run_id"],
            run_path=p["run_path"],
            checkpoint_sha256=p["checkpoint_sha256"],
            preprocessing=p["preprocessing"],
            autocast=p.get("autocast"),
        )


def load_record(folder: str | Path) -> StoredRecord:
    """Read a record folder (sharded or not).

    Raises
    ------
    RunError
        No complete record there, or one of another format or a newer version.
    """
    from mammography.io.files import read_json_file

    folder = Path(folder)
    path = folder / RECORD_FILE
    if not path.is_file():
        raise RunError(f"{folder} holds no complete sweep record ({RECORD_FILE} missing); "
                       "write one with 'mammography explain --run RUN'")
    info = read_json_file(path, "sweep record", RunError)
    if info.get("format") != FORMAT_NAME:
        raise RunError(f"{path} is not a sweep record (format {info.get('format')!r})")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise RunError(f"{path} was written by a newer mammography (record format {info['format_version']})")
    shards = info.get("shards")
    parts = [folder / s["path"] / TABLE_FILE for s in shards] if shards else [folder / TABLE_FILE]
    table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
    if len(table) != int(info["n_images"]):
        raise RunError(f"{folder}: the record lists {info['n_images']} images, its table holds {len(table)}")
    return StoredRecord(folder, info, table)


def matches(record: StoredRecord, *, checkpoint_sha256: str, preprocessing: dict, method: str,
            layers: Sequence[str], target_mode: str, image_paths: Sequence[str], autocast: str | None = None) -> bool:
    """True when ``record`` stands for a new sweep with these settings (module docstring)."""
    p = record.provenance
    return (
        p.get("checkpoint_sha256") == checkpoint_sha256
        and p.get("preprocessing") == preprocessing
        and p.get("method") == method
        and p.get("target_mode") == target_mode
        and p.get("autocast") == autocast
        and set(layers) <= set(p.get("layers", ()))
        and record.table["image_path"].astype(str).tolist() == [str(x) for x in image_paths]
    )
