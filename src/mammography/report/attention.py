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
import math
from dataclasses import dataclass
from pathlib import Path

from mammography.analysis.run_analysis import AnalysisOptions, ConsistencyResult, RunAnalysis
from mammography.report.content import AttentionEntry, FigureRef
from mammography.report.figures import COLUMN_WIDTH_IN
from mammography.analysis.maps import bootstrap_mean_ci
from mammography.report.analysis_tables import roi_area, analysis_tables, prediction_columns
from mammography.report.tables import format_percent, format_value
from mammography.report.verdicts import (
    ABOVE,
    BELOW,
    MARGIN_SENTENCE,
    WITHIN,
    Comparison,
    chance_agreement,
    compare_difference,
    compare_share,
    random_region_iou,
)

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
    marker_occlusion : paint the markers over and measure the prediction's change.
    """

    roi_dir: Path | None = None
    manifest: Path | None = None
    faithfulness: bool = False
    faithfulness_images: int = 16
    marker_occlusion: bool = True


def analysis_options(settings: AttentionSettings, *, method: str, layer: str, batch_size: int,
                     device: str, cache_dir: Path | None, progress: bool) -> AnalysisOptions:
    """The :class:`AnalysisOptions` of one report pack (analysis defaults otherwise)."""
    return AnalysisOptions(
        method=method, layer=layer, batch_size=batch_size, device=device, cache_dir=cache_dir,
        roi_dir=settings.roi_dir, manifest=settings.manifest, faithfulness=settings.faithfulness,
        faithfulness_images=settings.faithfulness_images, sanity=settings.faithfulness,
        sanity_images=max(1, settings.faithfulness_images // 2), marker_occlusion=settings.marker_occlusion,
        progress=progress,
    )


def analyse_runs(evaluated, options_for) -> tuple[list[RunAnalysis], ConsistencyResult | None, list[str]]:
    """Analyse report-pack's evaluated seed runs from their maps, then compare them.

    Parameters
    ----------
    evaluated : :class:`~mammography.report.evaluate.EvaluatedRun` records (maps, probabilities, model, dataset).
    options_for : callable giving the :class:`AnalysisOptions` of one evaluated run.

    Returns
    -------
    (analyses, consistency or None, notes) - notes say why there is no consistency.
    """
    from mammography.analysis.run_analysis import analyze_maps, compare_runs
    from mammography.analysis.store import FactStore

    facts = None  # one store for all the seeds: each image's masks are found once
    analyses = []
    for ev in evaluated:
        options = options_for(ev)
        facts = facts or FactStore(options.cache_dir)
        geometries = None if ev.sweep is None else ev.sweep.geometries
        analyses.append(analyze_maps(ev.run, ev.dataset, ev.maps, ev.probs, model=ev.model, options=options,
                                     check=ev.check, geometries=geometries, facts=facts))
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


def _with_ci(c: Comparison, digits: int = 2, percent: bool = False) -> str:
    """``"0.72 [0.68, 0.76]"`` or ``"51 % [49 %, 53 %]"``: the value and its 95 % CI."""
    fmt = format_percent if percent else (lambda v: format_value(v, digits))
    if not (math.isfinite(c.low) and math.isfinite(c.high)) or c.low == c.high:
        return fmt(c.value)
    return f"{fmt(c.value)} [{fmt(c.low)}, {fmt(c.high)}]"


def _consistency_sentence(c: ConsistencyResult) -> str:
    s = c.summary
    preds = prediction_columns(c)
    same = bootstrap_mean_ci((preds == preds[:, :1]).all(axis=1).astype(float))
    chance = chance_agreement(preds)
    agree = compare_share(s["prediction_agreement_rate"], same.low, same.high, chance)
    rho = s["mean_rank_correlation"]
    rho_c = compare_share(rho["mean"], rho.get("low"), rho.get("high"), 0.0)
    iou = s["mean_top_iou"]
    top = s["thresholds"]["top_fraction"]
    iou_c = compare_share(iou["mean"], iou.get("low"), iou.get("high"), random_region_iou(top))
    agree_text = {ABOVE: "clearly above chance", BELOW: "clearly below chance",
                  WITHIN: "no clear difference from chance"}[agree.verdict]
    rho_text = {ABOVE: "clearly related", BELOW: "clearly anti-related",
                WITHIN: "no clear relation"}[rho_c.verdict]
    iou_text = {ABOVE: "clearly more overlap than chance", BELOW: "less overlap than chance",
                WITHIN: "no more overlap than chance"}[iou_c.verdict]
    return (
        f"Across {_names(c.labels)}, the models predict the same density class for "
        f"{format_percent(s['prediction_agreement_rate'])} of the {s['n_images']} shared validation images, where "
        f"models with these class frequencies would agree by chance on {format_percent(chance)} ({agree_text}). "
        f"Inside the breast their Grad-CAM maps have a mean Spearman rank correlation of {_with_ci(rho_c)}, where "
        f"unrelated maps give 0 ({rho_text}), and their top-{100 * top:.0f} % regions a mean IoU of "
        f"{_with_ci(iou_c)}, where two random regions of that size give {format_value(iou_c.baseline, 2)} "
        f"({iou_text}); {s['n_high_agreement']} images ({format_percent(s['high_agreement_rate'])}) are high "
        f"agreement and {s['n_low_agreement']} are marked for review."
    )


#: per kind of spurious region: (where, phrase per verdict)
_SPURIOUS_TEXT = {
    "outside_breast": ("outside the breast", {
        BELOW: "the maps clearly prefer the breast",
        WITHIN: "no clear preference for the breast over the background",
        ABOVE: "the maps prefer the background to the breast",
    }),
    "border": ("in the border band", {
        BELOW: "less than without preference",
        WITHIN: "about what a map without preference puts there",
        ABOVE: "attention is drawn to the image border",
    }),
}


def _joined(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _per_run(parts: list[tuple[str, str]]) -> str:
    """``"51 % for seed 42, 49 % for seed 43 and 49 % for seed 44"`` (the value alone for one run)."""
    if len(parts) == 1:
        return parts[0][0]
    return _joined([f"{value} for {_names([lab])}" for value, lab in parts])


def _verdict_text(verdicts: dict[str, str], phrases: dict[str, str]) -> str:
    """One verdict for all runs (``"... in all 3 runs"``), or which runs get which."""
    kinds = sorted(set(verdicts.values()), key=[BELOW, WITHIN, ABOVE].index)
    if len(kinds) == 1:
        return phrases[kinds[0]] + (f", in all {len(verdicts)} runs" if len(verdicts) > 1 else "")
    return "; ".join(f"{phrases[k]} for {_names([lab for lab, v in verdicts.items() if v == k])}" for k in kinds)


def _baselines(comps) -> str:
    """The baseline(s) of several comparisons, as percentages (``"56 %"`` or ``"55 % to 57 %"``)."""
    values = sorted({c.baseline for c in comps})
    return " to ".join(dict.fromkeys(format_percent(v) for v in (values[0], values[-1])))


def _spurious_sentences(analyses, labels) -> list[str]:
    runs = [(lab, a.summary["spurious"]) for lab, a in zip(labels, analyses) if a.summary.get("spurious")]
    if not runs:
        return []
    out = []
    for kind, (where, phrases) in _SPURIOUS_TEXT.items():
        comps = {lab: compare_share(s[kind]["mean"], s[kind]["low"], s[kind]["high"], s[kind]["area"])
                 for lab, s in runs}
        values = _per_run([(_with_ci(c, percent=True), lab) for lab, c in comps.items()])
        verdict = _verdict_text({lab: c.verdict for lab, c in comps.items()}, phrases)
        out.append(f"The share of heatmap mass {where} is {values}, where a map without preference would put "
                   f"{_baselines(comps.values())}: {verdict}.")
    marker_runs = [(lab, s["marker"]) for lab, s in runs if s["marker"].get("enrichment") is not None
                   and math.isfinite(float(s["marker"]["enrichment"]))]
    if marker_runs:
        comps = {lab: compare_share(m["enrichment"], m.get("enrichment_low"), m.get("enrichment_high"), 1.0)
                 for lab, m in marker_runs}
        values = _per_run([(_with_ci(c, 1) + " times", lab) for lab, c in comps.items()])
        phrases = {BELOW: "the markers get less attention than their area",
                   WITHIN: "attention on the markers is in proportion to their area",
                   ABOVE: "attention concentrates on the markers"}
        out.append(f"The share of heatmap mass on burned-in markers is {values} their share of the image, where a "
                   f"map without preference gives 1 time: "
                   f"{_verdict_text({lab: c.verdict for lab, c in comps.items()}, phrases)}.")
    flagged = [(lab, s) for lab, s in runs if s["flagged"]]
    if flagged:
        parts = [f"{_names([lab])} for attention {', '.join(r.replace('_', ' ') for r in s['reasons'])}"
                 for lab, s in flagged]
        out.append("Flagged for spurious attention: " + "; ".join(parts)
                   + " (example tiles in the spurious-attention figure); treat these models' heatmaps with caution.")
    else:
        out.append("No run crosses the spurious-attention flagging thresholds (spurious-attention table); the "
                   "comparison with a map without preference above is what says whether the maps prefer the breast.")
    return out


def _localisation_sentence(analyses, labels) -> str | None:
    energy, hit, iou = {}, {}, []
    for lab, a in zip(labels, analyses):
        if a.localisation is None:
            continue
        rows = a.localisation[a.localisation["group"].astype(str) == "all"]
        if not len(rows):
            continue
        r = rows.iloc[0]
        area = roi_area(a, "all")
        energy[lab] = compare_share(r["energy_pointing_mean"], r["energy_pointing_low"], r["energy_pointing_high"],
                                    area)
        hit[lab] = compare_share(r["pointing_hit_mean"], r["pointing_hit_low"], r["pointing_hit_high"], area)
        iou.append((format_value(r["iou_mean"], 2), lab))
    if not energy:
        return None
    phrases = {ABOVE: "more than without preference", WITHIN: "no clear difference from no preference",
               BELOW: "less than without preference"}
    return (
        f"Against the expert regions of interest (all classes), where a map without preference gets the region's "
        f"share of the image ({_baselines(energy.values())}): energy pointing (the map's mass inside the region) "
        f"{_per_run([(_with_ci(c, percent=True), lab) for lab, c in energy.items()])}, "
        f"{_verdict_text({lab: c.verdict for lab, c in energy.items()}, phrases)}; pointing game (the map's "
        f"maximum inside the region) {_per_run([(_with_ci(c, percent=True), lab) for lab, c in hit.items()])}, "
        f"{_verdict_text({lab: c.verdict for lab, c in hit.items()}, phrases)}; IoU {_per_run(iou)}."
    )


def _faithfulness_sentences(analyses, labels) -> list[str]:
    deletion, insertion, sanity = {}, {}, {}
    for lab, a in zip(labels, analyses):
        f, s = a.summary.get("faithfulness"), a.summary.get("sanity")
        if f and a.faithfulness is not None:
            aucs = a.faithfulness.aucs()
            deletion[lab] = (f, compare_difference(aucs["deletion_auc"] - aucs["random_deletion_auc"]))
            insertion[lab] = (f, compare_difference(aucs["insertion_auc"] - aucs["random_insertion_auc"]))
        if s:
            sanity[lab] = s
    out = []
    for name, comps, what, phrases in (
        ("deletion", deletion, "Deleting the most-attended pixels first lowers the class probability with a "
                               "curve area of", {BELOW: "faster than random", WITHIN: "inside the random band",
                                                 ABOVE: "slower than random"}),
        ("insertion", insertion, "Inserting them onto a black image gives a curve area of",
         {ABOVE: "better than random", WITHIN: "inside the random band", BELOW: "worse than random"}),
    ):
        if not comps:
            continue
        values = _per_run([(format_value(f[f"{name}_auc"]["mean"], 2), lab) for lab, (f, _) in comps.items()])
        randoms = _joined([format_value(f[f"random_{name}_auc"]["mean"], 2) for f, _ in comps.values()])
        diffs = _joined([_with_ci(c) for _, c in comps.values()])
        out.append(f"{what} {values}, against {randoms} for a random order "
                   f"(difference{'s' if len(comps) > 1 else ''} {diffs}): "
                   f"{_verdict_text({lab: c.verdict for lab, (_, c) in comps.items()}, phrases)}.")
    if sanity:
        values = _per_run([(format_value(s["final_rank_correlation"], 2), lab) for lab, s in sanity.items()])
        limit = format_value(next(iter(sanity.values())).get("max_correlation", 0.5), 2)
        results = {lab: ABOVE if s["passed"] else BELOW for lab, s in sanity.items()}
        out.append(f"After randomising the head and the last blocks the maps correlate with the trained model's at "
                   f"\u03c1 = {values}, where 1 means unchanged and 0 unrelated (the check passes below {limit}): "
                   f"{_verdict_text(results, {ABOVE: 'passed', BELOW: 'failed'})}.")
    return out


def attention_sentences(analyses: list[RunAnalysis], labels: list[str],
                        consistency: ConsistencyResult | None) -> tuple[str, ...]:
    """Plain-text summary sentences of the analyses (escaped by each renderer).

    Each states its number with a baseline and a verdict that follows from
    comparing the two (:mod:`mammography.report.verdicts`); the last sentence
    states the margin that comparison uses.
    """
    out = []
    if consistency is not None:
        out.append(_consistency_sentence(consistency))
    out.extend(_spurious_sentences(analyses, labels))
    localisation = _localisation_sentence(analyses, labels)
    if localisation:
        out.append(localisation)
    out.extend(_faithfulness_sentences(analyses, labels))
    out.append(MARGIN_SENTENCE)
    return tuple(out)


def attention_outputs(pack, analyses: list[RunAnalysis], evaluated, consistency: ConsistencyResult | None,
                      notes: list[str]) -> AttentionEntry:
    """Stage the analysis files and figures in ``pack``; the report's attention entry.

    ``pack`` is report-pack's file batch (``add(path, data, kind, ev, **extra)``
    and ``assets_dir``); ``evaluated`` are the runs ``analyses`` came from, in order.
    """
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
    return AttentionEntry(
        sentences=attention_sentences(analyses, labels, consistency) + tuple(n[0].upper() + n[1:] + "." for n in notes),
        tables=analysis_tables(analyses, consistency),
        figures=tuple(figures),
    )


def _add_figure(pack, path: Path, png: bytes, layout, kind: str, label: str, caption: str, alt: str,
                ev=None) -> FigureRef:
    pack.add(path, png, kind, ev, width_in=layout.width_in, height_in=layout.height_in, dpi=layout.dpi)
    pack.layouts[pack.rel(path)] = layout
    return FigureRef(path=path, label=label, caption=caption, alt=alt,
                     wide=layout.width_in > COLUMN_WIDTH_IN + 1e-6)
