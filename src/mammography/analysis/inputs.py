"""Which validation images a run analysis measures, and what the user supplied about each.

The rows are the run's predictions (``val_predictions.csv``), in their order;
a ``--manifest`` fills the ``roi_path``, ``breast_mask_path`` and
``artifact_bbox`` cells the predictions lack (matched by image path), and
``--roi-dir`` holds ROI masks named after the images
(``<stem>{,_roi,_mask,_dense}.png``). :func:`row_sources` turns one row into
the :class:`~mammography.analysis.facts.FactSources` of its image.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammography.analysis.facts import FactSources, is_missing

__all__ = ["ROI_SUFFIXES", "find_roi", "is_phantom", "merge_manifest", "orientation_columns", "row_sources",
           "select_rows"]

#: file-name endings of ROI masks looked for in ``--roi-dir``
ROI_SUFFIXES = ("", "_roi", "_mask", "_dense")


def find_roi(image_path: str, roi_dir: Path | None) -> Path | None:
    """The ROI mask of ``image_path`` in ``roi_dir`` (first of :data:`ROI_SUFFIXES`), or None."""
    if roi_dir is None:
        return None
    stem = Path(image_path).stem
    for suffix in ROI_SUFFIXES:
        candidate = Path(roi_dir) / f"{stem}{suffix}.png"
        if candidate.is_file():
            return candidate
    return None


def is_phantom(image_path: str) -> bool:
    """True when a ``synth.json`` (written by ``mammography synth``) sits in one of the image's three parent folders."""
    return any((parent / "synth.json").is_file() for parent in list(Path(image_path).parents)[:3])


def merge_manifest(table: pd.DataFrame, manifest: Path | None) -> pd.DataFrame:
    """Fill ``roi_path``, ``breast_mask_path``, ``artifact_bbox`` from a manifest, matched by ``image_path``."""
    if manifest is None:
        return table
    from mammography.data import load_manifest

    m = load_manifest(manifest)
    extra = [c for c in ("roi_path", "breast_mask_path", "artifact_bbox") if c in m.columns]
    if not extra:
        return table
    m = m.drop_duplicates("image_path").set_index(m["image_path"].map(lambda p: str(Path(p).resolve())))[extra]
    keys = table["image_path"].map(lambda p: str(Path(p).resolve()))
    out = table.copy()
    for c in extra:
        from_manifest = keys.map(m[c])
        out[c] = out[c].where(~out[c].map(is_missing), from_manifest) if c in out.columns else from_manifest
    return out


def select_rows(predictions: pd.DataFrame, manifest: Path | None, max_images: int | None
                ) -> tuple[pd.DataFrame, list[int]]:
    """The rows analysed (manifest columns merged in; the first ``max_images`` by path when given) and
    their positions in ``predictions``."""
    table = merge_manifest(predictions.reset_index(drop=True), manifest)
    if max_images is not None and len(table) > max_images:
        table = table.sort_values("image_path", kind="stable").head(max_images)
    return table.reset_index(drop=True), [int(i) for i in table.index]


def row_sources(row, image_path: str, roi_dir: Path | None) -> FactSources:
    """What the user supplied for one image: its row's mask files and box, else an ROI in ``roi_dir``."""
    roi = row.get("roi_path")
    roi_file = roi if not is_missing(roi) else find_roi(image_path, roi_dir)
    return FactSources.from_cells(row.get("breast_mask_path"), row.get("artifact_bbox"), roi_file)


def orientation_columns(row, prepared=None) -> dict | None:
    """Laterality and view of one image and where they came from: the run's predictions when they say
    (what training resolved), else as the image was prepared here (``prepared``; None: the caller must
    prepare the image and ask again)."""
    out = {}
    for key in ("laterality", "view"):
        stored, source = row.get(key), row.get(f"{key}_source")
        if not is_missing(stored) and not is_missing(source):
            out[key], out[f"{key}_source"] = str(stored), str(source)
        elif prepared is None:
            return None
        else:
            out[key], out[f"{key}_source"] = getattr(prepared, key, None), getattr(prepared, f"{key}_source", None)
    return out
