"""What an archive job computes: the images in chunks, the runs, and the content ids of their shards.

The archive (a manifest of any accepted form, CSV or Parquet) is cut into
*chunks* of ``shard_size`` consecutive images. Every run gets one shard per
chunk. A shard's id is a hash of everything that decides its content:

* the chunk's image list (path, label, laterality and view hints, the mask
  paths and artefact box the manifest gives for each image), and
* the run's provenance as the sweep record compares it
  (:func:`mammography.cam.record.matches`: checkpoint SHA-256,
  preprocessing record, CAM method, layers, target mode) with the settings of
  the per-image attention metrics and the job table's format.

Rerunning a job therefore finds the shards it already wrote, whenever and
wherever they were written, and recomputes exactly those whose inputs
changed. Image facts (breast, markers, film edges, dense tissue, ROI on the
analysis grid; :mod:`mammography.analysis.facts`) belong to the image alone
and are found once per image; runs that share a preprocessing record form a
*group*, which prepares each image once for all its runs and writes the
chunk's facts file with the image as its model saw it (orientation,
background level).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.analysis.facts import FACTS_VERSION
from mammography.analysis.localisation import ATTENTION_THRESHOLD
from mammography.analysis.spurious import BORDER_FRACTION, SpuriousThresholds
from mammography.atomic import sha256_bytes
from mammography.errors import ConfigError

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DENSE_SOURCES",
    "TABLE_VERSION",
    "ArchivePlan",
    "Chunk",
    "GroupWork",
    "MetricSettings",
    "RunSpec",
    "ShardTask",
    "Unit",
    "archive_rows",
    "content_id",
]

log = logging.getLogger(__name__)

#: images per shard: one stored chunk of every layer's maps (``mammography.cam.record.CHUNK_IMAGES``)
DEFAULT_SHARD_SIZE = 256
#: version of the job table's columns and of how they are computed (part of every shard id: a new
#: layout never reuses old shards). 2: the metrics measured on the analysis's image facts
#: (:mod:`mammography.analysis.facts`), found on the image itself, as ``analyze`` measures them
TABLE_VERSION = 2
#: where the dense-tissue mask of the pattern metrics comes from
DENSE_SOURCES = ("estimate", "roi")
#: manifest columns that travel with each image (None where the manifest has none)
_ROW_FIELDS = ("image_path", "y_true", "accession", "patient_id", "view", "laterality",
               "roi_path", "breast_mask_path", "artifact_bbox")


def content_id(value, length: int = 20) -> str:
    """Hex SHA-256 (first ``length`` digits) of ``value`` as canonical JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode("utf-8"))[:length]


@dataclass(frozen=True)
class MetricSettings:
    """How the per-image attention metrics of a job are computed (``mammography analyze``'s options).

    Attributes
    ----------
    analysis_size : longer side of the analysis grid (see :mod:`mammography.analysis.maps`).
    border_fraction : width of the border band.
    attention_threshold : normalised attention counted as attended (IoU, attended breast share).
    dense_source : ``"estimate"`` (breast pixels above Otsu's threshold, the
        pectoral muscle left out) or ``"roi"`` (the manifest's ``roi_path``
        masks; images without one get NaN dense-tissue metrics).
    marker_occlusion : also paint each image's markers over and record how
        much the predicted class's probability drops (one more forward pass
        per image with markers).
    spurious : the per-image and per-run flag thresholds.
    """

    analysis_size: int = 256
    border_fraction: float = BORDER_FRACTION
    attention_threshold: float = ATTENTION_THRESHOLD
    dense_source: str = "estimate"
    marker_occlusion: bool = True
    spurious: SpuriousThresholds = SpuriousThresholds()

    def validate(self) -> None:
        from mammography.limits import check_float, check_int

        check_int(self.analysis_size, "--analysis-size", 16, 4096)
        check_float(self.border_fraction, "border fraction", 0.0, 0.5)
        check_float(self.attention_threshold, "attention threshold", 0.0, 1.0)
        if self.dense_source not in DENSE_SOURCES:
            raise ConfigError(f"dense source must be one of {', '.join(DENSE_SOURCES)}, got {self.dense_source!r}")

    def to_dict(self) -> dict:
        return {
            "analysis_size": int(self.analysis_size),
            "border_fraction": float(self.border_fraction),
            "attention_threshold": float(self.attention_threshold),
            "dense_source": self.dense_source,
            "marker_occlusion": bool(self.marker_occlusion),
            "spurious": self.spurious.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MetricSettings":
        return cls(**{**d, "spurious": SpuriousThresholds.from_dict(d.get("spurious"))})


@dataclass(frozen=True)
class RunSpec:
    """One run of a job, as the workers need it (no model: its weights travel separately).

    Attributes
    ----------
    run_id, label, seed, run_path : identify the run (``label`` = seed, else run id).
    folder : its folder name under ``runs/`` and ``table/`` of the job.
    checkpoint_sha256 : SHA-256 of the checkpoint file.
    preprocessing : the run's preprocessing record (``Preprocessing.to_record()``).
    method, layers, target_mode : what the maps are (method name as the engine names it;
        layer names resolved on the model).
    targets : the target spec passed to the engine (``"predicted"``, ``"true"``, ``"all"`` or a class 0..3).
    """

    run_id: str
    folder: str
    label: str
    seed: int | None
    run_path: str
    checkpoint_sha256: str
    preprocessing: dict
    method: str
    layers: tuple[str, ...]
    target_mode: str
    targets: str | int = "predicted"

    def provenance(self) -> dict:
        """The sweep record's provenance (:mod:`mammography.cam.record`)."""
        return {
            "run_id": self.run_id,
            "run_path": Path(self.run_path).as_posix(),
            "checkpoint_sha256": self.checkpoint_sha256,
            "preprocessing": self.preprocessing,
            "method": self.method,
            "layers": list(self.layers),
            "target_mode": self.target_mode,
        }

    def identity(self) -> dict:
        """What decides the content of the run's shards (the record's reuse rule, no paths)."""
        p = self.provenance()
        return {k: p[k] for k in ("checkpoint_sha256", "preprocessing", "method", "layers", "target_mode")}

    @property
    def group(self) -> str:
        """Id of the runs that see the same model input (same preprocessing record)."""
        return content_id({"preprocessing": self.preprocessing}, 12)


@dataclass(frozen=True)
class Chunk:
    """Consecutive images of the archive that make one shard of every run.

    Attributes
    ----------
    index : position of the chunk (0, 1, ...).
    start : archive position of its first image.
    rows : one dict per image (:data:`_ROW_FIELDS`).
    key : content id of the rows.
    """

    index: int
    start: int
    rows: tuple[dict, ...]
    key: str

    @property
    def image_paths(self) -> list[str]:
        return [r["image_path"] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class ShardTask:
    """One run's shard of one chunk, to be computed."""

    run: RunSpec
    shard_id: str


@dataclass(frozen=True)
class GroupWork:
    """What one preprocessing group does on one chunk.

    Attributes
    ----------
    group_id : :attr:`RunSpec.group`.
    preprocessing : the group's preprocessing record.
    facts_id : content id of the chunk's image facts under this preprocessing.
    write_facts : the facts file is missing and must be written.
    shards : the group's runs whose shard of the chunk is missing.
    """

    group_id: str
    preprocessing: dict
    facts_id: str
    write_facts: bool
    shards: tuple[ShardTask, ...]


@dataclass(frozen=True)
class Unit:
    """One chunk's pending work: what travels through the pipeline.

    Attributes
    ----------
    chunk : the images.
    groups : per preprocessing group with something to do.
    settings : the metric settings.
    out_dir : the job's output folder (absolute, seen by every worker).
    batch_size : images per CAM batch.
    """

    chunk: Chunk
    groups: tuple[GroupWork, ...]
    settings: MetricSettings
    out_dir: str
    batch_size: int = 8


def archive_rows(table: pd.DataFrame) -> list[dict]:
    """The manifest table (:func:`mammography.data.load_manifest`) as plain per-image dicts."""
    out = []
    labels = table["density_label"].to_numpy() if "density_label" in table.columns else np.zeros(len(table), int)
    for i, record in enumerate(table.to_dict(orient="records")):
        row = {}
        for name in _ROW_FIELDS:
            value = labels[i] if name == "y_true" else record.get(name)
            if name == "y_true":
                row[name] = int(value) if value is not None and not pd.isna(value) else 0
            else:
                row[name] = None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
        out.append(row)
    return out


@dataclass(eq=False)
class ArchivePlan:
    """The whole job: runs, chunks, and which shards and facts exist already.

    Attributes
    ----------
    manifest : the manifest file.
    manifest_sha256 : its SHA-256 (recorded in the job manifest).
    runs : one :class:`RunSpec` per run, in the order given.
    chunks : the archive cut into chunks.
    settings : the metric settings.
    shard_size : images per chunk.
    """

    manifest: Path
    manifest_sha256: str
    runs: list[RunSpec]
    chunks: list[Chunk]
    settings: MetricSettings
    shard_size: int
    n_images: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, manifest: Path, manifest_sha256: str, rows: list[dict], runs: list[RunSpec],
              settings: MetricSettings, shard_size: int = DEFAULT_SHARD_SIZE) -> "ArchivePlan":
        from mammography.limits import check_int

        check_int(shard_size, "--shard-size", 1, 1 << 16)
        folders = [r.folder for r in runs]
        if len(set(folders)) != len(folders):
            raise ConfigError(f"two runs have the same id ({', '.join(folders)}); give each run once")
        chunks = [Chunk(k, start, tuple(rows[start : start + shard_size]), content_id(rows[start : start + shard_size]))
                  for k, start in enumerate(range(0, len(rows), shard_size))]
        return cls(Path(manifest), manifest_sha256, list(runs), chunks, settings, int(shard_size), len(rows))

    # -- ids --------------------------------------------------------------------
    def shard_id(self, run: RunSpec, chunk: Chunk) -> str:
        return content_id({"run": run.identity(), "settings": self.settings.to_dict(), "images": chunk.key,
                           "table_version": TABLE_VERSION, "facts_version": FACTS_VERSION})

    def facts_id(self, preprocessing: dict, chunk: Chunk) -> str:
        return content_id({"preprocessing": preprocessing, "settings": self.settings.to_dict(),
                           "images": chunk.key, "table_version": TABLE_VERSION, "facts_version": FACTS_VERSION})

    def groups(self) -> dict[str, list[RunSpec]]:
        """Runs by preprocessing group, in the order first seen."""
        out: dict[str, list[RunSpec]] = {}
        for run in self.runs:
            out.setdefault(run.group, []).append(run)
        return out

    # -- what is left to do -------------------------------------------------------
    def units(self, store, batch_size: int = 8) -> tuple[list[Unit], int]:
        """The pending work, one :class:`Unit` per chunk with anything missing, and how many
        run shards are finished already (``store``: :class:`~mammography.distributed.store.JobStore`)."""
        units, done = [], 0
        for chunk in self.chunks:
            groups = []
            for group_id, runs in self.groups().items():
                preprocessing = runs[0].preprocessing
                facts_id = self.facts_id(preprocessing, chunk)
                tasks = []
                for run in runs:
                    shard_id = self.shard_id(run, chunk)
                    if store.shard_done(run, shard_id):
                        done += 1
                    else:
                        tasks.append(ShardTask(run, shard_id))
                write_facts = not store.facts_done(group_id, facts_id)
                if tasks or write_facts:
                    groups.append(GroupWork(group_id, preprocessing, facts_id, write_facts, tuple(tasks)))
            if groups:
                units.append(Unit(chunk, tuple(groups), self.settings, str(store.root), int(batch_size)))
        return units, done
