"""Figures of the attention analyses: cross-seed consistency and spurious-attention examples.

* :func:`consistency_figure` draws ``density_gradcam_consistency.png``: one
  column per image (the most consistent images first, then the least
  consistent), one row per seed, so the figure is wide and short and fits
  one page (the text width of a two-column article); every tile is the
  mammogram with that seed's Grad-CAM and ``GT · Pred · confidence``; each
  column header names the image, the pairwise similarity and the verdict.
* :func:`spurious_figure` draws example tiles of a run's images with the most
  attention on burned-in markers, the border band or outside the breast.

Both reuse :func:`mammography.report.figures.draw_grid`, so they share the
class-grid figures' look (300 dpi, fonts of at least 6 pt, misclassified
tiles framed in red) and render to identical bytes for identical inputs
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
from mammography.report.figures import ERROR_LEGEND, FigureLayout, GridRow, draw_grid, figure_png_bytes
from mammography.report.overlay import DisplayTile
from mammography.report.tables import format_percent, format_value

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
    """Two lines: ``ρ 0.91 · IoU 0.78`` and the verdict."""
    verdict = "high agreement" if rec["agreement"] == HIGH_AGREEMENT else "review"
    return (f"\u03c1 {format_value(rec['mean_rank_correlation'], 2)} \u00b7 IoU "
            f"{format_value(rec['mean_top_iou'], 2)}\n{verdict}")


def consistency_figure(
    result: ConsistencyResult,
    n: int = 3,
    *,
    colormap: str = "jet",
    alpha: float = 0.4,
    title: str | None = None,
) -> tuple[Figure, FigureLayout]:
    """Columns = the ``n`` most and ``n`` least consistent shared images, rows = runs (seeds).

    Shaped to fit a page: one row per seed and one column per image, so the
    figure spans the text width of a two-column article instead of running
    down one column. Each column header names the image (``Most 1`` ...,
    ``Least 1`` ...), gives the pairwise similarity and the verdict.

    Parameters
    ----------
    result : :func:`mammography.analysis.compare_runs` output (it keeps the analyses).
    n : images per group (fewer when fewer images are shared).
    colormap, alpha : heatmap colour map and blend weight.
    title : figure title (default names the seeds).

    Returns
    -------
    (figure, layout); each row's ``key`` is the run's label, ``layout.column_headers``
    the column texts; the image of column ``j`` is ``image_order(result, n)[j]``.
    """
    if not result.analyses:
        raise ConfigError("this consistency result carries no run analyses to draw from")
    columns = image_order(result, n)
    if not columns:
        raise ConfigError("no shared images to draw")
    by_path = result.table.set_index("image_path")
    first = result.analyses[0]
    shapes = {path: first.grid_shape(first.index_of(path)) for _, _, path in columns}
    headers = [f"{'Most' if group == 'most' else 'Least'} {k + 1} \u00b7 {_short_stem(path)}\n"
               f"{_row_note(by_path.loc[path])}" for group, k, path in columns]
    rows = []
    for label, analysis in zip(result.labels, result.analyses):
        cells = [_tile(analysis, analysis.index_of(path), shapes[path]) for _, _, path in columns]
        rows.append(GridRow(header=f"seed {label}" if str(label).isdigit() else str(label), cells=cells, key=label))
    title = title or f"Grad-CAM across {_runs_text(result.labels)}: most and least consistent validation images"
    return draw_grid(
        rows,
        title=title,
        n_columns=len(columns),
        colormap=colormap,
        alpha=alpha,
        column_headers=headers,
    )


def image_order(result: ConsistencyResult, n: int = 3) -> list[tuple[str, int, str]]:
    """The consistency figure's columns: ``(group, rank, image_path)``, the most consistent first."""
    most, least = select_extremes(result.table, n)
    return [("most", k, p) for k, p in enumerate(most)] + [("least", k, p) for k, p in enumerate(least)]


def consistency_caption(result: ConsistencyResult, n: int = 3) -> str:
    """Plain-text caption of :func:`consistency_figure`: how to read it, each review reason, the summary numbers
    with their baselines, and the legend of the marks."""
    from mammography.report.analysis_tables import prediction_columns
    from mammography.report.verdicts import chance_agreement, random_region_iou

    s = result.summary
    th = s["thresholds"]
    most, least = select_extremes(result.table, n)
    by_path = result.table.set_index("image_path")
    rho = s["mean_rank_correlation"]
    iou = s["mean_top_iou"]
    review = [f"least {k + 1}: {_reasons_text(by_path.loc[p])}" for k, p in enumerate(least)
              if _reasons_text(by_path.loc[p])]
    return (
        f"Grad-CAM of the same validation images under the models of {_runs_text(result.labels)} (rows). "
        f"Left {len(most)} columns: the most consistent images; right {len(least)}: the least consistent. "
        f"Column headers give the mean pairwise Spearman rank correlation of the maps (\u03c1, inside the breast), "
        f"the mean IoU of their top-{100 * th['top_fraction']:.0f} % regions and the verdict; an image needs "
        f"review when the predictions differ, a pair of maps has \u03c1 < "
        f"{format_value(th['min_rank_correlation'], 2)} or IoU < {format_value(th['min_top_iou'], 2)}, or a model attends to a marker or the image border"
        + (f" ({'; '.join(review)})" if review else "")
        + f". Over all {s['n_images']} shared images the models agree on the class for "
        f"{format_percent(s['prediction_agreement_rate'])} (chance: "
        f"{format_percent(chance_agreement(prediction_columns(result)))}), "
        f"mean \u03c1 = {format_value(rho['mean'], 2)} "
        f"(95 % CI {format_value(rho['low'], 2)} to {format_value(rho['high'], 2)}; unrelated maps: 0), mean IoU = "
        f"{format_value(iou['mean'], 2)} (random regions: {format_value(random_region_iou(th['top_fraction']), 2)}). "
        f"Marks: {ERROR_LEGEND}."
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
        + f". The run is {verdict} for spurious attention. Marks: {ERROR_LEGEND}."
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
