"""The output folder of an archive job: sharded run records, the job table, image facts, the job manifest.

Layout of ``DIR``::

    job.json                           the job manifest (written last): manifest, runs with
                                       their provenance, settings, every shard with its
                                       counts and timings
    runs/<run>/record.json             each run's sharded sweep record (mammography.cam.record)
    runs/<run>/shards/<shard id>/      one complete record per shard
    table/<run>/<shard id>.parquet     the job table: one row per image and run
    facts/<group>/<facts id>.parquet   image facts per chunk and preprocessing group

A shard is *finished* when its record folder holds ``record.json`` (a
record is renamed into place whole) and its table part exists; the table
part is written first, so a finished record always has its rows. Every file
is written through a temporary file and renamed (:mod:`mammography.atomic`):
a worker killed while writing leaves a temporary file (removed by the next
job that locks the folder), never half a shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.atomic import write_atomic
from mammography.cam.record import FORMAT_NAME, FORMAT_VERSION, RECORD_FILE, write_record
from mammography.errors import RunError

__all__ = ["JOB_FILE", "JOB_FORMAT", "JobStore", "json_safe", "load_job"]

JOB_FILE = "job.json"
JOB_FORMAT = "mammography-archive-job"
JOB_FORMAT_VERSION = 1


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class JobStore:
    """Paths and writes of one job folder (``root``)."""

    root: Path

    # -- paths ------------------------------------------------------------------
    def run_root(self, run) -> Path:
        return self.root / "runs" / run.folder

    def shard_dir(self, run, shard_id: str) -> Path:
        return self.run_root(run) / "shards" / shard_id

    def table_part(self, run, shard_id: str) -> Path:
        return self.root / "table" / run.folder / f"{shard_id}.parquet"

    def facts_file(self, group_id: str, facts_id: str) -> Path:
        return self.root / "facts" / group_id / f"{facts_id}.parquet"

    @property
    def job_file(self) -> Path:
        return self.root / JOB_FILE

    # -- state --------------------------------------------------------------------
    def shard_done(self, run, shard_id: str) -> bool:
        return (self.shard_dir(run, shard_id) / RECORD_FILE).is_file() and self.table_part(run, shard_id).is_file()

    def facts_done(self, group_id: str, facts_id: str) -> bool:
        return self.facts_file(group_id, facts_id).is_file()

    # -- writes -------------------------------------------------------------------
    def write_facts(self, group_id: str, facts_id: str, table: pd.DataFrame) -> Path:
        return write_atomic(self.facts_file(group_id, facts_id), _parquet_bytes(table))

    def write_shard(self, run, shard_id: str, maps, table: pd.DataFrame) -> Path:
        """The run's shard: its table part first, then its record (renamed into place whole)."""
        write_atomic(self.table_part(run, shard_id), _parquet_bytes(table))
        return write_record(maps, self.shard_dir(run, shard_id))  # replaces an earlier attempt's whole

    def write_run_record(self, run, shards: list[dict]) -> Path:
        """The run's root ``record.json`` listing its shards in archive order (written after them)."""
        infos = [json.loads((self.run_root(run) / s["path"] / RECORD_FILE).read_text()) for s in shards]
        maps = {}
        for name in run.layers:
            shapes = [i["maps"][name]["shape"] for i in infos]
            maps[name] = {"shape": [int(sum(s[0] for s in shapes)), *shapes[0][1:]] if shapes else [0],
                          "chunks": infos[0]["maps"][name]["chunks"] if infos else [0],
                          "key": infos[0]["maps"][name]["key"] if infos else name.replace("/", "_")}
        from mammography import __version__

        info = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "n_images": int(sum(s["n_images"] for s in shards)),
            "provenance": run.provenance(),
            "maps": maps,
            "shards": shards,
        }
        return write_atomic(self.run_root(run) / RECORD_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")

    def write_job(self, info: dict) -> Path:
        return write_atomic(self.job_file, json.dumps(json_safe(info), indent=2, sort_keys=True) + "\n")


def json_safe(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def load_job(folder: str | Path) -> dict:
    """``job.json`` of a finished archive job.

    Raises
    ------
    RunError
        No finished job there, or one written by a newer mammography.
    """
    from mammography.io.files import read_json_file

    folder = Path(folder)
    path = folder / JOB_FILE
    if not path.is_file():
        raise RunError(f"{folder} holds no finished archive job ({JOB_FILE} missing); write one with "
                       "'mammography explain --engine ray --manifest ARCHIVE --run RUN --out DIR' "
                       "(rerun it to finish an interrupted job)")
    info = read_json_file(path, "archive job manifest", RunError)
    if info.get("format") != JOB_FORMAT:
        raise RunError(f"{path} is not an archive job manifest (format {info.get('format')!r})")
    if int(info.get("format_version", 0)) > JOB_FORMAT_VERSION:
        raise RunError(f"{path} was written by a newer mammography (job format {info['format_version']})")
    return info
