"""Patient-level, class-stratified train/validation splits and K folds.

Images of one patient (both breasts, CC and MLO views) look alike, so a
patient whose images sit on both sides of a split leaks and inflates the
validation metrics. Every split here assigns whole *patients*:

* a patient's class, used for stratification, is the majority density label
  of its images (ties go to the higher label, i.e. the denser class, because
  the rarer dense classes matter most for stratification);
* rows whose ``patient_id`` is empty count as a patient of their own (keyed
  by ``image_path``), which is the safe assumption when nothing links them.

Which images belong to one woman (:func:`patient_grouping`) is not always
the ``patient_id``: archives of digitised film give every image its own id.

* an id that ends in view/laterality tokens (``Mass-Test_P_00012_RIGHT_MLO``,
  ``P123_L_CC``, ``P123-LCC``) names the woman by the part before them;
* within an accession (one exam of one woman) whose images all have
  different ids, the ids are per image and the accession is the woman.

Rows linked either way are one group (transitively). The rule used is
reported in words, for the training log and ``summary.json``.

Functions take a manifest :class:`pandas.DataFrame` with at least
``image_path``, ``patient_id`` and ``density_label`` (1..4), as returned by
:func:`mammography.data.load_manifest`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mammography.errors import ConfigError, ManifestError

__all__ = [
    "PatientGrouping",
    "patient_grouping",
    "patient_groups",
    "strip_orientation_suffix",
    "patient_classes",
    "split_patients",
    "kfold_patients",
    "split_table",
    "check_no_patient_overlap",
]

TRAIN = "train"
VAL = "val"


_ORIENTATION_TOKENS = {"L", "R", "LEFT", "RIGHT", "CC", "MLO", "ML", "LM", "LCC", "RCC", "LMLO", "RMLO", "LML", "RML"}
_NAMING_TOKENS = _ORIENTATION_TOKENS - {"L", "R"}  # a lone L/R at the end is too weak to strip on its own
_SEPARATORS = re.compile(r"[_\-. ]+")


@dataclass(frozen=True)
class PatientGrouping:
    """Which rows are one woman.

    Attributes
    ----------
    keys : str Series aligned with the manifest, the group of every row.
    rule : short name of what grouped the rows: ``"patient_id"``, or a
        combination of ``"patient_id without view/laterality suffix"`` and
        ``"accession"`` joined by ``" + "``.
    description : one line for the log (how many rows each rule joined).
    """

    keys: pd.Series
    rule: str
    description: str


def strip_orientation_suffix(patient_id: str) -> str:
    """``patient_id`` without trailing view/laterality tokens (``P_00012_RIGHT_MLO`` -> ``P_00012``).

    Only a suffix that holds a view or LEFT/RIGHT (or a joined ``LCC``) is
    stripped, and never the whole id.
    """
    text = str(patient_id)
    parts = _SEPARATORS.split(text.strip())
    cut = len(parts)
    while cut > 1 and parts[cut - 1].upper() in _ORIENTATION_TOKENS:
        cut -= 1
    suffix = {p.upper() for p in parts[cut:]}
    if cut == len(parts) or not suffix & _NAMING_TOKENS:
        return text
    # cut the original text right before the first stripped token, dropping the separator
    pattern = r"[_\-. ]+".join(re.escape(p) for p in parts[cut:]) + r"\s*$"
    match = re.search(r"[_\-. ]+" + pattern, text)
    return text[: match.start()] if match else text


def patient_grouping(df: pd.DataFrame) -> PatientGrouping:
    """The group (woman) of every row, and the rule that formed it (module docstring)."""
    for column in ("image_path", "density_label"):
        if column not in df.columns:
            raise ManifestError(f"manifest has no '{column}' column; it is needed to split the data")
    if "patient_id" in df.columns:
        pid = df["patient_id"].astype("string").str.strip()
        missing = pid.isna() | (pid == "")
    else:
        pid = pd.Series(pd.NA, index=df.index, dtype="string")
        missing = pd.Series(True, index=df.index)
    ids = pid.where(~missing, "image:" + df["image_path"].astype(str)).astype(str)
    stripped = ids.where(missing, ids.map(strip_orientation_suffix))
    n_stripped = int((stripped != ids).sum())
    keys, rules = stripped.copy(), []
    notes = []
    if n_stripped:
        rules.append("patient_id without view/laterality suffix")
        notes.append(f"{n_stripped} ids carry a view/laterality suffix ({ids[stripped != ids].iloc[0]!r} -> "
                     f"{stripped[stripped != ids].iloc[0]!r})")
    per_image = _per_image_accessions(df, stripped)
    if per_image:
        keys = _join_by_accession(df, keys, per_image)
        rules.append("accession")
        notes.append(f"{len(per_image)} accessions hold images with a different patient id each: grouped by accession")
    rule = " + ".join(rules) or "patient_id"
    description = (
        f"grouped {len(df)} images into {keys.nunique()} patients by {rule}"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    return PatientGrouping(keys=keys.astype(str), rule=rule, description=description)


def _per_image_accessions(df: pd.DataFrame, ids: pd.Series) -> list[str]:
    """Accessions with two or more images whose ids all differ (ids per image, not per woman)."""
    if "accession" not in df.columns:
        return []
    accession = df["accession"].astype("string").str.strip()
    known = accession.notna() & (accession != "")
    if not known.any():
        return []
    table = pd.DataFrame({"accession": accession[known], "id": ids[known]})
    stats = table.groupby("accession")["id"].agg(["size", "nunique"])
    return sorted(stats.index[(stats["size"] >= 2) & (stats["nunique"] == stats["size"])].astype(str))


def _join_by_accession(df: pd.DataFrame, keys: pd.Series, accessions: list[str]) -> pd.Series:
    """Rows of each of ``accessions`` become one group, with every row linked to them by its key."""
    accession = df["accession"].astype("string").str.strip()
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for acc in accessions:
        members = keys[accession == acc].unique()
        root = find(f"accession:{acc}")
        for m in members:
            parent[find(m)] = root
    return keys.map(find)


def patient_groups(df: pd.DataFrame) -> pd.Series:
    """The patient key of every row (:func:`patient_grouping`), a string Series aligned with ``df.index``."""
    return patient_grouping(df).keys


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
    """The table saved as ``split.csv``: ``image_path, patient_id, split`` (or ``fold``), with a
    ``patient_group`` column before the split when the patients were grouped by more than their id."""
    patient = df["patient_id"] if "patient_id" in df.columns else pd.Series("", index=df.index)
    grouping = patient_grouping(df)
    columns = {"image_path": df["image_path"].astype(str), "patient_id": patient.fillna("").astype(str)}
    if grouping.rule != "patient_id":
        columns["patient_group"] = grouping.keys
    columns[assignment.name or "split"] = assignment
    return pd.DataFrame(columns).reset_index(drop=True)


def check_no_patient_overlap(df: pd.DataFrame, assignment: pd.Series) -> None:
    """Raise ``ValueError`` if a patient appears in more than one part of ``assignment``."""
    groups = patient_groups(df)
    parts_per_patient = pd.Series(assignment.to_numpy(), index=groups.to_numpy()).groupby(level=0).nunique()
    leaked = parts_per_patient[parts_per_patient > 1]
    if len(leaked):
        raise ValueError(f"{len(leaked)} patient(s) on more than one side of the split, e.g. {leaked.index[0]}")
