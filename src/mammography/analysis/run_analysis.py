"""Analyse one trained run: CAMs over all its validation images, every attention metric.

:func:`analyze_run` is ``mammography analyze --run R`` for one run: the
run's sweep (:func:`mammography.cam.sweep.run_maps`: a stored record, or the CAM of the
predicted class for every validation image), then :func:`analyze_maps`,
which measures, on each image's analysis grid (original orientation, longer
side ``analysis_size`` px; see :mod:`mammography.analysis.maps`):

* spurious attention (:mod:`~mammography.analysis.spurious`): shares outside
  the breast, in the border band, on burned-in markers and film edges, and
  how much the prediction falls when the markers are painted over;
* localisation against the expert region (:mod:`~mammography.analysis.localisation`)
  when the run's predictions (or ``manifest``) have ``roi_path`` or
  ``roi_dir`` holds a mask named after the image;
* the clinical pattern summary (:mod:`~mammography.analysis.patterns`);
* optionally deletion/insertion faithfulness and the cascading-randomisation
  sanity check (:mod:`~mammography.analysis.faithfulness`) on a seeded sample.

:func:`analyze_maps` takes maps computed elsewhere (report-pack and the
explorer sweep once for their figures). The measurements of all images run
in batches on the model's device (:mod:`mammography.analysis.measure`).

Where the masks come from
-------------------------
The masks are facts of the image, not of the run
(:mod:`mammography.analysis.facts`): found once per image on the image
itself, at the analysis size, cached beside the decoded-image cache and
shared by every seed and fold (:class:`~mammography.analysis.store.FactStore`):

* **breast**: the ``breast_mask_path`` PNG when the predictions or the
  manifest name one, else :func:`mammography.io.segment_breast`;
* **markers and film edges**: :func:`~mammography.analysis.spurious.find_burned_in`,
  plus ``artifact_bbox`` when known;
* **ROI**: ``roi_path``, else ``<roi_dir>/<image stem>{,_roi,_mask,_dense}.png``;
* **dense tissue** (``dense_source``): ``"roi"`` uses the ROI masks (the
  phantoms' ROI *is* their dense tissue), ``"estimate"`` thresholds the
  breast's intensities (Otsu) without the pectoral muscle of MLO views
  (:func:`mammography.io.pectoral_mask`), ``"auto"`` uses the ROI when the
  images belong to a phantom set written by ``mammography synth`` (a
  ``synth.json`` in one of the image's three parent folders) and estimates
  otherwise.

Each run then sees the masks through its own geometry (laterality flip,
padding or the earlier project's centre crop): the occlusion paints the
markers where that model saw them, with that model's background level.

The per-image table also says each image's laterality and view and where
they came from (the run's ``val_predictions.csv``, else as the image was
prepared), and whether the run's predictions have collapsed to one output
(``summary["collapse"]``, :func:`mammography.training.metrics.prediction_collapse`).

The result (:class:`~mammography.analysis.result.RunAnalysis`), the options
(:class:`~mammography.analysis.options.AnalysisOptions`), :func:`compare_runs`
and :func:`analyze_runs` live in their own modules; their names are
importable from here too, as earlier code did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mammography._lazy import lazy_exports
from mammography.analysis.facts import ImageFacts
from mammography.analysis.faithfulness import (
    FaithfulnessResult,
    SanityResult,
    cam_explainer,
    cascading_randomisation,
    faithfulness,
    marker_occlusion,
)
from mammography.analysis.inputs import is_phantom, merge_manifest, orientation_columns, row_sources, select_rows
from mammography.analysis.localisation import summarise_localisation
from mammography.analysis.measure import LOCALISATION_COLUMNS, SPURIOUS_COLUMNS, measure_images
from mammography.analysis.options import AnalysisOptions
from mammography.analysis.patterns import PATTERN_METRICS, summarise_patterns
from mammography.analysis.result import RunAnalysis
from mammography.analysis.spurious import image_flags, summarise_spurious
from mammography.analysis.store import FactStore
from mammography.errors import ConfigError
from mammography.io.geometry import Geometry
from mammography.machine import resolve_device
from mammography.training.metrics import prediction_collapse

#: names that moved to their own modules, still importable from here
_MOVED = {
    "ANALYSIS_SIZE": "mammography.analysis.options",
    "DENSE_SOURCES": "mammography.analysis.options",
    "MAX_ANALYSIS_SIZE": "mammography.analysis.options",
    "ImageRegions": "mammography.analysis.facts",
    "ANALYSIS_FILES": "mammography.analysis.result",
    "CONSISTENCY_FILES": "mammography.analysis.result",
    "ConsistencyResult": "mammography.analysis.result",
    "load_run_analysis": "mammography.analysis.result",
    "compare_runs": "mammography.analysis.compare",
    "run_labels": "mammography.analysis.compare",
    "AnalyzeResult": "mammography.analysis.analyze",
    "analyze_runs": "mammography.analysis.analyze",
}

__all__ = ["AnalysisOptions", "RunAnalysis", "analyze_maps", "analyze_run", *_MOVED]

__getattr__, __dir__ = lazy_exports(__name__, _MOVED)

#: images whose facts, measurements and occlusion are handled together (bounds the squares held at once)
_CHUNK = 64


def analyze_run(run, options: AnalysisOptions = AnalysisOptions(), out_dir: str | Path | None = None, *,
                layers=None, num_workers=None, store=None, facts: FactStore | None = None) -> RunAnalysis:
    """Analyse one run's attention over all its validation images.

    Parameters
    ----------
    run : a run directory (str / Path) or a :class:`mammography.runs.Run`.
    options : :class:`AnalysisOptions`; ``options.layer`` is measured.
    out_dir : when given, the files of :meth:`RunAnalysis.write` are written there.
    layers : the layers to get from the sweep (default: ``options.layer``
        alone); more make the stored record serve later commands.
    num_workers : image-decoding processes of the sweep (``None``: a number that suits the machine).
    store : where sweep records are found and kept (default: the record store
        of ``options.cache_dir``; see :func:`mammography.cam.sweep.run_maps`).
    facts : the image facts to use (share one store between the runs of a
        comparison; default: a store in ``options.cache_dir``).

    Returns
    -------
    RunAnalysis
    """
    from mammography.cam.layers import density_layer_names
    from mammography.cam.sweep import run_maps
    from mammography.runs import as_run

    options.validate()
    run = as_run(run)
    t0 = time.perf_counter()
    predictions, rows = select_rows(run.predictions, options.manifest, options.max_images)
    device = resolve_device(options.device)
    model = run.load_model(device=device)  # for the marker occlusion, and the sweep when no record serves
    layer = density_layer_names(options.layer)[-1]
    wanted = list(dict.fromkeys([*density_layer_names(layers or [layer]), layer]))
    sweep = run_maps(run, wanted, options.method, batch_size=options.batch_size, device=device,
                     cache_dir=options.cache_dir, store=store, num_workers=num_workers, progress=options.progress,
                     model=model, rows=rows)
    t_cam = time.perf_counter() - t0
    check = run.check_predictions(sweep.probs, rows=rows)
    result = analyze_maps(run, run.dataset(options.cache_dir, rows=rows), sweep.maps[layer], sweep.probs,
                          model=model, options=options, predictions=predictions, check=check,
                          geometries=sweep.geometries, facts=facts)
    result.summary["timings"]["cam_seconds"] = round(t_cam, 3)
    if out_dir is not None:
        result.write(out_dir)
    return result


@dataclass
class _Occlusion:
    """Images of one chunk whose markers the model saw: what painting them over needs."""

    rows: list[int] = field(default_factory=list)
    prepared: list = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    backgrounds: list[float] = field(default_factory=list)


def analyze_maps(
    run,
    dataset,
    maps: np.ndarray,
    probs: np.ndarray,
    *,
    model: torch.nn.Module | None = None,
    options: AnalysisOptions = AnalysisOptions(),
    predictions: pd.DataFrame | None = None,
    check=None,
    geometries: list[Geometry] | None = None,
    facts: FactStore | None = None,
) -> RunAnalysis:
    """Analyse CAMs computed elsewhere (e.g. by report-pack's single pass).

    Parameters
    ----------
    run : the :class:`mammography.runs.Run`.
    dataset : its validation images as a ``MammogramDataset``, in the order of ``maps``.
    maps : (N, h, w) model-space CAMs of the predicted class (raw or
        min-max normalised: every metric normalises again).
    probs : (N, 4) probabilities from the same pass (the predicted class is their argmax).
    model : needed for the marker occlusion and ``options.faithfulness`` / ``options.sanity``.
    options : :class:`AnalysisOptions`.
    predictions : rows for the images, in dataset order, with ``image_path``
        and ``y_true`` (default ``run.predictions`` with ``options.manifest``
        merged in); ``roi_path``, ``breast_mask_path`` and ``artifact_bbox``
        are used when present.
    check : the :class:`~mammography.runs.PredictionCheck` of ``probs``
        against the run's stored predictions (same rows); where it says they
        differ the per-image table gets the stored prediction beside the
        recomputed one (``stored_y_pred``).
    geometries : the maps' geometries when the caller has them (a sweep's
        ``RunMaps.geometries``); else read from ``dataset``.
    facts : the :class:`FactStore` to take the image facts from (share one
        between the runs of a comparison; default: a store in ``options.cache_dir``).

    Returns
    -------
    RunAnalysis
    """
    options.validate()
    t0 = time.perf_counter()
    rows = merge_manifest(run.predictions.reset_index(drop=True), options.manifest) if predictions is None else predictions
    maps = np.asarray(maps, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(dataset)
    if not (len(rows) == n == len(maps) == len(probs)):
        raise ConfigError(f"{len(rows)} prediction rows, {n} images, {len(maps)} maps and {len(probs)} probability rows differ")
    if geometries is not None and len(geometries) != n:
        raise ConfigError(f"{len(geometries)} geometries for {n} images")
    paths = [str(p) for p in dataset.paths]
    if [str(Path(p)) for p in rows["image_path"]] != paths:
        raise ConfigError("the prediction rows are not in the dataset's image order")
    if (options.faithfulness or options.sanity) and model is None:
        raise ConfigError("faithfulness and sanity checks need the model")
    store = facts if facts is not None else FactStore(options.cache_dir)
    device = resolve_device(options.device)
    y_pred = probs.argmax(axis=1) + 1 if n else np.zeros(0, int)
    sanity_idx = _sample(n, options.sanity_images, options.seed + 1, paths) if options.sanity else np.zeros(0, int)
    occlude = model is not None and options.marker_occlusion
    columns = {c: np.full(n, np.nan) for c in (*SPURIOUS_COLUMNS, *LOCALISATION_COLUMNS, *PATTERN_METRICS)}
    counts = np.zeros((n, 2), dtype=np.int64)
    orientation: list[dict] = []
    regions, all_geometries, sanity_breasts = [], [], {}
    occlusion = {"marker_occlusion_prob": np.full(n, np.nan), "marker_occlusion_drop": np.full(n, np.nan),
                 "marker_occlusion_flip": np.zeros(n, dtype=bool)}
    dense_sources, roi_count, t_occlusion = set(), 0, 0.0
    sources = [row_sources(rows.iloc[i], paths[i], options.roi_dir) for i in range(n)]
    t = time.perf_counter()
    store.prefetch([(p, options.analysis_size, s) for p, s in zip(paths, sources)], workers=options.workers,
                   progress=options.progress)
    t_facts = time.perf_counter() - t
    progress = _progress(n, options.progress)
    for start in range(0, n, _CHUNK):
        chunk = range(start, min(n, start + _CHUNK))
        chunk_facts, chunk_geometries, dense, jobs = [], [], [], _Occlusion()
        for i in chunk:
            row = rows.iloc[i]
            t = time.perf_counter()
            f = store.get(paths[i], options.analysis_size, sources[i])
            t_facts += time.perf_counter() - t
            seen = orientation_columns(row)
            prepared = dataset.prepared(i) if geometries is None or seen is None else None
            geom = geometries[i] if geometries is not None else prepared.geometry
            orientation.append(seen or orientation_columns(row, prepared))
            use_roi = f.roi is not None and (
                options.dense_source == "roi" or (options.dense_source == "auto" and is_phantom(paths[i])))
            if options.dense_source == "roi" and f.roi is None:
                raise ConfigError(f"--dense-source roi needs an ROI mask for every image; none for {paths[i]}")
            dense.append(f.roi if use_roi else f.dense_estimate)
            dense_sources.add("roi" if use_roi else "estimate")
            roi_count += f.roi is not None
            counts[i] = (f.n_markers, f.n_film_edges)
            if occlude or i in sanity_idx:
                _in_model(f, geom, i, dataset, prepared, jobs if occlude else None, sanity_breasts, sanity_idx)
            chunk_facts.append(f)
            chunk_geometries.append(geom)
        measured = measure_images(maps[chunk.start : chunk.stop], chunk_geometries, chunk_facts, dense,
                                  border_fraction=options.border_fraction,
                                  attention_threshold=options.attention_threshold, device=device)
        for name, values in measured.items():
            columns[name][chunk.start : chunk.stop] = values
        regions.extend(f.regions() for f in chunk_facts)
        all_geometries.extend(chunk_geometries)
        t = time.perf_counter()
        if jobs.rows:
            for name, values in _marker_occlusion(model, dataset, jobs, probs, y_pred, run, options).items():
                occlusion[name][jobs.rows] = values
        t_occlusion += time.perf_counter() - t
        progress.update(len(chunk))
    progress.close()
    table = _table(paths, rows, y_pred, probs, columns, counts, orientation)
    if check is not None and n:
        table.insert(table.columns.get_loc("confidence") + 1, "stored_y_pred", _stored_beside(run, check, paths))
    if n and occlude:
        table = table.join(pd.DataFrame(occlusion))
    if n:
        table = pd.concat([table, image_flags(table, options.spurious)], axis=1)
    t_metrics = time.perf_counter() - t0

    localisation = summarise_localisation(table, seed=options.seed) if roi_count else None
    patterns_summary = summarise_patterns(table, seed=options.seed) if n else None
    faith = sanity = None
    t1 = time.perf_counter()
    if options.faithfulness and n:
        faith = _run_faithfulness(model, dataset, maps, y_pred, paths, options, run)
    t_faith = time.perf_counter() - t1
    t2 = time.perf_counter()
    if options.sanity and n:
        sanity = _run_sanity(model, dataset, y_pred, sanity_idx, np.stack([sanity_breasts[int(i)] for i in sanity_idx]),
                             options)
    t_sanity = time.perf_counter() - t2

    summary = {
        "run": {
            "path": str(run.path),
            "run_id": run.run_id,
            "seed": run.seed,
            "img_size": run.img_size,
            "normalise_laterality": run.normalise_laterality,
            "mean": list(run.mean),
            "std": list(run.std),
            "preprocessing": run.preprocessing.to_record(),
            "writer": run.writer,
        },
        "prediction_check": None if check is None else {
            "stored": check.source, "n_differ": check.n_disagree, "note": check.note or None,
            "max_prob_diff": check.max_prob_diff,
        },
        "options": options.to_dict(),
        "grid": (
            f"original image orientation (laterality flip undone, padding removed), longer side "
            f"{options.analysis_size} px"
        ),
        "n_images": n,
        "collapse": prediction_collapse(probs),
        "n_with_roi": roi_count,
        "dense_source": "+".join(sorted(dense_sources)) or None,
        "targets": "predicted class",
        "spurious": summarise_spurious(table, options.spurious, seed=options.seed) if n else None,
        "localisation": None if localisation is None else localisation.to_dict(orient="records"),
        "patterns": patterns_summary,
        "faithfulness": None if faith is None else faith.summary(seed=options.seed),
        "sanity": None if sanity is None else sanity.summary(),
        "timings": {
            "metrics_seconds": round(t_metrics, 3),
            "facts_seconds": round(t_facts, 3),
            "occlusion_seconds": round(t_occlusion, 3),
            "faithfulness_seconds": round(t_faith, 3),
            "sanity_seconds": round(t_sanity, 3),
        },
    }
    patterns_table = (
        pd.DataFrame(patterns_summary["by_class"]) if patterns_summary is not None else None
    )
    return RunAnalysis(
        run_id=run.run_id,
        seed=run.seed,
        run_path=Path(run.path),
        table=table,
        maps=maps,
        geometries=all_geometries,
        regions=regions,
        options=options,
        summary=summary,
        localisation=localisation,
        patterns=patterns_table,
        faithfulness=faith,
        sanity=sanity,
        dataset=dataset,
    )


def _progress(n: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=n, desc="attention analysis", unit="image", disable=not show or n == 0, leave=False)


def _in_model(facts: ImageFacts, geometry: Geometry, i: int, dataset, prepared, jobs: _Occlusion | None,
              sanity_breasts: dict, sanity_idx: np.ndarray) -> None:
    """Map image ``i``'s facts into the run's model square: its breast for the randomisation check, its
    markers (when the model saw any) for the occlusion, painted with the run's own background level."""
    masks = facts.in_model(geometry)
    if i in sanity_idx:
        sanity_breasts[i] = masks.breast
    if jobs is None or not masks.markers.any():
        return
    prepared = prepared if prepared is not None else dataset.prepared(i)
    jobs.rows.append(i)
    jobs.prepared.append(prepared)
    jobs.masks.append(masks.occlusion())
    jobs.backgrounds.append(masks.background(prepared.square))


def _table(paths, rows, y_pred, probs, columns: dict, counts: np.ndarray, orientation: list[dict]) -> pd.DataFrame:
    """The per-image table (its columns in the order the analysis files have always had)."""
    n = len(paths)
    if not n:
        return pd.DataFrame()
    y_pred = y_pred.astype(np.int64)
    data = {
        "image_path": paths,
        "y_true": rows["y_true"].astype(int).to_numpy(),
        "y_pred": y_pred,
        "confidence": probs[np.arange(n), y_pred - 1],
        "target": y_pred,
        **{c: columns[c] for c in SPURIOUS_COLUMNS},
        "n_markers": counts[:, 0],
        "n_film_edges": counts[:, 1],
        **{key: [o[key] for o in orientation] for key in orientation[0]},
        **{c: columns[c] for c in LOCALISATION_COLUMNS},
        **{c: columns[c] for c in PATTERN_METRICS},
    }
    return pd.DataFrame(data)


def _sample(n: int, k: int, seed: int, paths: list[str]) -> np.ndarray:
    """``k`` image indices drawn without replacement, reproducibly (independent of row order)."""
    order = np.argsort(np.asarray(paths, dtype=str), kind="stable")
    rng = np.random.default_rng(seed)
    return np.sort(order[rng.choice(n, size=min(k, n), replace=False)]) if n else np.zeros(0, int)


def _image_areas(dataset, idx: np.ndarray) -> torch.Tensor:
    """(k, S, S) bool image areas (padding excluded) of the sampled images."""
    return torch.stack([torch.from_numpy(dataset.geometry(int(i)).image_area()) for i in idx])


def _stored_beside(run, check, paths: list[str]) -> pd.Series:
    """The run's stored prediction where ``check`` says it differs from the recomputed one, else empty."""
    differs = np.asarray(check.differs, dtype=bool)
    if run.stored is None:
        return pd.Series(np.zeros(len(paths), int), dtype="Int64").where(differs)
    position = {str(p): i for i, p in enumerate(run.predictions["image_path"].astype(str))}
    stored = run.stored.y_pred[[position[p] for p in paths]]
    return pd.Series(stored, dtype="Int64").where(differs)


def _marker_occlusion(model, dataset, jobs: _Occlusion, probs, y_pred, run, options: AnalysisOptions) -> dict:
    """Per image of ``jobs``: :func:`~mammography.analysis.faithfulness.marker_occlusion` of its predicted class."""
    images = torch.stack([dataset.to_tensor(p) for p in jobs.prepared])
    rows = np.asarray(jobs.rows)
    cls = y_pred[rows].astype(int) - 1
    return marker_occlusion(model, images, jobs.masks, jobs.backgrounds, run.mean, run.std, cls, probs[rows, cls],
                            batch_size=options.batch_size)


def _inputs(dataset, idx: np.ndarray) -> torch.Tensor:
    return torch.stack([dataset[int(i)]["image"] for i in idx])


def _run_faithfulness(model, dataset, maps, y_pred, paths, options: AnalysisOptions, run) -> FaithfulnessResult:
    idx = _sample(len(paths), options.faithfulness_images, options.seed, paths)
    zero = -torch.tensor(run.mean, dtype=torch.float32) / torch.tensor(run.std, dtype=torch.float32)
    return faithfulness(
        model,
        _inputs(dataset, idx),
        maps[idx],
        y_pred[idx] - 1,
        areas=_image_areas(dataset, idx),
        n_steps=options.faithfulness_steps,
        baseline=options.faithfulness_baseline,
        zero_value=zero,
        batch_size=options.batch_size,
        seed=options.seed,
        image_ids=[paths[i] for i in idx],
    )


def _run_sanity(model, dataset, y_pred, idx: np.ndarray, breasts: np.ndarray, options: AnalysisOptions) -> SanityResult:
    """Cascading randomisation on the sampled images; maps compared inside each breast (a map that is merely
    high on the breast and low on the background would otherwise correlate with any other such map)."""
    return cascading_randomisation(
        model,
        _inputs(dataset, idx),
        y_pred[idx] - 1,
        explain=cam_explainer(options.method, options.layer, options.batch_size),
        areas=torch.from_numpy(breasts),
        seed=options.seed,
    )
