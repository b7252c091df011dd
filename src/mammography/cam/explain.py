"""``mammography explain``: a run's sweep record, written where the user wants it.

``mammography explain --run R`` reads the run (:func:`mammography.runs.open_runs`),
gets its maps from :func:`mammography.cam.sweep.run_maps` (the stored record of
an earlier command when it matches, else a sweep over every image in its
``val_predictions.csv``, each made into exactly the input the run's model was
trained on) and writes into ``OUT/<run id>/``:

* ``cam_<method>/``: the sweep record (:mod:`mammography.cam.record`):
  ``record.json`` (provenance: checkpoint hash, preprocessing record,
  method, layers, target), ``images.parquet`` (per image: recomputed
  prediction, probabilities, logits, the explained class, geometry) and
  ``maps.zarr`` (the low-resolution maps per layer, chunked; read lazily);
  read it back with :func:`load_explanations` or
  :func:`mammography.cam.record.load_record`;
* ``cam_<method>_predictions.csv``: one row per image with the recomputed
  prediction (what the map explains), and the run's stored prediction beside
  it where :meth:`mammography.runs.Run.check_predictions` says they differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mammography.atomic import FileBatch, OutputLock
from mammography.cam.layers import LayerSpec
from mammography.cam.sweep import RunMaps, parse_target, run_maps, target_mode_name
from mammography.csvfiles import csv_bytes
from mammography.data.labels import CLASS_LETTERS
from mammography.limits import MAX_BATCH_SIZE, check_int

__all__ = [
    "ExplainOutput",
    "Explanations",
    "explain_run",
    "explain_runs",
    "explanation_paths",
    "load_explanations",
    "parse_target",
    "prediction_table",
    "run_folder_name",
]

log = logging.getLogger(__name__)

#: where records go when no folder is given: one sub-folder per run id
DEFAULT_OUT = Path("outputs/explanations")
#: an explain record read back is the sweep's maps
Explanations = RunMaps


@dataclass(frozen=True)
class ExplainOutput:
    """What :func:`explain_run` wrote for one run.

    Attributes
    ----------
    run_id : the run's id.
    record_path : the sweep record folder (maps, logits, probabilities, provenance).
    csv_path : per-image predictions.
    n_images : number of validation images explained.
    n_agree : images whose recomputed prediction agrees with the run's stored one.
    layers : layer names, in the order stored.
    method : CAM method name.
    check : the comparison with the stored predictions (its ``message()`` is one line).
    """

    run_id: str
    record_path: Path
    csv_path: Path
    n_images: int
    n_agree: int
    layers: tuple[str, ...]
    method: str
    check: object = None


def run_folder_name(run_id: str) -> str:
    """Folder name for a run id (a fold's ``"results_k3_seed42/fold_1"`` becomes
    ``"results_k3_seed42__fold_1"``)."""
    return run_id.replace("/", "__").replace("\\", "__")


def explanation_paths(out_dir: str | Path, method: str) -> tuple[Path, Path]:
    """(record folder, predictions csv) :func:`explain_run` writes in ``out_dir`` for ``method``."""
    safe = method.replace("+", "p")  # gradcam++ -> gradcampp: no '+' in file names
    out_dir = Path(out_dir)
    return out_dir / f"cam_{safe}", out_dir / f"cam_{safe}_predictions.csv"


def load_explanations(path: str | Path, layers=None) -> RunMaps:
    """Read the record :func:`explain_run` wrote (its ``cam_<method>`` folder) into memory.

    Raises
    ------
    RunError
        No complete record there.
    """
    from mammography.cam.record import load_record

    return load_record(path).to_run_maps(layers)


def explain_run(
    run,
    layers: LayerSpec = None,
    method: str = "gradcam",
    out_dir: str | Path | None = None,
    *,
    targets: str | int = "predicted",
    batch_size: int = 16,
    device: str | torch.device = "auto",
    autocast: str | None = None,
    cache_dir: str | Path | None = None,
    store=None,
    num_workers: int | str | None = None,
    progress: bool = True,
) -> ExplainOutput:
    """Get and store the maps of every validation image of a run.

    :func:`mammography.cam.sweep.run_maps` (whose parameters ``layers``,
    ``method``, ``targets``, ``batch_size``, ``device``, ``autocast``,
    ``cache_dir``, ``store``, ``num_workers`` and ``progress`` these are)
    plus writing its record.

    Parameters
    ----------
    run : a run directory (str / Path) or a :class:`mammography.runs.Run`.
    out_dir : folder for the record and the CSV; default
        ``outputs/explanations/<run id>`` (see :func:`run_folder_name`); the
        run directory itself is never written.
    cache_dir : decoded-image cache; its record store
        (:func:`~mammography.cam.store.open_store`) is read and written unless
        ``store`` is given. ``None``: neither.

    Returns
    -------
    ExplainOutput

    Raises
    ------
    RunError, CheckpointError, ImageReadError, ConfigError
        Unreadable run, checkpoint or image; bad option.
    OutputError
        The output folder cannot be written or another process writes it
        (checked before any map is computed); nothing is written then.
    """
    from mammography.runs import as_run

    target_mode_name(targets)
    check_int(batch_size, "batch size", 1, MAX_BATCH_SIZE)
    run = as_run(run)
    target_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT / run_folder_name(run.run_id)
    with OutputLock(folders=[target_dir], command="mammography explain") as lock:
        batch = FileBatch()
        output = _explain(batch, run, layers, method, target_dir, targets=targets, batch_size=batch_size,
                          device=device, autocast=autocast, cache_dir=cache_dir, store=store,
                          num_workers=num_workers, progress=progress)
        batch.commit(lock.journal(target_dir))
    return output


def _explain(batch: FileBatch, run, layers, method, target_dir: Path, **options) -> ExplainOutput:
    """The maps of one run; stage its record and CSV in ``batch``."""
    from mammography.cam.record import record_files

    maps = run_maps(run, layers, method, **options)
    record_path, csv_path = explanation_paths(target_dir, maps.method)
    check = run.check_predictions(maps.probs)
    files = record_files(maps)
    for name, data in files.items():
        batch.add(record_path / name, data)
    if record_path.is_dir():  # files of the previous record that this one does not have
        for old in record_path.rglob("*"):
            if old.is_file() and old.relative_to(record_path).as_posix() not in files:
                batch.remove(old, prune_up_to=record_path)
    batch.add(csv_path, csv_bytes(prediction_table(run, maps, check)))
    (log.warning if check.n_disagree else log.debug)("%s", check.message())
    return ExplainOutput(
        run_id=run.run_id,
        record_path=record_path,
        csv_path=csv_path,
        n_images=len(maps),
        n_agree=check.n_images - check.n_disagree,
        layers=maps.layers,
        method=maps.method,
        check=check,
    )


def explain_runs(
    specs,
    layers: LayerSpec = None,
    method: str = "gradcam",
    out_dir: str | Path = DEFAULT_OUT,
    *,
    outputs_root: str | Path = Path("outputs"),
    **kwargs,
) -> list[ExplainOutput]:
    """:func:`explain_run` for every run named by ``specs``.

    Parameters
    ----------
    specs : run directories, names under the outputs folder or globs (see
        :func:`mammography.runs.open_runs`); a cross-validation root
        stands for each of its folds.
    layers, method, kwargs : as for :func:`explain_run`.
    out_dir : each run's files go to ``out_dir/<run id>`` (see :func:`run_folder_name`).
    outputs_root : the default outputs folder.

    All runs' files are written together at the end, or none (see
    :mod:`mammography.atomic`); the output folder is locked from the start.
    """
    from mammography.runs import expand_folds, open_runs

    kwargs = {"targets": "predicted", "batch_size": 16, "device": "auto", "autocast": None, "cache_dir": None,
              "progress": True, **kwargs}
    target_mode_name(kwargs["targets"])
    check_int(kwargs["batch_size"], "batch size", 1, MAX_BATCH_SIZE)
    out_dir = Path(out_dir)
    with OutputLock(folders=[out_dir], command="mammography explain") as lock:
        runs = expand_folds(open_runs(specs, outputs_root=outputs_root))
        batch = FileBatch()
        outputs = [_explain(batch, run, layers, method, out_dir / run_folder_name(run.run_id), **kwargs)
                   for run in runs]
        batch.commit(lock.journal(out_dir))
    return outputs


def prediction_table(run, maps: RunMaps, check) -> pd.DataFrame:
    """Per-image predictions: the recomputed ones first (what the maps explain),
    the stored ones beside them only where ``check`` says they differ."""
    probs = maps.probs
    out = pd.DataFrame({
        "image_path": list(maps.image_paths),
        "y_true": maps.y_true,
        "y_pred": maps.y_pred,
        "confidence": maps.confidence,
    })
    for k, letter in enumerate(CLASS_LETTERS):
        out[f"p_{letter}"] = probs[:, k]
    if maps.targets.ndim == 1:
        out["cam_target"] = maps.targets + 1  # the class the map explains, 1..4
    differs = check.differs
    out["agrees_with_run"] = ~differs
    if run.stored is None:  # nothing stored to compare with (a rebuilt cross-validation fold)
        out["stored_y_pred"] = pd.Series(np.zeros(len(out), int), dtype="Int64").where(differs)
        out["stored_confidence"] = np.nan
    else:
        stored_pred = run.stored.y_pred
        stored_conf = run.stored.probs[np.arange(len(stored_pred)), stored_pred - 1]
        out["stored_y_pred"] = pd.Series(stored_pred, dtype="Int64").where(differs)
        out["stored_confidence"] = np.where(differs, stored_conf, np.nan)
    for column in ("accession", "patient_id", "view", "view_source", "laterality", "laterality_source"):
        if column in run.predictions.columns:
            out[column] = run.predictions[column].to_numpy()
    return out
