"""Comparing analysed runs image by image: :func:`compare_runs` (cross-seed or cross-fold consistency).

For every validation image the runs share, each run's map is put on the
grid of the first run that has the image, and every pair of runs is
compared inside that run's breast mask
(:mod:`mammography.analysis.consistency`): the maps of all shared images are
resampled, normalised and ranked in batches on the analysis's device, then
each image gets its verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mammography.analysis.consistency import (
    ConsistencyThresholds,
    consistency_record,
    consistency_table,
    pair_similarities,
    summarise_consistency,
)
from mammography.analysis.maps import maps_on_grid
from mammography.analysis.result import ConsistencyResult, RunAnalysis
from mammography.errors import ConfigError

__all__ = ["compare_runs", "run_labels"]

#: most grid pixels per run in one batch of images (bounds the memory of the ranking)
_BATCH_PIXELS = 1 << 21


def run_labels(analyses: Sequence) -> list[str]:
    """Labels of runs (anything with ``seed`` and ``run_id``: :class:`RunAnalysis`, ``Run``):
    their seeds when every run has a distinct seed, else their run ids (``/`` -> ``_``)."""
    seeds = [a.seed for a in analyses]
    if all(s is not None for s in seeds) and len(set(seeds)) == len(seeds):
        return [str(s) for s in seeds]
    ids = [a.run_id.replace("/", "_") for a in analyses]
    if len(set(ids)) == len(ids):
        return ids
    return [f"{i + 1}_{rid}" for i, rid in enumerate(ids)]


def _device(analyses: Sequence[RunAnalysis]) -> torch.device:
    from mammography.machine import resolve_device

    return resolve_device(analyses[0].options.device)


def compare_runs(
    analyses: Sequence[RunAnalysis],
    thresholds: ConsistencyThresholds = ConsistencyThresholds(),
    out_dir: str | Path | None = None,
) -> ConsistencyResult:
    """Cross-run consistency over the validation images the runs share.

    Maps are compared on the grid of the first run that has the image (the
    others are resampled onto it), inside the breast mask; an image counts as
    "attention on an artefact" for a run when that run's marker or border
    share is flagged in its analysis.

    Parameters
    ----------
    analyses : two or more :class:`RunAnalysis`.
    thresholds : :class:`ConsistencyThresholds`.
    out_dir : when given, ``consistency.csv`` and ``consistency_summary.json`` are written there.

    Raises
    ------
    ConfigError
        Fewer than two runs, or no shared image.
    """
    analyses = list(analyses)
    if len(analyses) < 2:
        raise ConfigError(f"cross-seed consistency needs at least two runs, got {len(analyses)}")
    labels = run_labels(analyses)
    shared = set(analyses[0].image_paths)
    for a in analyses[1:]:
        shared &= set(a.image_paths)
    if not shared:
        raise ConfigError(
            "the runs share no validation image, so their attention cannot be compared; train the seeds on one "
            "split (train-density --split-seed) or compare folds of the same cross-validation"
        )
    paths = sorted(shared)
    rows = np.array([[a.index_of(p) for a in analyses] for p in paths], dtype=np.int64)  # (images, runs)
    first = analyses[0]
    grids = [first.grid_shape(int(i)) for i in rows[:, 0]]
    rhos, ious = _similarities(analyses, rows, grids, thresholds.top_fraction, _device(analyses))
    records = []
    for k, path in enumerate(paths):
        preds, confs, flags = {}, {}, {}
        for label, a, i in zip(labels, analyses, rows[k]):
            row = a.table.iloc[int(i)]
            preds[label] = int(row["y_pred"])
            confs[label] = float(row["confidence"])
            flags[label] = bool(row.get("marker_flag", False) or row.get("border_flag", False))
        records.append(consistency_record(path, labels, rhos[k], ious[k], preds, confs, artefact_flags=flags,
                                          thresholds=thresholds, y_true=int(first.table.iloc[int(rows[k, 0])]["y_true"])))
    table = consistency_table(records)
    summary = summarise_consistency(table, thresholds)
    summary["run_ids"] = {label: a.run_id for label, a in zip(labels, analyses)}
    summary["grid"] = first.summary.get("grid")
    summary["within"] = "breast mask"
    result = ConsistencyResult(labels=labels, records=records, table=table, summary=summary, analyses=analyses)
    if out_dir is not None:
        result.write(out_dir)
    return result


def _similarities(analyses, rows: np.ndarray, grids: list, fraction: float, device) -> tuple[np.ndarray, np.ndarray]:
    """(images, pairs) rank correlations and top-region IoUs of the runs' maps of the shared images.

    Images are batched by grid shape; each run's maps go onto those grids through its own geometries.
    """
    n_pairs = len(analyses) * (len(analyses) - 1) // 2
    rhos = np.full((len(rows), n_pairs), np.nan)
    ious = np.full((len(rows), n_pairs), np.nan)
    by_grid: dict[tuple[int, int], list[int]] = {}
    for k, grid in enumerate(grids):
        by_grid.setdefault(tuple(grid), []).append(k)
    first = analyses[0]
    for grid, members in by_grid.items():
        step = max(1, _BATCH_PIXELS // (grid[0] * grid[1]))
        for start in range(0, len(members), step):
            batch = np.asarray(members[start : start + step])
            stacked = torch.stack([_on_grid(a, rows[batch, r], grid, device) for r, a in enumerate(analyses)], dim=1)
            within = torch.from_numpy(np.stack([first.regions[int(i)].breast() for i in rows[batch, 0]])).to(device)
            rho, iou = pair_similarities(stacked, fraction, within)
            rhos[batch], ious[batch] = rho.cpu().numpy(), iou.cpu().numpy()
    return rhos, ious


def _on_grid(analysis: RunAnalysis, indices: np.ndarray, grid: tuple[int, int], device) -> torch.Tensor:
    """One run's maps of the images at ``indices`` on ``grid`` (float32 (B, *grid)), in that order."""
    out = torch.empty((len(indices), *grid), dtype=torch.float32, device=device)
    geometries = [analysis.geometries[int(i)] for i in indices]
    for members, mapped in maps_on_grid(analysis.maps[indices], geometries, [grid] * len(indices), device=device):
        out[torch.from_numpy(members).to(device)] = mapped
    return out
