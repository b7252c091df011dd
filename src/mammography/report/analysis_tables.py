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

Means are followed by their 95 % bootstrap confidence interval in brackets
(on a line of its own in LaTeX, so the tables stay narrow enough for 7 pt
text) and every measure by its baseline: what a map without preference,
unrelated maps, chance or a random order would give. The LaTeX fragment
carries the layout macros of :mod:`mammography.report.texlayout` and needs
only graphicx; ``\\input`` it or paste it into a section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mammography.analysis.localisation import ATTENTION_THRESHOLD
from mammography.analysis.run_analysis import ConsistencyResult, RunAnalysis, run_labels
from mammography.report.tables import TextTable, format_percent, format_value
from mammography.report.latex import render_tables
from mammography.report.markdown import render_markdown_tables
from mammography.report.verdicts import chance_agreement, random_region_iou

__all__ = [
    "AnalysisTable",
    "AnalysisText",
    "analysis_tables",
    "render_analysis_tables",
]

_DASH = "\u2014"
#: the tables are :class:`~mammography.report.tables.TextTable` records (``key`` names each one)
AnalysisTable = TextTable


@dataclass(frozen=True)
class AnalysisText:
    """Rendered tables: a LaTeX fragment, a Markdown fragment and the records."""

    latex: str
    markdown: str
    tables: tuple[TextTable, ...]


def _ci(d: dict | None, digits: int = 2, sep: str = "\n") -> str:
    """``"0.41\\n[0.38, 0.44]"`` from a ``{mean, low, high}`` dict (the interval under the mean)."""
    if not d or d.get("mean") is None or not math.isfinite(float(d["mean"])):
        return _DASH
    if d.get("low") is None or d["low"] == d["high"]:
        return format_value(d["mean"], digits)
    return (f"{format_value(d['mean'], digits)}{sep}[{format_value(d['low'], digits)}, "
            f"{format_value(d['high'], digits)}]")


def prediction_columns(result: ConsistencyResult):
    """The (images, seeds) matrix of predicted classes of a cross-seed comparison."""
    return np.stack([result.table[f"pred_{lab}"].to_numpy() for lab in result.labels], axis=1)


def _consistency_table(result: ConsistencyResult) -> TextTable:
    s = result.summary
    th = s["thresholds"]
    reasons = s["reasons"]
    top = th["top_fraction"]
    rows = (
        ("Shared validation\nimages", str(s["n_images"]), _DASH),
        ("Same predicted class,\nall seeds", format_percent(s["prediction_agreement_rate"]),
         f"{format_percent(chance_agreement(prediction_columns(result)))}\n(chance)"),
        ("Rank correlation of the\nmaps (Spearman \u03c1)", _ci(s["mean_rank_correlation"]), "0\n(unrelated)"),
        (f"IoU of the top-{100 * top:.0f} %\nregions", _ci(s["mean_top_iou"]),
         f"{format_value(random_region_iou(top), 2)}\n(random)"),
        ("High agreement", f"{s['n_high_agreement']}\n({format_percent(s['high_agreement_rate'])})", _DASH),
        ("Review: predictions\ndiffer", str(reasons.get("predictions differ", 0)), _DASH),
        ("Review: attention in\ndifferent regions", str(reasons.get("attention in different regions", 0)), _DASH),
        ("Review: attention on\nan artefact", str(reasons.get("attention on an artefact", 0)), _DASH),
    )
    who = "seeds" if all(str(x).isdigit() for x in result.labels) else "runs"
    return TextTable(
        key="consistency",
        label="tab:attention-consistency",
        title="Cross-seed consistency",
        caption=(
            f"Cross-seed consistency of Grad-CAM over the validation images shared by {who} "
            f"{', '.join(result.labels)}: means over images of the mean over seed pairs, inside the breast, "
            f"[95 % CI]. Baselines: the agreement expected by chance from each seed's class frequencies, "
            f"\u03c1 = 0 for unrelated maps, and the IoU of two random regions of the same size. An image is "
            f"high agreement when all seeds predict the same class, every pair has \u03c1 \u2265 "
            f"{format_value(th['min_rank_correlation'], 2)} and IoU \u2265 {format_value(th['min_top_iou'], 2)}, "
            f"and no seed attends to a marker or the image border."
        ),
        headers=("Measure", "Value", "Baseline"),
        rows=rows,
    )


def _share_cell(entry: dict, digits: int) -> str:
    return f"{_ci(entry, digits)}\nuniform {format_value(entry['area'], digits)}"


def _spurious_table(analyses, labels) -> TextTable:
    rows = []
    summaries = [a.summary.get("spurious") for a in analyses]
    with_edges = any(s and "film_edge" in s for s in summaries)
    kinds = ("outside_breast", "border", "marker") + (("film_edge",) if with_edges else ())
    for label, s in zip(labels, summaries):
        if not s:
            continue
        cells = [label]
        for kind in kinds:
            k = s.get(kind)
            cells.append(_DASH if k is None else _share_cell(k, 3 if kind == "marker" else 2))
        marker = s["marker"]
        cells.append(_DASH if marker.get("occlusion_drop") is None else
                     f"{format_value(marker['occlusion_drop'], 2)}\n({format_percent(marker.get('dependence_rate'))})")
        cells.append(format_percent(s["image_flag_rate"]))
        cells.append("yes:\n" + ",\n".join(r.replace("_", "\n") for r in s["reasons"]) if s["flagged"] else "no")
        rows.append(tuple(cells))
    th = next((s["thresholds"] for s in summaries if s), {})
    return TextTable(
        key="spurious",
        label="tab:attention-spurious",
        title="Spurious attention",
        caption=(
            "Share of Grad-CAM mass outside the breast, in the border band (3 % of each image side), on "
            f"burned-in markers {'and on film-edge strips ' if with_edges else ''}found in the image: mean over "
            "validation images [95 % CI] and, below it, the share a uniform map (a map without preference) would "
            "get. Drop without markers: mean fall of the predicted class's probability when the markers are painted "
            "with the background (share of images above the threshold). Each image is judged against a uniform map "
            "on the same image, because the regions' areas differ from image to image (a digitised film is mostly "
            f"background): outside the breast and in the border band{' and on film edges' if with_edges else ''} by "
            "the odds ratio (share / (1 - share)) / (area / (1 - area)), which is 1 for a uniform map, and on "
            "markers by the enrichment share / area. An image is flagged when the odds ratio outside the breast "
            f"exceeds {format_value(th.get('outside_breast_ratio'), 1)}, in the border band "
            f"{format_value(th.get('border_ratio'), 1)}"
            + (f", on film edges {format_value(th.get('film_edge_ratio'), 1)}" if with_edges else "")
            + f", when its enrichment on markers exceeds {format_value(th.get('marker_enrichment'), 1)} or painting "
            f"the markers over lowers the predicted class's probability by more than "
            f"{format_value(th.get('marker_dependence'), 2)}; a run is flagged when more than "
            f"{format_percent(th.get('max_flag_rate'))} of its images are flagged for one kind or its mean ratio "
            "exceeds the threshold. Not being flagged does not mean the maps prefer the breast: compare each share "
            "with its uniform level."
        ),
        headers=(_first_header(labels), "Outside\nbreast", "Border\nband", "Markers",
                 *(("Film\nedges",) if with_edges else ()), "Drop without\nmarkers", "Images\nflagged", "Run\nflagged"),
        rows=tuple(rows),
    )


def _first_header(labels) -> str:
    return "Seed" if all(str(lab).isdigit() for lab in labels) else "Run"


def _group_label(label: str, group: str, many: bool) -> str:
    g = "all classes" if group == "all" else f"class {group}"
    return f"{label} \u00b7 {g}" if many else g


def roi_area(a: RunAnalysis, group: str) -> float:
    """Mean expert-region share of the image over the images of ``group`` (what a map without preference gets)."""
    t = a.table
    if "roi_area_share" not in t.columns:
        return math.nan
    if group != "all":
        t = t[t["y_true"].astype(str) == str(group)]
    values = t["roi_area_share"].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _localisation_table(analyses, labels) -> TextTable | None:
    rows = []
    many = sum(a.localisation is not None for a in analyses) > 1
    for label, a in zip(labels, analyses):
        if a.localisation is None:
            continue
        for rec in a.localisation.to_dict(orient="records"):
            cells = [_group_label(label, str(rec["group"]), many), str(int(rec["n_images"]))]
            for m in ("iou", "dice", "pointing_hit", "energy_pointing"):
                cells.append(_ci({"mean": rec[f"{m}_mean"], "low": rec[f"{m}_low"], "high": rec[f"{m}_high"]}))
            cells.append(format_value(roi_area(a, str(rec["group"])), 2))
            rows.append(tuple(cells))
    if not rows:
        return None
    thr = analyses[0].options.attention_threshold
    return TextTable(
        key="localisation",
        label="tab:attention-localisation",
        title="Localisation against the expert regions",
        caption=(
            f"Localisation of Grad-CAM against the expert regions of interest: IoU and Dice of the map "
            f"thresholded at {thr:.1f} with the region, pointing game (share of images whose map maximum lies "
            f"in the region) and energy pointing (share of the map's mass inside the region); mean [95 % CI]. "
            f"Region area: the region's mean share of the image, which is what a map without preference gets "
            f"in the pointing game and in energy pointing."
        ),
        headers=("Images", "n", "IoU", "Dice", "Pointing\ngame", "Energy\npointing", "Region\narea"),
        rows=tuple(rows),
    )


def trend_sentence(trend: dict) -> str:
    """The report's sentence for :func:`mammography.analysis.patterns.attention_trend` (number, baseline, verdict)."""
    means = {int(k): float(v) for k, v in trend["class_means"].items()}
    if len(means) < 2:
        return "Too few density classes among the images to judge whether attention widens with density."
    lo, hi = min(means), max(means)
    rho, p = trend["spearman_rho"], trend["spearman_p"]
    p_text = "p < 0.001" if (p is not None and math.isfinite(p) and p < 0.001) else f"p = {format_value(p, 3)}"
    verdict = "widens" if trend["widens"] else "does not clearly widen"
    return (
        f"Attention {verdict} from class {lo} to class {hi}: the share of the breast above {ATTENTION_THRESHOLD:.1f} "
        f"attention goes from {format_percent(means[lo])} to {format_percent(means[hi])} (Spearman \u03c1 = "
        f"{format_value(rho, 2)} against 0 for no trend, {p_text}; widening needs \u03c1 > 0 with p < 0.05)."
    )


def _patterns_table(analyses, labels) -> TextTable | None:
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
        notes.append(prefix + trend_sentence(p["trend"]))
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
    return TextTable(
        key="patterns",
        label="tab:attention-patterns",
        title="Attention per density class",
        caption=(
            f"Attention and dense tissue per density class ({how}): share of the Grad-CAM mass inside the "
            f"breast that falls on dense tissue, the dense share of the breast area (what a map without "
            f"preference would give), their difference (margin), and the share of the breast attended above "
            f"0.5; mean [95 % CI]."
        ),
        headers=("Images", "n", "Mass on\ndense tissue", "Dense area\n(uniform map)", "Margin", "Breast\nattended"),
        rows=tuple(rows),
        notes=tuple(notes),
    )


def _stages_text(stages) -> str:
    values = [format_value(st["mean_rank_correlation"], 2) for st in stages]
    lines = [" \u2192 ".join(values[k:k + 2]) for k in range(0, len(values), 2)]
    return " \u2192\n".join(lines)


def _faithfulness_table(analyses, labels) -> TextTable | None:
    rows = []
    for label, a in zip(labels, analyses):
        f = a.summary.get("faithfulness")
        s = a.summary.get("sanity")
        if not f and not s:
            continue
        cells = [label]
        if f:
            cells += [
                f"{_ci(f['deletion_auc'])}\nrandom {format_value(f['random_deletion_auc']['mean'], 2)}",
                f"{_ci(f['insertion_auc'])}\nrandom {format_value(f['random_insertion_auc']['mean'], 2)}",
                f"{format_percent(f['deletion_better_rate'])} /\n{format_percent(f['insertion_better_rate'])}",
            ]
        else:
            cells += [_DASH] * 3
        if s:
            cells += [_stages_text(s["stages"]), "passed" if s["passed"] else "failed"]
        else:
            cells += [_DASH, _DASH]
        rows.append(tuple(cells))
    if not rows:
        return None
    return TextTable(
        key="faithfulness",
        label="tab:attention-faithfulness",
        title="Faithfulness and sanity",
        caption=(
            "Faithfulness and sanity of Grad-CAM. Deletion: area under the class-probability curve as the "
            "most-attended pixels are blacked out first (lower is better); insertion: as they are restored onto "
            "a black image (higher is better); mean [95 % CI] and, below it, the same procedure in the order of "
            "a random map of the heatmap's resolution. Beats random: share of images where the map's order beats "
            "the random one (deletion / insertion). Randomisation: mean Spearman \u03c1 between the trained "
            "model's maps and the maps after re-initialising the head, then each of the last blocks in turn "
            "(1 = unchanged, 0 = unrelated); the check passes when the final \u03c1 is low."
        ),
        headers=(_first_header(labels), "Deletion\nAUC", "Insertion\nAUC", "Beats random\n(del. / ins.)",
                 "Randomisation\n\u03c1", "Sanity"),
        rows=tuple(rows),
    )


def analysis_tables(analyses: list[RunAnalysis], consistency: ConsistencyResult | None = None) -> tuple[TextTable, ...]:
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
    AnalysisText with ``latex`` (a stand-alone fragment: the layout macros and
    the tables with captions and ``\\label``s, for ``\\input``), ``markdown``
    (titled tables with captions and notes) and the table records.
    """
    tables = analysis_tables(analyses, consistency)
    return AnalysisText(latex=render_tables(tables), markdown=render_markdown_tables(tables), tables=tables)
