"""Figures of the attention analyses: cross-seed consistency and spurious-attention examples.

* :func:`consistency_figure` draws ``density_gradcam_consistency.png``: one
  row per image (the most consistent images first, then the least
  consistent), one column per seed; every tile is the mammogram with that
  seed's Grad-CAM and ``GT · Pred · confidence``; each row's header names the
  image and its note gives the pairwise similarity and the verdict.
* :func:`spurious_figure` draws example tiles of a run's images with the most
  attention on burned-in markers, the border band or outside the breast.

Both reuse :func:`mammography.report.figures.draw_grid`, so they share the
class-grid figures' look (300 dpi, one journal column, fonts of at least
6 pt) and render to identical bytes for identical inputs
(:func:`~mammography.report.figures.figure_png_bytes` strips the software
and date metadata).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mammography.analysis.consistency import HIGH_AGREEMENT
from mammography.analysis.consistency import select_extremes
from mammography.analysis.maps import normalise_map
from mammography.analysis.run_analysis import ConsistencyResult, RunAnalysis
from mammography.errors import ConfigError
from mammography.report.figures import FigureLayout, GridRow, draw_grid, figure_png_bytes
from mammography.report.overlay import DisplayTile
from mammography.report.tables import format_value

__all__ = [
    "CONSISTENCY_FIGURE",
    "SPURIOUS_FIGURE",
    "consistency_figure",
    "consistency_caption",
    "spurious_figure",
    "spurious_caption",
    "render_consistency_figure",
    "render_spurious_figure",
]

CONSISTENCY_FIGURE = "density_gradcam_consistency.png"
#: file name of a run's spurious-attention examples; ``{label}`` is the seed or run id
SPURIOUS_FIGURE = "density_gradcam_spurious_seed{label}.png"
_KIND_TEXT = {
    "marker": "on burned-in markers",
    "border": "in the border band",
    "outside_breast": "outside the breast",
    "film_edge": "on film-edge strips",
}


def _outlined(image: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """``image`` with the one-pixel boundary of ``region`` drawn in white."""
    if region is None or not region.any():
        return image
    from scipy import ndimage

    edge = region & ~ndimage.binary_erosion(region, border_value=0)
    out = image.copy()
    out[edge] = 1.0
    return out


def _tile(analysis: RunAnalysis, i: int, shape: tuple[int, int], region: np.ndarray | None = None) -> DisplayTile:
    row = analysis.table.iloc[i]
    return DisplayTile(
        image=_outlined(analysis.display_image(i, shape), region).astype(np.float32),
        heatmap=normalise_map(analysis.grid_map(i, shape)).astype(np.float32),
        y_true=int(row["y_true"]),
        y_pred=int(row["y_pred"]),
        confidence=float(row["confidence"]),
        image_path=str(row["image_path"]),
    )


def _runs_text(labels) -> str:
    """``"seeds 42, 43, 44"`` when the labels are seeds, else ``"runs a, b"``."""
    kind = "seeds" if all(str(lab).isdigit() for lab in labels) else "runs"
    return f"{kind} {', '.join(map(str, labels))}"


def _short_stem(path: str, limit: int = 18) -> str:
    """The file stem, shortened in the middle so a row header stays on one line."""
    stem = Path(path).stem
    return stem if len(stem) <= limit else f"{stem[: limit // 2 - 1]}\u2026{stem[-(limit // 2):]}"


def _reasons_text(rec) -> str:
    return ", ".join(r for r in str(rec["reasons"]).split(";") if r and r != "nan")


def _row_note(rec) -> str:
    verdict = "high agreement" if rec["agreement"] == HIGH_AGREEMENT else "review"
    rho = rec["mean_rank_correlation"]
    iou = rec["mean_top_iou"]
    rho_text = "\u2014" if not np.isfinite(rho) else f"{rho:.2f}"
    iou_text = "\u2014" if not np.isfinite(iou) else f"{iou:.2f}"
    return f"\u03c1 {rho_text} \u00b7 IoU {iou_text} \u00b7 {verdict}"


def consistency_figure(
    result: ConsistencyResult,
    n: int = 3,
    *,
    colormap: str = "jet",
    alpha: float = 0.4,
    title: str | None = None,
) -> tuple[Figure, FigureLayout]:
    """Rows = the ``n`` most and ``n`` least consistent shared images, columns = runs (seeds).

    Parameters
    ----------
    result : :func:`mammography.analysis.compare_runs` output (it keeps the analyses).
    n : images per group (fewer when fewer images are shared).
    colormap, alpha : heatmap colour map and blend weight.
    title : figure title (default names the seeds).

    Returns
    -------
    (figure, layout); each row's ``key`` is ``("most" | "least", image_path)``.
    """
    if not result.analyses:
        raise ConfigError("this consistency result carries no run analyses to draw from")
    most, least = select_extremes(result.table, n)
    by_path = result.table.set_index("image_path")
    rows = []
    for group, paths in (("most", most), ("least", least)):
        for k, path in enumerate(paths):
            first = result.analyses[0]
            shape = first.grid_shape(first.index_of(path))
            cells = [_tile(a, a.index_of(path), shape) for a in result.analyses]
            # short: header (left) and note (right) share one line of a one-column figure
            title_group = "Most" if group == "most" else "Least"
            rows.append(
                GridRow(
                    header=f"{title_group} {k + 1} \u00b7 {_short_stem(path)}",
                    cells=cells,
                    note=_row_note(by_path.loc[path]),
                    key=(group, path),
                )
            )
    if not rows:
        raise ConfigError("no shared images to draw")
    labels = result.labels
    headers = [f"seed {lab}" if lab.isdigit() else lab for lab in labels]
    title = title or f"Grad-CAM across {_runs_text(labels)}: most and least consistent validation images"
    return draw_grid(
        rows,
        title=title,
        n_columns=len(labels),
        colormap=colormap,
        alpha=alpha,
        column_headers=headers,
    )


def consistency_caption(result: ConsistencyResult, n: int = 3) -> str:
    """Plain-text caption of :func:`consistency_figure` with the summary numbers and each row's reasons."""
    s = result.summary
    th = s["thresholds"]
    most, least = select_extremes(result.table, n)
    by_path = result.table.set_index("image_path")
    rho = s["mean_rank_correlation"]
    iou = s["mean_top_iou"]
    review = [
        f"least consistent {k + 1} ({Path(p).stem}): {_reasons_text(by_path.loc[p])}"
        for k, p in enumerate(least)
        if _reasons_text(by_path.loc[p])
    ]
    return (
        f"Grad-CAM of the same validation images under the models of {_runs_text(result.labels)} (columns). "
        f"Top {len(most)} rows: the most consistent images; bottom {len(least)} rows: the least consistent. "
        f"Row notes give the mean pairwise Spearman rank correlation of the maps (\u03c1, inside the breast) and "
        f"the mean IoU of their top-{100 * th['top_fraction']:.0f} % regions. An image needs review when the "
        f"predictions differ, a pair of maps has \u03c1 < {th['min_rank_correlation']:.2f} or IoU < "
        f"{th['min_top_iou']:.2f} (attention in different regions), or a model attends to a marker or the image "
        f"border (attention on an artefact)"
        + (f"; reasons: {'; '.join(review)}" if review else "")
        + f". Over all {s['n_images']} shared images the models agree on the class for "
        f"{100 * s['prediction_agreement_rate']:.0f} %, mean \u03c1 = {format_value(rho['mean'], 2)} "
        f"(95 % CI {format_value(rho['low'], 2)} to {format_value(rho['high'], 2)}), "
        f"mean IoU = {format_value(iou['mean'], 2)}, and "
        f"{s['n_high_agreement']} images ({100 * s['high_agreement_rate']:.0f} %) are high agreement."
    )


def _region(analysis: RunAnalysis, i: int, kind: str) -> np.ndarray:
    """The region of ``kind`` on image ``i``'s grid, for outlining."""
    from mammography.analysis.spurious import border_band

    regions = analysis.regions[i]
    if kind == "marker":
        return regions.markers()
    if kind == "border":
        return border_band(regions.shape, analysis.options.border_fraction)
    if kind == "film_edge":
        return regions.film_edges()
    return regions.breast()


def _label(analysis: RunAnalysis, label: str | None) -> str:
    return label if label is not None else str(analysis.seed if analysis.seed is not None else analysis.run_id)


def _run_name(label: str) -> str:
    return f"seed {label}" if label.isdigit() else f"run {label}"


def spurious_figure(
    analysis: RunAnalysis,
    n: int = 4,
    kinds=None,
    *,
    label: str | None = None,
    colormap: str = "jet",
    alpha: float = 0.4,
    title: str | None = None,
) -> tuple[Figure, FigureLayout]:
    """Example tiles of the images with the most spurious attention.

    Parameters
    ----------
    analysis : a :class:`RunAnalysis`.
    n : tiles per row.
    kinds : which regions get a row (``"marker"``, ``"border"``,
        ``"outside_breast"``); default the kinds the run is flagged for, or
        ``["marker"]`` when it is not flagged. The region is outlined in white
        (for ``outside_breast`` the breast's edge).
    label : the run's name in the title (default: its seed, else its run id).
    colormap, alpha, title : as in :func:`consistency_figure`.

    Returns
    -------
    (figure, layout); row keys are the kinds.
    """
    summary = analysis.summary.get("spurious") or {}
    kinds = list(kinds or summary.get("reasons") or ["marker"])
    rows = []
    for kind in kinds:
        column = f"{kind}_share"
        if column not in analysis.table.columns:
            raise ConfigError(
                f"unknown spurious-attention kind {kind!r}; use marker, border, outside_breast or film_edge"
            )
        shares = analysis.table[column].to_numpy(dtype=float)
        order = np.lexsort((analysis.table["image_path"].astype(str).to_numpy(), -np.nan_to_num(shares, nan=-1.0)))
        chosen = [int(i) for i in order[:n] if np.isfinite(shares[i])]
        cells = [_tile(analysis, i, analysis.grid_shape(i), _region(analysis, i, kind)) for i in chosen]
        note = "shares " + " / ".join(f"{shares[i]:.2f}" for i in chosen) if chosen else ""
        rows.append(GridRow(header=f"Most attention {_KIND_TEXT[kind]}", cells=cells, note=note,
                            message="no images", key=kind))
    title = title or f"Spurious attention, {_run_name(_label(analysis, label))}: images with the highest share of heatmap mass"
    return draw_grid(rows, title=title, n_columns=n, colormap=colormap, alpha=alpha)


def spurious_caption(analysis: RunAnalysis, kinds=None, label: str | None = None) -> str:
    """Plain-text caption of :func:`spurious_figure`."""
    s = analysis.summary["spurious"]
    kinds = list(kinds or s.get("reasons") or ["marker"])
    parts = []
    for kind in kinds:
        k = s[kind]
        if kind == "marker":
            level = (f"mean share {format_value(k['mean'], 3)}, {format_value(k.get('enrichment'), 1)} times the "
                     f"markers' area share (threshold {format_value(k['threshold'], 1)} times)")
            if k.get("occlusion_drop") is not None:
                level += (f"; painting the markers over lowers the predicted class's probability by "
                          f"{format_value(k['occlusion_drop'], 2)} on average")
        else:
            level = (f"mean share {format_value(k['mean'], 2)} (uniform map: {format_value(k['area'], 2)}), "
                     f"odds ratio against a uniform map {format_value(k.get('ratio'), 1)} on average "
                     f"(threshold {format_value(k['threshold'], 1)})")
        parts.append(f"{_KIND_TEXT[kind]}: {level}, {100 * k['image_flag_rate']:.0f} % of images flagged")
    verdict = "flagged" if s["flagged"] else "not flagged"
    return (
        f"Validation images of the {_run_name(_label(analysis, label))} model with the largest share of Grad-CAM "
        f"mass (white outline: the region measured) "
        + "; ".join(parts)
        + f". The run is {verdict} for spurious attention."
    )


def render_consistency_figure(result: ConsistencyResult, n: int = 3, **kwargs) -> tuple[bytes, FigureLayout, str]:
    """PNG bytes (300 dpi, no metadata), layout and caption of :func:`consistency_figure`."""
    fig, layout = consistency_figure(result, n, **kwargs)
    return figure_png_bytes(fig), layout, consistency_caption(result, n)


def render_spurious_figure(
    analysis: RunAnalysis, n: int = 4, kinds=None, label: str | None = None, **kwargs
) -> tuple[bytes, FigureLayout, str]:
    """PNG bytes, layout and caption of :func:`spurious_figure`."""
    fig, layout = spurious_figure(analysis, n, kinds, label=label, **kwargs)
    return figure_png_bytes(fig), layout, spurious_caption(analysis, kinds, label)
