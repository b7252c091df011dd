"""Patient-level, class-stratified train/validation splits and K folds.

Images of one patient (both breasts, CC and MLO views) look alike, so a
patient whose images sit on both sides of a split leaks and inflates the
validation metrics. Every split here assigns whole *patients*:

* a patient's class, used for stratification, is the majority density label
  of its images (ties go to the higher label, i.e. the denser class, because
  the rarer dense classes matter most for stratification);
* rows whose ``patient_id`` is empty count as a patient of their own (keyed
  by ``image_path``), which is the safe assumption when nothing links them.

Functions take a manifest :class:`pandas.DataFrame` with at least
``image_path``, ``patient_id`` and ``density_label`` (1..4), as returned by
:func:`mammography.data.load_manifest`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mammography.errors import ConfigError, ManifestError

__all__ = [
    "patient_groups",
    "patient_classes",
    "split_patients",
    "kfold_patients",
    "split_table",
    "check_no_patient_overlap",
]

TRAIN = "train"
VAL = "val"


def patient_groups(df: pd.DataFrame) -> pd.Series:
    """The patient key of every row (``patient_id``, or the image path when empty).

    Returns a string Series aligned with ``df.index``.
    """
    for column in ("image_path", "density_label"):
        if column not in df.columns:
            raise ManifestError(f"manifest has no '{column}' column; it is needed to split the data")
    if "patient_id" in df.columns:
        pid = df["patient_id"].astype("string").str.strip()
        missing = pid.isna() | (pid == "")
    else:
        pid = pd.Series(pd.NA, index=df.index, dtype="string")
        missing = pd.Series(True, index=df.index)
    keys = pid.where(~missing, "image:" + df["image_path"].astype(str))
    return keys.astype(str)


def patient_classes(df: pd.DataFrame) -> pd.Series:
    """Majority density label per patient (ties -> higher label), indexed by patient key."""
    groups = patient_groups(df)
    counts = pd.crosstab(groups, df["density_label"].astype(int))
    # reversed column order makes idxmax pick the higher label on ties
    counts = counts[sorted(counts.columns, reverse=True)]
    return counts.idxmax(axis=1).astype(int)


def split_patients(df: pd.DataFrame, val_frac: float = 0.2, seed: int = 42) -> pd.Series:
    """Assign each row to ``"train"`` or ``"val"``, by patient, stratified by class.

    Within each patient class the patients are shuffled with ``seed`` and
    ``round(n * val_frac)`` of them go to validation (at least one when the
    class has two or more patients, none when it has one, so that every class
    seen in validation is also trained on). If that leaves validation empty,
    one patient of the largest class is moved there.

    Parameters
    ----------
    df : manifest with ``image_path``, ``patient_id``, ``density_label``.
    val_frac : fraction of patients (per class) to validate on, in (0, 1).
    seed : seed of the shuffle; the same seed and data give the same split.

    Returns
    -------
    Series of ``"train"``/``"val"`` aligned with ``df.index``.
    """
    if not 0.0 < float(val_frac) < 1.0:
        raise ConfigError(f"--val-frac must be between 0 and 1 (exclusive), got {val_frac}")
    groups = patient_groups(df)
    classes = patient_classes(df)
    if len(classes) < 2:
        raise ManifestError(
            f"the manifest has {len(classes)} patient(s); a train/validation split needs at least 2"
        )
    rng = np.random.default_rng(seed)
    val_patients: list[str] = []
    for label in sorted(classes.unique()):
        # sorted first so the result does not depend on the manifest's row order
        patients = np.array(sorted(classes.index[classes == label]))
        rng.shuffle(patients)
        n_val = int(round(len(patients) * val_frac))
        if len(patients) >= 2:
            n_val = min(max(n_val, 1), len(patients) - 1)
        else:
            n_val = 0
        val_patients.extend(patients[:n_val].tolist())
    if not val_patients:
        largest = classes.value_counts().idxmax()
        val_patients.append(sorted(classes.index[classes == largest])[0])
    return pd.Series(np.where(groups.isin(val_patients), VAL, TRAIN), index=df.index, name="split")


def kfold_patients(df: pd.DataFrame, k: int = 5, seed: int = 42) -> pd.Series:
    """Assign each row to a fold 1..k, by patient, stratified by class.

    Uses scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`
    (``shuffle=True, random_state=seed``) with the patient as the group and
    the image label as the class.

    Returns
    -------
    int Series of fold numbers (1-based) aligned with ``df.index``.
    """
    k = int(k)
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    groups = patient_groups(df)
    n_patients = groups.nunique()
    if n_patients < k:
        raise ManifestError(f"{k} folds need at least {k} patients; the manifest has {n_patients}")
    # sort rows by patient so the folds do not depend on the manifest's row order
    order = np.argsort(groups.to_numpy(), kind="stable")
    labels = df["density_label"].astype(int).to_numpy()[order]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    fold = np.zeros(len(df), dtype=int)
    with warnings.catch_warnings():
        # "The least populated class has only n members": expected for rare classes
        warnings.simplefilter("ignore", UserWarning)
        for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(df)), labels, groups.to_numpy()[order]), 1):
            fold[order[held_out]] = number
    return pd.Series(fold, index=df.index, name="fold")


def split_table(df: pd.DataFrame, assignment: pd.Series) -> pd.DataFrame:
    """The table saved as ``split.csv``: ``image_path, patient_id, split`` (or ``fold``)."""
    patient = df["patient_id"] if "patient_id" in df.columns else pd.Series("", index=df.index)
    return pd.DataFrame(
        {
            "image_path": df["image_path"].astype(str),
            "patient_id": patient.fillna("").astype(str),
            assignment.name or "split": assignment,
        }
    ).reset_index(drop=True)


def check_no_patient_overlap(df: pd.DataFrame, assignment: pd.Series) -> None:
    """Raise ``ValueError`` if a patient appears in more than one part of ``assignment``."""
    groups = patient_groups(df)
    parts_per_patient = pd.Series(assignment.to_numpy(), index=groups.to_numpy()).groupby(level=0).nunique()
    leaked = parts_per_patient[parts_per_patient > 1]
    if len(leaked):
        raise ValueError(f"{len(leaked)} patient(s) on more than one side of the split, e.g. {leaked.index[0]}")
