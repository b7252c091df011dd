"""Writing a run directory: names, atomic files, history plot.

A training run directory holds (see DESIGN section 2)::

    best_model.pth            plain state_dict of the model
    summary.json              hyper-parameters, seed, reproducibility ...
    val_predictions.csv       one row per validation image
    metrics/val_metrics.json  scikit-learn metrics of those predictions
    train_history.csv         one row per epoch
    train_history.png         plot of train_history.csv
    split.csv                 image_path, patient_id, split (train/val)

A run is trained in a temporary folder beside its final place
(:func:`staging_run_dir`) and gets its name (``results``, ``results_1`` ...)
only when every file is written (:func:`publish_run_dir`): an interrupted or
failed training leaves no half-written run, and the next training removes
the temporary folders of killed ones. Each file is written atomically too
(:func:`mammography.atomic.write_atomic`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
import pandas as pd
import torch

from mammography.atomic import OutputLock, describe_os_error, temp_path, write_atomic
from mammography.csvfiles import csv_bytes
from mammography.errors import RunError

__all__ = [
    "RUN_FILES",
    "PREDICTION_COLUMNS",
    "HISTORY_COLUMNS",
    "next_run_dir",
    "staging_run_dir",
    "publish_run_dir",
    "discard_staging",
    "write_json",
    "write_csv",
    "save_state_dict",
    "write_history",
    "plot_history",
    "prediction_table",
]

#: file names inside a run directory
RUN_FILES = {
    "checkpoint": "best_model.pth",
    "summary": "summary.json",
    "predictions": "val_predictions.csv",
    "metrics": "metrics/val_metrics.json",
    "history": "train_history.csv",
    "history_plot": "train_history.png",
    "split": "split.csv",
}

#: the first columns of val_predictions.csv, in order
PREDICTION_COLUMNS = (
    "image_path",
    "accession",
    "patient_id",
    "view",
    "laterality",
    "y_true",
    "y_pred",
    "confidence",
    "p_A",
    "p_B",
    "p_C",
    "p_D",
)
#: manifest columns appended after PREDICTION_COLUMNS when the manifest has them
OPTIONAL_PREDICTION_COLUMNS = ("laterality_source", "view_source", "roi_path", "breast_mask_path")

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "acc",
    "bal_acc_adj",
    "kappa_quadratic",
    "macro_f1",
    "lr",
    "seconds",
)


def _free_name(outdir: Path, base: str, number: int | None = None) -> tuple[Path, int]:
    """The next free ``base``/``base_N`` in ``outdir`` (one past the highest, so deleted runs are not reused)."""
    if number is None:
        pattern = re.compile(rf"^{re.escape(base)}(?:_(\d+))?$")
        taken = [int(m.group(1) or 0) for entry in outdir.iterdir() if (m := pattern.match(entry.name))]
        number = max(taken) + 1 if taken else 0
    return outdir / (base if number == 0 else f"{base}_{number}"), number


def next_run_dir(outdir: str | Path, base: str = "results") -> Path:
    """Create and return the next free run folder ``base``, ``base_1``, ``base_2`` ...

    The number is one more than the highest existing ``base_N`` (``base``
    itself counts as 0), so a deleted run in the middle is not reused. The
    folder is created with ``mkdir(exist_ok=False)``, so two runs started at
    the same time never share a folder.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    candidate, number = _free_name(outdir, base)
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another run took it in between
            candidate, number = _free_name(outdir, base, number + 1)


def staging_run_dir(outdir: str | Path, base: str = "results") -> Path:
    """Create an empty temporary folder in ``outdir`` to write a run into (see the module docstring).

    Creating it checks that ``outdir`` can be written before any training;
    temporary run folders of killed trainings are removed first.

    Raises
    ------
    OutputError
        ``outdir`` cannot be created or written (one line).
    """
    outdir = Path(outdir)
    with OutputLock(folders=[outdir], wait=60, command="mammography training"):
        staging = temp_path(outdir / base)
        try:
            staging.mkdir()
        except OSError as exc:
            raise describe_os_error(exc, outdir, "write to") from None
    return staging


def publish_run_dir(staging: str | Path, base: str = "results") -> Path:
    """Give a finished staging folder its name: the next free ``base``, ``base_1`` ... beside it.

    Names are chosen under the folder's :class:`~mammography.atomic.OutputLock`
    (waiting for another run that publishes at the same moment), so two
    trainings never get one name.
    """
    staging = Path(staging)
    outdir = staging.parent
    with OutputLock(folders=[outdir], wait=600, command="mammography training"):
        candidate, number = _free_name(outdir, base)
        while candidate.exists():  # a folder made by next_run_dir meanwhile
            candidate, number = _free_name(outdir, base, number + 1)
        try:
            os.rename(staging, candidate)
        except OSError as exc:
            raise describe_os_error(exc, candidate, "create") from None
    return candidate


def discard_staging(staging: str | Path) -> None:
    """Remove a staging folder after a failed or interrupted training."""
    shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented UTF-8 JSON (NaN is refused: use ``None``)."""
    text = json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return write_atomic(path, text)


def write_csv(path: str | Path, table: pd.DataFrame) -> Path:
    """Write ``table`` without its index (floats with full precision; text cells spreadsheet-safe)."""
    return write_atomic(path, csv_bytes(table))


def save_state_dict(path: str | Path, state_dict: dict) -> Path:
    """``torch.save`` a plain state_dict (CPU, contiguous tensors) atomically."""
    plain = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    return write_atomic(path, lambda handle: torch.save(plain, handle))


def plot_history(history: pd.DataFrame, path: str | Path, best_epoch: int | None = None) -> Path:
    """Plot losses (left) and validation metrics (right) per epoch to a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    for column, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        ax_loss.plot(history["epoch"], history[column], marker="o", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    for column in ("acc", "bal_acc_adj", "kappa_quadratic", "macro_f1"):
        ax_metric.plot(history["epoch"], pd.to_numeric(history[column], errors="coerce"), marker="o", label=column)
    if best_epoch is not None:
        ax_metric.axvline(best_epoch, color="0.5", linestyle="--", linewidth=1, label=f"saved epoch {best_epoch}")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation")
    ax_metric.legend(fontsize="small")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    return write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=110))


def write_history(run_dir: str | Path, history: list[dict], best_epoch: int | None = None) -> Path:
    """Write ``train_history.csv`` and ``train_history.png``; returns the CSV path."""
    run_dir = Path(run_dir)
    table = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    csv_path = write_csv(run_dir / RUN_FILES["history"], table)
    plot_history(table, run_dir / RUN_FILES["history_plot"], best_epoch)
    return csv_path


def prediction_table(manifest_rows: pd.DataFrame, y_true, y_pred, probs) -> pd.DataFrame:
    """Build ``val_predictions.csv`` from the validation manifest rows and model outputs.

    Parameters
    ----------
    manifest_rows : the validation rows of the manifest, in prediction order.
    y_true, y_pred : 1-based labels.
    probs : (N, 4) probabilities of labels 1..4.

    Returns
    -------
    DataFrame with :data:`PREDICTION_COLUMNS` first, then those of
    :data:`OPTIONAL_PREDICTION_COLUMNS` the rows have (where laterality and
    view came from; ``roi_path``, ``breast_mask_path``). Missing optional
    manifest columns (accession, view ...) are left empty.
    """
    rows = manifest_rows.reset_index(drop=True)
    if len(rows) != len(y_true):
        raise RunError(f"{len(rows)} validation rows but {len(y_true)} predictions")
    probs = torch.as_tensor(probs, dtype=torch.float64).numpy()
    table = pd.DataFrame(index=rows.index)
    for column in ("image_path", "accession", "patient_id", "view", "laterality"):
        table[column] = rows[column] if column in rows.columns else ""
    table["y_true"] = [int(v) for v in y_true]
    table["y_pred"] = [int(v) for v in y_pred]
    table["confidence"] = probs.max(axis=1)
    for column, letter in enumerate("ABCD"):
        table[f"p_{letter}"] = probs[:, column]
    for column in OPTIONAL_PREDICTION_COLUMNS:
        if column in rows.columns:
            table[column] = rows[column]
    return table
