"""Measuring attention: is it on the breast, on the expert's region, the same across seeds, faithful?

Modules (the metrics are usable on plain numpy maps and masks, one image at a
time, or batched as torch tensors on any device)::

    maps          normalised maps, mass and shares, the analysis grid, bootstrap CIs
    spurious      attention outside the breast, in the border band, on burned-in markers
    localisation  IoU, Dice, pointing game, energy pointing against expert regions
    patterns      attention on dense tissue per density class; does it widen with density?
    consistency   cross-seed agreement of predictions and maps, "requires review" verdicts
    faithfulness  deletion/insertion curves, cascading weight randomisation
    facts         an image's breast, pectoral, markers, film edges, ROI (the image's, not a run's)
    store         those facts computed once per image, cached beside the decoded images
    measure       every per-image metric of a run's maps, batched on the model's device
    options       AnalysisOptions (the ``analyze`` flags)
    inputs        the rows analysed and the masks and boxes users supply for them
    run_analysis  one run: its sweep and all of the above (``analyze_run``, ``analyze_maps``)
    result        RunAnalysis / ConsistencyResult, their files, reading them back
    compare       cross-run consistency of analysed runs (``compare_runs``)
    analyze       ``mammography analyze``: every run, then their comparison
    selection     representative images per class for figures

Entry points::

    from mammography.analysis import AnalysisOptions, analyze_run, compare_runs
    a42 = analyze_run("outputs/mammo_efficientnetb0_density/results_4", AnalysisOptions(), out_dir="analysis/42")
    consistency = compare_runs([a42, a43, a44], out_dir="analysis")

Names are imported lazily, so ``import mammography.analysis.selection`` stays light.
"""

from mammography._lazy import lazy_exports

_EXPORTS = {
    # run level
    "AnalysisOptions": "mammography.analysis.options",
    "RunAnalysis": "mammography.analysis.result",
    "ConsistencyResult": "mammography.analysis.result",
    "AnalyzeResult": "mammography.analysis.analyze",
    "analyze_run": "mammography.analysis.run_analysis",
    "analyze_maps": "mammography.analysis.run_analysis",
    "analyze_runs": "mammography.analysis.analyze",
    "compare_runs": "mammography.analysis.compare",
    "load_run_analysis": "mammography.analysis.result",
    "run_labels": "mammography.analysis.compare",
    # image facts
    "FactStore": "mammography.analysis.store",
    "ImageFacts": "mammography.analysis.facts",
    "FactSources": "mammography.analysis.facts",
    "compute_image_facts": "mammography.analysis.facts",
    "measure_images": "mammography.analysis.measure",
    # metrics
    "normalise_map": "mammography.analysis.maps",
    "mass_share": "mammography.analysis.maps",
    "top_fraction_mask": "mammography.analysis.maps",
    "bootstrap_mean_ci": "mammography.analysis.maps",
    "grid_shape": "mammography.analysis.maps",
    "map_to_grid": "mammography.analysis.maps",
    "MeanCI": "mammography.analysis.maps",
    "SpuriousThresholds": "mammography.analysis.spurious",
    "spurious_shares": "mammography.analysis.spurious",
    "image_flags": "mammography.analysis.spurious",
    "detect_markers": "mammography.analysis.spurious",
    "border_band": "mammography.analysis.spurious",
    "localisation_metrics": "mammography.analysis.localisation",
    "iou": "mammography.analysis.localisation",
    "dice": "mammography.analysis.localisation",
    "pointing_game": "mammography.analysis.localisation",
    "energy_pointing": "mammography.analysis.localisation",
    "pattern_metrics": "mammography.analysis.patterns",
    "estimate_dense_tissue": "mammography.analysis.patterns",
    "attention_trend": "mammography.analysis.patterns",
    "ConsistencyThresholds": "mammography.analysis.consistency",
    "image_consistency": "mammography.analysis.consistency",
    "rank_correlation": "mammography.analysis.consistency",
    "rank_correlations": "mammography.analysis.consistency",
    "top_region_iou": "mammography.analysis.consistency",
    "top_region_ious": "mammography.analysis.consistency",
    "cascading_randomisation": "mammography.analysis.faithfulness",
    "FaithfulnessResult": "mammography.analysis.faithfulness",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
