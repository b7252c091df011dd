"""Caption sentences shared by the class-grid figures: the marks legend and who the images come from.

A reader of a Grad-CAM grid needs to know which tiles the model got wrong
(they are framed in red, :data:`~mammography.report.figures.ERROR_LEGEND`)
and whether a row shows several images of one woman (selection prefers
distinct patients, :func:`mammography.analysis.selection.select_per_class`;
only a class with too few patients repeats one).
"""

from __future__ import annotations

import pandas as pd

from mammography.report.figures import ERROR_LEGEND

__all__ = ["patient_groups", "grid_marks_text", "patients_text"]

#: columns that identify a woman (first one present and filled wins); an accession is one exam of one woman
PATIENT_COLUMNS = ("patient_id", "accession")


def patient_groups(predictions: pd.DataFrame) -> pd.Series | None:
    """Patient of each validation image: ``patient_id``, else ``accession``; ``None`` when neither is filled."""
    for column in PATIENT_COLUMNS:
        if column in predictions.columns:
            values = predictions[column]
            filled = values.notna() & (values.astype(str).str.strip() != "")
            if filled.any():
                return values.where(filled, None)
    return None


def patients_text(selection: dict) -> str:
    """Which rows repeat a patient and why (empty when the selection knows no patients)."""
    known = [s for s in selection.values() if s.n_patients is not None and s.indices]
    if not known:
        return ""
    repeats = [s for s in known if s.repeats_patients]
    if not repeats:
        return "Each row shows images of distinct patients. "
    parts = [f"class {s.label} has validation images of only {s.available_patients} "
             f"patient{'s' if s.available_patients != 1 else ''}" for s in repeats]
    text = "; ".join(parts)
    return (f"Rows show distinct patients where the data allow: {text}, so "
            f"{'its row repeats' if len(repeats) == 1 else 'those rows repeat'} a patient. ")


def grid_marks_text(selection: dict, y_true, y_pred) -> str:
    """Legend of the red marks with how many tiles carry them, and the patients sentence."""
    shown = [i for s in selection.values() for i in s.indices]
    wrong = sum(int(y_true[i]) != int(y_pred[i]) for i in shown)
    return (f"Marks: {ERROR_LEGEND}; {wrong} of the {len(shown)} images shown. "
            + patients_text(selection))
