"""The words of report-pack's figures: titles, row headers and captions.

A reader of a Grad-CAM grid needs to know what it shows (method, layer,
run, checkpoint), how the images were chosen, which tiles the model got
wrong (they are framed in red, :data:`~mammography.report.figures.ERROR_LEGEND`)
and whether a row shows several images of one woman (selection prefers
distinct patients, :func:`mammography.analysis.selection.select_per_class`;
only a class with too few patients repeats one).
"""

from __future__ import annotations

import pandas as pd

from mammography.analysis.selection import describe_strategy
from mammography.cam.sweep import canonical_method
from mammography.data.labels import CLASS_LETTERS, CLASS_NAMES
from mammography.report.figures import ERROR_LEGEND
from mammography.training.metrics import degenerate_warnings

__all__ = [
    "CLASSES",
    "METHOD_LABELS",
    "class_header",
    "class_short",
    "cv_caption",
    "grid_caption",
    "grid_marks_text",
    "grid_title",
    "layer_caption",
    "method_label",
    "patient_groups",
    "patients_text",
    "short_hash",
]

#: the rows of a class grid: BI-RADS density classes 1..4
CLASSES: tuple[int, ...] = (1, 2, 3, 4)
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
}

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


def class_header(label: int) -> str:
    """``"2 (B) \u00b7 scattered fibroglandular"``: a class-grid row's header."""
    return f"{label} ({CLASS_LETTERS[label - 1]}) \u00b7 {CLASS_NAMES[label - 1]}"


def class_short(label: int) -> str:
    """``"2 (B)"``."""
    return f"{label} ({CLASS_LETTERS[label - 1]})"


def method_label(method: str) -> str:
    """``"Grad-CAM++"`` for ``gradcam++`` (aliases resolved)."""
    name = canonical_method(method)
    return METHOD_LABELS.get(name, name)


def short_hash(run) -> str:
    """The first 8 hex digits of the run's checkpoint SHA-256."""
    return run.checkpoint_sha256[:8]


def grid_title(run, options, layer: str) -> str:
    """A figure's title: run, seed, checkpoint, method and layer."""
    seed = "?" if run.seed is None else run.seed
    return (f"{run.run_id} \u00b7 seed {seed} \u00b7 checkpoint {short_hash(run)} \u00b7 "
            f"{method_label(options.method)} at {layer}")


def _shortfall_text(selection: dict) -> str:
    parts = []
    for label in CLASSES:
        sel = selection[label]
        if not sel.available:
            parts.append(f"class {class_short(label)}: no validation images")
        elif sel.shortfall:
            parts.append(f"class {class_short(label)}: {len(sel.indices)} of {sel.requested} requested")
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] + ". ") if parts else ""


def _disagreement_text(check) -> str:
    if not check.n_disagree:
        return ""
    why = f" ({check.note})" if check.note else ""
    return (f"Note: {check.n_disagree} of {check.n_images} predictions recomputed from the checkpoint differ from "
            f"the run's stored {check.source}{why}; tiles show the recomputed ones. ")


def _crop_text(ev) -> str:
    if not any(g.crops for g in ev.sweep.geometries):
        return ""
    return ("The model saw a centre crop of each image (the earlier project's preprocessing); the strips outside "
            "the white line were cut away before the model and carry no attention. ")


def grid_caption(ev, selection, options, what: str) -> str:
    """The caption of a class grid of ``ev`` (an :class:`~mammography.report.evaluate.EvaluatedRun`)."""
    run = ev.run
    return (
        f"{method_label(options.method)} heatmaps (layer {ev.layer}) of {what} (run {run.run_id}, checkpoint "
        f"{short_hash(run)}), explaining the predicted class. Rows: BI-RADS density classes 1 (A) to 4 (D) "
        f"by ground truth; columns: up to {options.per_class} validation images per class, chosen from the "
        f"predictions recomputed from the checkpoint as "
        f"{describe_strategy(options.select, run.seed if run.seed is not None else 0)}. "
        f"{_shortfall_text(selection)}"
        f"Each tile shows the whole mammogram in its original orientation with the ground truth (GT), the "
        f"prediction (Pred) and its probability. Colour scale: {options.colormap}, attention normalised per "
        f"image from 0 (lowest) to 1 (highest). {grid_marks_text(selection, ev.y_true, ev.y_pred)}"
        f"{_crop_text(ev)}{_disagreement_text(ev.check)}"
        + "".join(f"Warning: {w}. " for w in degenerate_warnings(ev.y_true, ev.y_pred))
    ).strip()


def layer_caption(ev, options, names: list[str], n_misclassified: int) -> str:
    """The caption of a run's layer-wise figure."""
    run = ev.run
    return (
        f"{method_label(options.method)} of the seed-{run.seed} model (run {run.run_id}, checkpoint "
        f"{short_hash(run)}) at several depths ({', '.join(names)}) and fused ({options.fuse} of the "
        f"per-layer maps normalised to 0-1). Columns: one validation image per true density class, the first "
        f"image of that class in the seed-{run.seed} class figure; annotations under the last row. "
        f"Colour scale: {options.colormap}, 0 (lowest) to 1 (highest attention)."
        + (f" Marks: {ERROR_LEGEND}." if n_misclassified else "")
    )


def cv_caption(cv, evaluated: dict) -> str:
    """Where each fold's numbers come from, and what the run's files could not give."""
    n = len(evaluated)
    if n == len(cv.records):
        text = "validation metrics per fold, recomputed from each fold's checkpoint."
    elif n:
        text = (f"validation metrics per fold; {n} of {len(cv.records)} folds recomputed from their checkpoints, "
                "the rows marked (stored) as the run's files state them.")
    else:
        text = "validation metrics per fold as the run's files state them (no fold could be recomputed)."
    text += " Last row: mean \u00b1 sample standard deviation over the recomputed folds." if n else ""
    notes = sorted({r.metrics_note for r in cv.records if r.metrics_note and r.number not in evaluated})
    missing = [r.missing.split(": ", 1)[-1] for r in cv.records if r.missing]
    if notes:
        text += " Missing values: " + "; ".join(notes) + "."
    if missing:
        text += " Not recomputed: " + "; ".join(sorted(set(missing))) + "."
    return text
