"""Tables of the attention analyses, as LaTeX and Markdown from one set of rows.

:func:`analysis_tables` turns run analyses (and a cross-seed comparison) into
:class:`AnalysisTable` records; :func:`render_analysis_tables` renders them
with the Jinja2 templates ``templates/analysis_tables.tex.j2`` and
``templates/analysis_tables.md.j2``, so the article and the Markdown always
show the same numbers. Tables:

* ``consistency`` - cross-seed agreement (when two or more runs share images);
* ``spurious`` - share of heatmap mass outside the breast, in the border band
  and on markers, per run, with the uniform-map level and the flag;
* ``localisation`` - IoU, Dice, pointing game and energy pointing against
  the expert regions, per run and class (when ROIs exist);
* ``patterns`` - dense-tissue attention and attended breast share per class,
  with the widening verdict;
* ``faithfulness`` - deletion/insertion AUCs against a random order and the
  randomisation check (when computed).

Means are followed by their 95 % bootstrap confidence interval in brackets.
The LaTeX fragment needs no package beyond what the density section already
uses; ``\\input`` it or paste it into a section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


from mammography.analysis.run_analysis import ConsistencyResult, RunAnalysis, run_labels
from mammography.report.latex import latex_environment
from mammography.report.markdown import markdown_environment
from mammography.report.tables import format_percent, format_value

__all__ = [
    "AnalysisTable",
    "AnalysisText",
    "TABLE_FILES",
    "analysis_tables",
    "render_analysis_tables",
    "analysis_report_files",
    "write_analysis_report",
]

_DASH = "\u2014"


@dataclass(frozen=True)
class AnalysisTable:
    """One table: plain-text (Unicode) cells, escaped by each renderer.

    Attributes
    ----------
    key : ``consistency``, ``spurious``, ``localisation``, ``patterns`` or ``faithfulness``.
    label : LaTeX label (``tab:attention-<key>``).
    caption : caption text.
    headers : column headers, the first one heads the row labels.
    rows : rows of cells (first cell = row label).
    notes : sentences printed under the table.
    """

    key: str
    label: str
    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class AnalysisText:
    """Rendered tables: a LaTeX fragment, a Markdown fragment and the records."""

    latex: str
    markdown: str
    tables: tuple[AnalysisTable, ...]


def _ci(d: dict | None, digits: int = 2) -> str:
    """``"0.41 [0.38, 0.44]"`` from a ``{mean, low, high}`` dict."""
    if not d or d.get("mean") is None or not math.isfinite(float(d["mean"])):
        return _DASH
    if d.get("low") is None or d["low"] == d["high"]:
        return format_value(d["mean"], digits)
    return f"{format_value(d['mean'], digits)} [{format_value(d['low'], digits)}, {format_value(d['high'], digits)}]"


def _consistency_table(result: ConsistencyResult) -> AnalysisTable:
    s = result.summary
    th = s["thresholds"]
    n = s["n_images"]
    reasons = s["reasons"]
    rows = (
        ("Shared validation images", str(n)),
        ("Same predicted class (all seeds)", format_percent(s["prediction_agreement_rate"])),
        ("Rank correlation of maps (Spearman \u03c1)", _ci(s["mean_rank_correlation"])),
        (f"IoU of top-{100 * th['top_fraction']:.0f} % regions", _ci(s["mean_top_iou"])),
        ("High agreement", f"{s['n_high_agreement']} ({format_percent(s['high_agreement_rate'])})"),
        ("Review: predictions differ", str(reasons.get("predictions differ", 0))),
        ("Review: attention in different regions", str(reasons.get("attention in different regions", 0))),
        ("Review: attention on an artefact", str(reasons.get("attention on an artefact", 0))),
    )
    return AnalysisTable(
        key="consistency",
        label="tab:attention-consistency",
        caption=(
            f"Cross-seed consistency of Grad-CAM over the validation images shared by "
            f"{'seeds' if all(str(x).isdigit() for x in result.labels) else 'runs'} {', '.join(result.labels)}. "
            f"Similarities are means over images of the mean over seed pairs, "
            f"inside the breast; an image is high agreement when all seeds predict the same class, every pair "
            f"has \u03c1 \u2265 {th['min_rank_correlation']:.2f} and IoU \u2265 {th['min_top_iou']:.2f}, and "
            f"no seed attends to a marker or the image border."
        ),
        headers=("Measure", "Value"),
        rows=rows,
    )


def _spurious_table(analyses, labels) -> AnalysisTable:
    rows = []
    summaries = [a.summary.get("spurious") for a in analyses]
    with_edges = any(s and "film_edge" in s for s in summaries)
    kinds = ("outside_breast", "border", "marker") + (("film_edge",) if with_edges else ())
    for label, s in zip(labels, summaries):
        if not s:
            continue
        cells = [label]
        for kind in kinds:
            digits = 3 if kind == "marker" else 2
            k = s.get(kind)
            cells.append(_DASH if k is None else f"{_ci(k, digits)} ({format_value(k['area'], digits)})")
        marker = s["marker"]
        cells.append(_DASH if marker.get("occlusion_drop") is None else
                     f"{format_value(marker['occlusion_drop'], 2)} ({format_percent(marker.get('dependence_rate'))})")
        cells.append(format_percent(s["image_flag_rate"]))
        cells.append("yes: " + ", ".join(r.replace("_", " ") for r in s["reasons"]) if s["flagged"] else "no")
        rows.append(tuple(cells))
    th = next((s["thresholds"] for s in summaries if s), {})
    return AnalysisTable(
        key="spurious",
        label="tab:attention-spurious",
        caption=(
            "Share of Grad-CAM mass outside the breast, in the border band (3 % of each image side), on "
            f"burned-in markers {'and on film-edge strips ' if with_edges else ''}found in the image, mean over "
            "validation images [95 % CI]; in parentheses the share a uniform map would get. Drop without markers: "
            "mean fall of the predicted class's probability when the markers are painted with the background (share "
            "of images above the threshold). Each image is judged against a uniform map on the same image, because "
            "the regions' areas differ from image to image (a digitised film is mostly background): outside the "
            f"breast and in the border band{' and on film edges' if with_edges else ''} by the odds ratio "
            "(share / (1 - share)) / (area / (1 - area)), which is 1 for a uniform map, and on markers by the "
            "enrichment share / area. An image is flagged when the odds ratio outside the breast exceeds "
            f"{format_value(th.get('outside_breast_ratio'), 1)}, in the border band "
            f"{format_value(th.get('border_ratio'), 1)}"
            + (f", on film edges {format_value(th.get('film_edge_ratio'), 1)}" if with_edges else "")
            + f", when its enrichment on markers exceeds {format_value(th.get('marker_enrichment'), 1)} or painting "
            f"the markers over lowers the predicted class's probability by more than "
            f"{format_value(th.get('marker_dependence'), 2)}; a run is flagged when more than "
            f"{format_percent(th.get('max_flag_rate'))} of its images are flagged for one kind or its mean ratio "
            "exceeds the threshold."
        ),
        headers=(_first_header(labels), "Outside breast", "Border band", "Markers",
                 *(("Film edges",) if with_edges else ()), "Drop without markers", "Images flagged", "Run flagged"),
        rows=tuple(rows),
    )


def _first_header(labels) -> str:
    return "Seed" if all(str(lab).isdigit() for lab in labels) else "Run"


def _group_label(label: str, group: str, many: bool) -> str:
    g = "all classes" if group == "all" else f"class {group}"
    return f"{label} \u00b7 {g}" if many else g


def _localisation_table(analyses, labels) -> AnalysisTable | None:
    rows = []
    many = sum(a.localisation is not None for a in analyses) > 1
    for label, a in zip(labels, analyses):
        if a.localisation is None:
            continue
        for rec in a.localisation.to_dict(orient="records"):
            cells = [_group_label(label, str(rec["group"]), many), str(int(rec["n_images"]))]
            for m in ("iou", "dice", "pointing_hit", "energy_pointing"):
                cells.append(_ci({"mean": rec[f"{m}_mean"], "low": rec[f"{m}_low"], "high": rec[f"{m}_high"]}))
            rows.append(tuple(cells))
    if not rows:
        return None
    thr = analyses[0].options.attention_threshold
    return AnalysisTable(
        key="localisation",
        label="tab:attention-localisation",
        caption=(
            f"Localisation of Grad-CAM against the expert regions of interest: IoU and Dice of the map "
            f"thresholded at {thr:.1f} with the region, pointing game (share of images whose map maximum lies "
            f"in the region) and energy pointing (share of the map's mass inside the region); mean [95 % CI]."
        ),
        headers=("Images", "n", "IoU", "Dice", "Pointing game", "Energy pointing"),
        rows=tuple(rows),
    )


def _patterns_table(analyses, labels) -> AnalysisTable | None:
    rows, notes = [], []
    many = len(analyses) > 1
    for label, a in zip(labels, analyses):
        p = a.summary.get("patterns")
        if not p:
            continue
        for rec in p["by_class"]:
            cells = [_group_label(label, str(rec["group"]), many), str(int(rec["n_images"]))]
            for m in ("dense_mass_share", "dense_area_share", "dense_margin", "attended_breast_share"):
                cells.append(_ci({"mean": rec[f"{m}_mean"], "low": rec[f"{m}_low"], "high": rec[f"{m}_high"]}))
            rows.append(tuple(cells))
        prefix = f"Seed {label}: " if many else ""
        notes.append(prefix + p["trend"]["statement"])
    if not rows:
        return None
    source = {a.summary.get("dense_source") for a in analyses}
    how = (
        "the phantoms' known dense-tissue masks"
        if source == {"roi"}
        else "dense tissue estimated as breast pixels above Otsu's threshold"
        if source == {"estimate"}
        else "known dense-tissue masks where available, else an intensity estimate"
    )
    return AnalysisTable(
        key="patterns",
        label="tab:attention-patterns",
        caption=(
            f"Attention and dense tissue per density class ({how}): share of the Grad-CAM mass inside the "
            f"breast that falls on dense tissue, the dense share of the breast area (what a uniform map would "
            f"give), their difference (margin), and the share of the breast attended above 0.5; mean [95 % CI]."
        ),
        headers=("Images", "n", "Mass on dense tissue", "Dense area", "Margin", "Breast attended"),
        rows=tuple(rows),
        notes=tuple(notes),
    )


def _faithfulness_table(analyses, labels) -> AnalysisTable | None:
    rows = []
    for label, a in zip(labels, analyses):
        f = a.summary.get("faithfulness")
        s = a.summary.get("sanity")
        if not f and not s:
            continue
        cells = [label]
        if f:
            cells += [
                f"{_ci(f['deletion_auc'])} vs {format_value(f['random_deletion_auc']['mean'], 2)}",
                f"{_ci(f['insertion_auc'])} vs {format_value(f['random_insertion_auc']['mean'], 2)}",
                f"{format_percent(f['deletion_better_rate'])} / {format_percent(f['insertion_better_rate'])}",
            ]
        else:
            cells += [_DASH] * 3
        if s:
            stages = " \u2192 ".join(format_value(st["mean_rank_correlation"], 2) for st in s["stages"])
            cells += [stages, "passed" if s["passed"] else "failed"]
        else:
            cells += [_DASH, _DASH]
        rows.append(tuple(cells))
    if not rows:
        return None
    return AnalysisTable(
        key="faithfulness",
        label="tab:attention-faithfulness",
        caption=(
            "Faithfulness and sanity of Grad-CAM. Deletion: area under the class-probability curve as the "
            "most-attended pixels are blacked out first (lower is better), insertion: as they are restored onto a "
            "black image (higher is better), each against the same procedure in the order of a random map of the "
            "heatmap's resolution, and the share of images where the map beats random order (deletion / insertion). Randomisation: mean "
            "Spearman \u03c1 between the trained model's maps and the maps after re-initialising the head, then "
            "each of the last blocks in turn; the check passes when the final \u03c1 is low."
        ),
        headers=(_first_header(labels), "Deletion AUC vs random", "Insertion AUC vs random", "Beats random",
                 "Randomisation \u03c1", "Sanity"),
        rows=tuple(rows),
    )


def analysis_tables(analyses: list[RunAnalysis], consistency: ConsistencyResult | None = None) -> tuple[AnalysisTable, ...]:
    """The tables that have data, in report order (consistency, spurious, localisation, patterns, faithfulness)."""
    analyses = list(analyses)
    labels = consistency.labels if consistency is not None and len(consistency.analyses) == len(analyses) else (
        run_labels(analyses) if len(analyses) > 1 else [str(a.seed if a.seed is not None else a.run_id) for a in analyses]
    )
    out = []
    if consistency is not None:
        out.append(_consistency_table(consistency))
    if analyses:
        out.append(_spurious_table(analyses, labels))
    for build in (_localisation_table, _patterns_table, _faithfulness_table):
        t = build(analyses, labels)
        if t is not None:
            out.append(t)
    return tuple(out)


def render_analysis_tables(analyses: list[RunAnalysis], consistency: ConsistencyResult | None = None) -> AnalysisText:
    """LaTeX and Markdown fragments of :func:`analysis_tables`.

    Returns
    -------
    AnalysisText with ``latex`` (tables with captions and ``\\label``s, for
    ``\\input``), ``markdown`` (headed tables with captions and notes) and the
    table records.
    """
    tables = analysis_tables(analyses, consistency)
    latex = latex_environment().get_template("analysis_tables.tex.j2").render(tables=tables)
    markdown = markdown_environment().get_template("analysis_tables.md.j2").render(tables=tables)
    return AnalysisText(latex=latex, markdown=markdown, tables=tables)


#: file names of the rendered tables written by :func:`write_analysis_report`
TABLE_FILES = {"latex": "attention_tables.tex", "markdown": "attention_tables.md"}


def analysis_report_files(
    analyses: list[RunAnalysis],
    consistency: ConsistencyResult | None = None,
    labels: list[str] | None = None,
    *,
    figures: bool = True,
    n_consistency: int = 3,
    n_spurious: int = 4,
    colormap: str = "jet",
    alpha: float = 0.4,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Figures and tables of the analyses as file contents, for an all-or-nothing batch.

    Returns
    -------
    (files, captions): ``files`` maps a file name to its bytes:
    ``density_gradcam_consistency.png`` (when ``consistency`` is given),
    ``density_gradcam_spurious_seed{label}.png`` per run with images,
    ``attention_tables.tex`` and ``attention_tables.md``; ``captions`` maps
    each figure's name to its caption.
    """
    from mammography.report.consistency_figure import (
        CONSISTENCY_FIGURE,
        SPURIOUS_FIGURE,
        render_consistency_figure,
        render_spurious_figure,
    )

    labels = labels or (run_labels(analyses) if len(analyses) > 1 else
                        [str(a.seed if a.seed is not None else a.run_id) for a in analyses])
    files: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    if figures and consistency is not None:
        png, _, caption = render_consistency_figure(consistency, n_consistency, colormap=colormap, alpha=alpha)
        files[CONSISTENCY_FIGURE], captions[CONSISTENCY_FIGURE] = png, caption
    if figures:
        for label, analysis in zip(labels, analyses):
            if len(analysis.table):
                name = SPURIOUS_FIGURE.format(label=label)
                png, _, caption = render_spurious_figure(analysis, n_spurious, label=label, colormap=colormap,
                                                         alpha=alpha)
                files[name], captions[name] = png, caption
    text = render_analysis_tables(analyses, consistency)
    files[TABLE_FILES["latex"]] = text.latex.encode("utf-8")
    files[TABLE_FILES["markdown"]] = text.markdown.encode("utf-8")
    return files, captions


def write_analysis_report(
    result,
    *,
    figures: bool = True,
    n_consistency: int = 3,
    n_spurious: int = 4,
    colormap: str = "jet",
    alpha: float = 0.4,
    journal=None,
    with_analysis: bool = False,
) -> list:
    """Write :func:`analysis_report_files` of an :class:`~mammography.analysis.run_analysis.AnalyzeResult`
    into ``result.out_dir``; the paths are returned and appended to ``result.written``.

    With ``with_analysis`` the analysis files themselves (``result.files()``,
    from ``analyze_runs(..., write=False)``) are written in the same
    all-or-nothing commit; ``journal`` is the commit journal of the output
    folder's :class:`~mammography.atomic.OutputLock`, which the caller holds.
    """
    from mammography.atomic import FileBatch

    files, _ = analysis_report_files(
        result.analyses, result.consistency, result.labels, figures=figures, n_consistency=n_consistency,
        n_spurious=n_spurious, colormap=colormap, alpha=alpha,
    )
    batch = FileBatch()
    for path, data in (result.files() if with_analysis else {}).items():
        batch.add(path, data)
    for name, data in files.items():
        batch.add(result.out_dir / name, data)
    written = batch.commit(journal)
    result.written.extend(written)
    return written
