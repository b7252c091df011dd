"""Where every file of a report pack comes from: the staged assets and ``report_manifest.json``.

:class:`AssetBatch` collects the pack's files with one manifest entry each
(path, kind, SHA-256, source run, checkpoint hash, seed, git commit, and
what the file shows); PNG encoding runs in a few threads while the next
figure is drawn (:meth:`AssetBatch.render`), and :meth:`AssetBatch.finish`
puts the files into the :class:`~mammography.atomic.FileBatch` in the order
they were added, so the same inputs give the same files, manifest and
commit order. :func:`run_record` is a run's entry in the manifest;
:func:`previous_assets` lists what the previous pack in the folder wrote (a
file it no longer makes is removed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammography.atomic import FileBatch, sha256_bytes
from mammography.report.display import DisplayImages
from mammography.report.figures import FigureLayout, figure_rgba, png_from_rgba

__all__ = ["ASSET_SUFFIXES", "MANIFEST_NAME", "AssetBatch", "clean_json", "git_commit", "previous_assets",
           "run_record"]

MANIFEST_NAME = "report_manifest.json"
#: files a pack writes into the assets folder (a later pack removes the ones it no longer makes)
ASSET_SUFFIXES = (".png", ".csv", ".json", ".npz")
#: how many disagreeing image paths the manifest lists
LIST_DISAGREEING = 50
#: threads encoding PNGs (zlib and Pillow release the GIL while they compress)
PNG_THREADS = 4


def git_commit(run) -> str | None:
    """The training code's git commit as the run's summary.json records it."""
    rep = run.summary.get("reproducibility") if isinstance(run.summary, dict) else None
    return rep.get("git_commit") if isinstance(rep, dict) else None


def clean_json(value):
    """JSON-ready, stable numbers (rounded floats, NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, Path):
        return value.as_posix()
    return value


def run_record(ev) -> dict:
    """The manifest's entry of an :class:`~mammography.report.evaluate.EvaluatedRun`."""
    run = ev.run
    return {
        "run_id": run.run_id,
        "path": Path(run.path).as_posix(),
        "seed": run.seed,
        "fold": run.fold,
        "checkpoint": Path(run.checkpoint).as_posix(),
        "checkpoint_sha256": run.checkpoint_sha256,
        "git_commit": git_commit(run),
        "n_val": ev.check.n_images,
        "n_disagree": ev.check.n_disagree,
        "disagreeing": list(ev.check.disagreeing[:LIST_DISAGREEING]),
        "max_prob_diff": ev.check.max_prob_diff,
        "stored_predictions": ev.check.source,
        "stored_note": ev.check.note or None,
        "metrics_recomputed": ev.metrics,
        "metrics_stored": {k: v for k, v in run.metrics.items()},
        "metrics_stored_source": run.metrics_source,
        "writer": run.writer,
        "preprocessing": run.preprocessing.to_record(),
        "preprocessing_source": run.preprocessing.source,
        "layer": ev.layer,
    }


@dataclass
class AssetBatch:
    """A pack's outputs being assembled: staged files plus their manifest entries.

    Attributes
    ----------
    options : the pack's :class:`~mammography.report.options.ReportOptions`.
    assets_dir : the assets folder (absolute).
    batch : the files, committed together at the end.
    images : the decoded display images, shared by every figure.
    assets : manifest entries, in the order the files were added.
    layouts : asset path (relative, POSIX) -> :class:`FigureLayout` of each figure.
    """

    options: object
    assets_dir: Path
    batch: FileBatch = field(default_factory=FileBatch)
    images: DisplayImages = field(default_factory=DisplayImages)
    assets: list = field(default_factory=list)
    layouts: dict = field(default_factory=dict)
    _pending: list = field(default_factory=list, repr=False)
    _paths: set = field(default_factory=set, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.assets_dir)).as_posix()

    def add(self, path: Path, data: bytes | str | Future, kind: str, ev=None, **extra) -> Path:
        """Stage ``data`` (or the bytes a :class:`Future` will give) for ``path`` with its manifest entry."""
        path = Path(os.path.abspath(path))
        if path in self._paths or path in self.batch.files:
            from mammography.errors import OutputError

            raise OutputError(f"two outputs would be written to the same file {path}")
        self._paths.add(path)
        entry = {"path": self.rel(path), "kind": kind, "sha256": None}
        if ev is not None:
            entry.update({
                "run_id": ev.run.run_id,
                "source_run": Path(ev.run.path).as_posix(),
                "seed": ev.run.seed,
                "checkpoint_sha256": ev.run.checkpoint_sha256,
                "git_commit": git_commit(ev.run),
            })
        entry.update(extra)
        self.assets.append(entry)
        self._pending.append((path, data, entry))
        return path

    def render(self, path: Path, make: Callable[[], bytes], kind: str, ev=None, **extra) -> Path:
        """Stage the bytes ``make()`` returns, computed in a worker thread (PNG encoding)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=PNG_THREADS, thread_name_prefix="png")
        return self.add(path, self._pool.submit(make), kind, ev, **extra)

    def figure(self, path: Path, fig_and_layout, kind: str, ev, **extra) -> FigureLayout:
        """Stage a matplotlib figure as a PNG: drawn here, encoded in a worker thread."""
        fig, layout = fig_and_layout
        rgba = figure_rgba(fig)
        self.render(path, lambda: png_from_rgba(rgba), kind, ev, width_in=layout.width_in,
                    height_in=layout.height_in, dpi=layout.dpi, **extra)
        self.layouts[self.rel(path)] = layout
        return layout

    def finish(self) -> FileBatch:
        """Wait for the encoders; put every file into :attr:`batch` in the order added, with its SHA-256."""
        try:
            for path, data, entry in self._pending:
                data = data.result() if isinstance(data, Future) else data
                self.batch.add(path, data)
                entry["sha256"] = sha256_bytes(self.batch.files[path])
        finally:
            self.close()
        self._pending.clear()
        return self.batch

    def close(self) -> None:
        """Stop the encoder threads (pending work is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def previous_assets(assets_dir: Path) -> list[Path]:
    """Files the previous pack in ``assets_dir`` listed (to remove the ones no longer produced)."""
    from mammography.errors import MammographyError, RunError
    from mammography.io.files import read_json_file

    manifest = assets_dir / MANIFEST_NAME
    if not manifest.is_file():
        return []
    try:
        entries = read_json_file(manifest, "report manifest", RunError).get("assets", [])
    except (MammographyError, AttributeError):
        return []
    if not isinstance(entries, list):
        return []
    root = Path(os.path.abspath(assets_dir))
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kind") in ("latex", "markdown") or "path" not in entry:
            continue
        path = Path(os.path.abspath(root / str(entry["path"])))
        if root in path.parents and path.suffix in ASSET_SUFFIXES:  # never outside the assets folder
            out.append(path)
    return out
