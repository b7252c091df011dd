"""The attention analysis inside ``report-pack``: consistency, spurious attention, localisation, patterns.

report-pack computes each seed run's Grad-CAM maps once (for its figures);
:func:`analyse_runs` hands the same maps and probabilities to
:func:`mammography.analysis.analyze_maps`, so the analysis adds no second
CAM pass (only a forward pass per image with burned-in markers, to measure
how much the prediction depends on them, and the optional faithfulness and
randomisation checks). :func:`attention_outputs` turns the analyses into the
pack's files and an :class:`~mammography.report.content.AttentionEntry` for
the LaTeX section and the Markdown block.

Files (``assets`` = the assets folder)::

    assets/consistency.csv, assets/consistency_summary.json   two or more seeds sharing images
    assets/density_gradcam_consistency.png                    the same
    assets/density_gradcam_spurious_seed{SEED}.png             runs flagged for spurious attention
    assets/attention/seed{SEED}/attention_per_image.csv, attention_summary.json, attention_maps.npz,
        patterns_by_class.csv, localisation_by_class.csv (with ROIs),
        faithfulness_per_image.csv (with --faithfulness)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from mammography.analysis.run_analysis import AnalysisOptions, ConsistencyResult, RunAnalysis
from mammography.report.content import AttentionEntry, FigureRef
from mammography.report.figures import COLUMN_WIDTH_IN
from mammography.report.tables import format_percent, format_value

__all__ = ["AttentionSettings", "analysis_options", "analyse_runs", "attention_outputs", "attention_sentences"]

log = logging.getLogger(__name__)

#: examples per row of the consistency figure (most / least consistent) and of a spurious figure
N_CONSISTENCY = 3
N_SPURIOUS = 4


@dataclass(frozen=True)
class AttentionSettings:
    """What report-pack's analysis needs besides the maps (the report-pack flags of the analysis).

    Attributes
    ----------
    roi_dir : folder of expert-region masks named after the images (localisation).
    manifest : manifest CSV whose ``roi_path`` / ``breast_mask_path`` / ``artifact_bbox``
        fill in what the runs' predictions lack.
    faithfulness : also run deletion/insertion and the randomisation sanity check.
    faithfulness_images : images per run for those checks (a seeded sample).
    """

    roi_dir: Path | None = None
    manifest: Path | None = None
    faithfulness: bool = False
    faithfulness_images: int = 16


def analysis_options(settings: AttentionSettings, *, method: str, layer: str, batch_size: int,
                     device: str, cache_dir: Path | None, progress: bool) -> AnalysisOptions:
    """The :class:`AnalysisOptions` of one report pack (analysis defaults otherwise)."""
    return AnalysisOptions(
        method=method, layer=layer, batch_size=batch_size, device=device, cache_dir=cache_dir,
        roi_dir=settings.roi_dir, manifest=settings.manifest, faithfulness=settings.faithfulness,
        faithfulness_images=settings.faithfulness_images, sanity=settings.faithfulness,
        sanity_images=max(1, settings.faithfulness_images // 2), progress=progress,
    )


def analyse_runs(evaluated, options_for) -> tuple[list[RunAnalysis], ConsistencyResult | None, list[str]]:
    """Analyse report-pack's evaluated seed runs from their maps, then compare them.

    Parameters
    ----------
    evaluated : :class:`~mammography.report.pack.EvaluatedRun` records (maps, probabilities, model, dataset).
    options_for : callable giving the :class:`AnalysisOptions` of one evaluated run.

    Returns
    -------
    (analyses, consistency or None, notes) - notes say why there is no consistency.
    """
    from mammography.analysis.run_analysis import analyze_maps, compare_runs

    analyses = [
        analyze_maps(ev.run, ev.dataset, ev.maps, ev.probs, model=ev.model, options=options_for(ev), check=ev.check)
        for ev in evaluated
    ]
    notes: list[str] = []
    consistency = None
    if len(analyses) >= 2:
        shared = set.intersection(*(set(a.image_paths) for a in analyses))
        if shared:
            consistency = compare_runs(analyses)
        else:
            notes.append("the seed runs share no validation image, so cross-seed consistency was not computed "
                         "(train the seeds on one split with train-density --split-seed)")
    return analyses, consistency, notes


def _names(labels) -> str:
    """``seed 42`` / ``seeds 42, 43 and 44`` (run ids as they are)."""
    labels = [str(lab) for lab in labels]
    seeds = all(lab.isdigit() for lab in labels)
    joined = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
    return (("seed " if len(labels) == 1 else "seeds ") + joined) if seeds else joined


def _consistency_sentence(c: ConsistencyResult) -> str:
    s = c.summary
    rho, iou = format_value(s["mean_rank_correlation"]["mean"], 2), format_value(s["mean_top_iou"]["mean"], 2)
    return (
        f"Across {_names(c.labels)}, the models predict the same density class for "
        f"{format_percent(s['prediction_agreement_rate'])} of the {s['n_images']} shared validation images; inside "
        f"the breast their Grad-CAM maps have a mean Spearman rank correlation of {rho} and a mean IoU of their "
        f"top-{100 * s['thresholds']['top_fraction']:.0f} % regions of {iou}; {s['n_high_agreement']} images "
        f"({format_percent(s['high_agreement_rate'])}) are high agreement and {s['n_low_agreement']} are marked "
        f"for review."
    )


def _spurious_sentence(analyses, labels) -> str:
    flagged = [(lab, a.summary["spurious"]) for lab, a in zip(labels, analyses)
               if a.summary.get("spurious") and a.summary["spurious"]["flagged"]]
    if not flagged:
        return ("No run is flagged for spurious attention: the heatmap mass outside the breast, in the border band "
                "and on burned-in markers stays within the thresholds.")
    parts = [f"{_names([lab])} for attention {', '.join(r.replace('_', ' ') for r in s['reasons'])}"
             for lab, s in flagged]
    return ("Flagged for spurious attention: " + "; ".join(parts)
            + " (example tiles in the spurious-attention figure); treat these models' heatmaps with caution.")


def _localisation_sentence(analyses, labels) -> str | None:
    parts = []
    for lab, a in zip(labels, analyses):
        if a.localisation is None:
            continue
        rows = a.localisation[a.localisation["group"].astype(str) == "all"]
        if not len(rows):
            continue
        r = rows.iloc[0]
        parts.append(f"{_names([lab])}: IoU {format_value(r['iou_mean'], 2)}, pointing game "
                     f"{format_percent(r['pointing_hit_mean'])}, "
                     f"energy pointing {format_percent(r['energy_pointing_mean'])}")
    if not parts:
        return None
    return "Against the expert regions of interest (all classes): " + "; ".join(parts) + "."


def _faithfulness_sentence(analyses, labels) -> str | None:
    parts = []
    for lab, a in zip(labels, analyses):
        f, s = a.summary.get("faithfulness"), a.summary.get("sanity")
        bits = []
        if f:
            auc = {k: format_value(f[k]["mean"], 2)
                   for k in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc")}
            bits.append(f"deletion AUC {auc['deletion_auc']} vs {auc['random_deletion_auc']} random, insertion AUC "
                        f"{auc['insertion_auc']} vs {auc['random_insertion_auc']} random")
        if s:
            bits.append(f"randomisation check {'passed' if s['passed'] else 'failed'} (final \u03c1 "
                        f"{format_value(s['final_rank_correlation'], 2)})")
        if bits:
            parts.append(f"{_names([lab])}: " + ", ".join(bits))
    if not parts:
        return None
    return "Faithfulness and sanity: " + "; ".join(parts) + "."


def attention_sentences(analyses: list[RunAnalysis], labels: list[str],
                        consistency: ConsistencyResult | None) -> tuple[str, ...]:
    """Plain-text summary sentences of the analyses (escaped by each renderer)."""
    out = []
    if consistency is not None:
        out.append(_consistency_sentence(consistency))
    out.append(_spurious_sentence(analyses, labels))
    for build in (_localisation_sentence, _faithfulness_sentence):
        text = build(analyses, labels)
        if text:
            out.append(text)
    return tuple(out)


def attention_outputs(pack, analyses: list[RunAnalysis], evaluated, consistency: ConsistencyResult | None,
                      notes: list[str]) -> AttentionEntry:
    """Stage the analysis files and figures in ``pack``; the report's attention entry.

    ``pack`` is report-pack's file batch (``add(path, data, kind, ev, **extra)``
    and ``assets_dir``); ``evaluated`` are the runs ``analyses`` came from, in order.
    """
    from mammography.report.analysis_tables import render_analysis_tables
    from mammography.report.consistency_figure import (
        CONSISTENCY_FIGURE,
        SPURIOUS_FIGURE,
        render_consistency_figure,
        render_spurious_figure,
    )

    options = pack.options
    labels = [str(ev.run.seed) for ev in evaluated]
    figures: list[FigureRef] = []
    for label, analysis, ev in zip(labels, analyses, evaluated):
        folder = pack.assets_dir / "attention" / f"seed{label}"
        # no wall times in the pack's files: the same inputs must give the same bytes
        timeless = dataclasses.replace(analysis, summary={k: v for k, v in analysis.summary.items() if k != "timings"})
        for name, data in timeless.files().items():
            pack.add(folder / name, data, "attention_data", ev)
    if consistency is not None:
        for name, data in consistency.files().items():
            pack.add(pack.assets_dir / name, data, "consistency_data")
        png, layout, caption = render_consistency_figure(consistency, N_CONSISTENCY, colormap=options.colormap,
                                                         alpha=options.alpha)
        figures.append(_add_figure(pack, pack.assets_dir / CONSISTENCY_FIGURE, png, layout, "consistency_figure",
                                   "fig:density-gradcam-consistency", caption,
                                   "Grad-CAM of the most and least consistent images across seeds"))
    for label, analysis, ev in zip(labels, analyses, evaluated):
        spurious = analysis.summary.get("spurious") or {}
        if not spurious.get("flagged"):
            continue
        png, layout, caption = render_spurious_figure(analysis, N_SPURIOUS, label=label, colormap=options.colormap,
                                                      alpha=options.alpha)
        figures.append(_add_figure(pack, pack.assets_dir / SPURIOUS_FIGURE.format(label=label), png, layout,
                                   "spurious_figure", f"fig:density-gradcam-spurious-seed{label}", caption,
                                   f"Spurious-attention examples, seed {label}", ev))
    text = render_analysis_tables(analyses, consistency)
    return AttentionEntry(
        sentences=attention_sentences(analyses, labels, consistency) + tuple(n[0].upper() + n[1:] + "." for n in notes),
        latex_tables=text.latex,
        markdown_tables=text.markdown,
        table_labels=tuple(t.label for t in text.tables),
        figures=tuple(figures),
    )


def _add_figure(pack, path: Path, png: bytes, layout, kind: str, label: str, caption: str, alt: str,
                ev=None) -> FigureRef:
    pack.add(path, png, kind, ev, width_in=layout.width_in, height_in=layout.height_in, dpi=layout.dpi)
    pack.layouts[pack.rel(path)] = layout
    return FigureRef(path=path, label=label, caption=caption, alt=alt,
                     wide=layout.width_in > COLUMN_WIDTH_IN + 1e-6)
