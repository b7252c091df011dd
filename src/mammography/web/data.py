"""From trained runs to the explorer's per-image records.

:func:`build_explorer` is what ``mammography explore`` and ``report-pack
--site`` call: it reads the runs, computes Grad-CAM for **every** validation
image of every run at several depths of the network (plus their fusion),
measures the attention with :mod:`mammography.analysis`, and streams
:class:`~mammography.web.site.SiteImage` records into
:func:`~mammography.web.site.build_site`.

Three steps:

1. CAMs: the union of the runs' validation images in batches; each image is
   decoded once per input setting (size, laterality handling) and run
   through every model that validated on it. The low-resolution maps of every
   layer are kept (a few kB per image and run).
2. Attention numbers, by the analysis module itself, on the final block's
   maps, so the explorer shows exactly what ``mammography analyze`` and
   report-pack report: :func:`~mammography.analysis.run_analysis.analyze_maps`
   per run (shares of attention outside the breast, in the border band and on
   burned-in markers, with their flags; ROI overlap) and
   :func:`~mammography.analysis.run_analysis.compare_runs` across runs
   (attention agreement and the high / low agreement class with reasons).
   The table's *spurious attention* is the share of the map's mass in the
   union of the three regions (the analysis's masks, on its grid).
3. Records: the images again (from the decoded-image cache when one is set),
   one :class:`SiteImage` each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mammography.cam.sweep import DEFAULT_LAYERS  # shown shallow to deep; the final block first and measured
from mammography.errors import ConfigError
from mammography.training.metrics import prediction_collapse
from mammography.web.site import SeedResult, SiteImage, SiteLayer, SiteSeed, SiteSummary, build_site

__all__ = [
    "DEFAULT_LAYERS",
    "FUSED",
    "RunImages",
    "load_runs",
    "seed_columns",
    "site_layers",
    "resolve_layer_names",
    "iter_site_images",
    "build_explorer",
]

log = logging.getLogger(__name__)

#: key of the fused map (mean of the normalised layers) in the layer switch
FUSED = "fused"
_PROB_COLUMNS = ("p_A", "p_B", "p_C", "p_D")
_META_COLUMNS = ("view", "laterality", "accession", "patient_id")


@dataclass(frozen=True)
class RunImages:
    """A run and the rows of its validation predictions, by image path.

    Attributes
    ----------
    run : :class:`mammography.runs.Run`.
    seed : the site column it becomes.
    rows : absolute image path -> row index in ``run.predictions``.
    """

    run: object
    seed: SiteSeed
    rows: dict[str, int]


# ---------------------------------------------------------------------------
# runs -> seeds and layers
# ---------------------------------------------------------------------------


def load_runs(specs: Sequence, outputs_root: str | Path = Path("outputs")) -> list:
    """Read runs given as paths, globs, names under ``outputs_root``, ``Run`` or ``CVRun``
    (:func:`mammography.runs.open_runs`).

    A cross-validation root becomes its folds (each fold validates on its own
    images, so together they cover the whole data set).

    Returns
    -------
    list of :class:`mammography.runs.Run`, in the order given.
    """
    from mammography.runs import expand_folds, open_runs

    runs = expand_folds(open_runs(specs, outputs_root=outputs_root))
    if not runs:
        raise ConfigError("no runs given to the explorer; pass --run DIR (a training run directory)")
    return runs


def seed_columns(runs: Sequence, sweeps: Sequence | None = None) -> list[SiteSeed]:
    """One :class:`SiteSeed` per run: ``seed42`` / ``seed 42`` when seeds are
    distinct, else the fold (``fold1`` / ``fold 1 (seed 42)``), else the run id.

    With ``sweeps`` (the runs' :class:`~mammography.cam.sweep.RunMaps`) the
    header metrics are those of the recomputed predictions, with the run's
    stored metrics beside them where they read differently; without, the
    stored metrics."""
    from mammography.runs import metrics_differ
    seeds = [r.seed for r in runs]
    distinct_seeds = None not in seeds and len(set(seeds)) == len(seeds)
    folds = [getattr(r, "fold", None) for r in runs]
    distinct_folds = None not in folds and len(set(folds)) == len(folds)
    out, used = [], set()
    for i, r in enumerate(runs):
        if distinct_seeds:
            key, label = f"seed{r.seed}", f"seed {r.seed}"
        elif distinct_folds:
            key = f"fold{r.fold}"
            label = f"fold {r.fold}" + (f" (seed {r.seed})" if r.seed is not None else "")
        else:
            key, label = f"run{i + 1}", str(r.run_id)
        while key in used:  # the same run given twice
            key += "b"
        used.add(key)
        stored = dict(r.metrics)
        metrics = stored if sweeps is None else sweeps[i].metrics()
        differ = sweeps is not None and metrics_differ(metrics, stored)
        # the model's outputs as this page shows them: recomputed when known, else as stored
        note = prediction_collapse(r.probabilities if sweeps is None else sweeps[i].probs) or ""
        if note and sweeps is not None:
            log.warning("%s: %s", r.run_id, note)
        out.append(SiteSeed(key=key, label=label, run=str(r.path), metrics=metrics,
                            stored_metrics=stored if differ else None, stored_source=r.metrics_source, note=note))
    return out


def site_layers(layers: Sequence[str], fuse: bool = True) -> list[SiteLayer]:
    """The layer switch for ``layers`` given shallow to deep: the last (deepest)
    first as the final block, then the others from deep to shallow, then the
    fused map."""
    if not layers:
        raise ConfigError("the explorer needs at least one CAM layer (e.g. features.8)")
    out = [SiteLayer(layers[-1], f"final block ({layers[-1]})")]
    out += [SiteLayer(name, f"intermediate ({name})") for name in reversed(layers[:-1])]
    if fuse and len(layers) > 1:
        out.append(SiteLayer(FUSED, f"fused (mean of the {len(layers)} layers)"))
    return out


def resolve_layer_names(layers: Sequence[str]) -> list[str]:
    """Check CAM layer names against EfficientNet-B0 (typos are explained) and
    expand ``"stages"`` to ``features.0`` .. ``features.8``; order kept
    (:func:`mammography.cam.layers.density_layer_names`).

    Each layer adds ``h x w`` bytes per image and run to the site (16 x 16 for
    ``features.8`` at 512 px, 256 x 256 for ``features.0``).
    """
    from mammography.cam.layers import density_layer_names, split_layer_args

    if not split_layer_args(layers):
        raise ConfigError("the explorer needs at least one CAM layer (e.g. features.8)")
    return density_layer_names(layers)


def _image_index(run_images: Sequence[RunImages]) -> list[tuple[str, int]]:
    """Every image of every run once, with its true class, sorted by path."""
    truth: dict[str, int] = {}
    for ri in run_images:
        y = ri.run.predictions["y_true"].to_numpy()
        for path, row in ri.rows.items():
            t = int(y[row])
            if path in truth and truth[path] != t:
                log.warning("explorer: %s has true class %d in one run and %d in %s; using %d",
                            path, truth[path], t, ri.seed.label, truth[path])
            truth.setdefault(path, t)
    return sorted(truth.items())


def _display_names(paths: Sequence[str]) -> list[str]:
    """Paths relative to their common folder (short, still unique)."""
    if len(paths) == 1:
        return [Path(paths[0]).name]
    try:
        root = os.path.commonpath(paths)
    except ValueError:  # different drives
        return list(paths)
    if root in paths:  # a single file's path
        root = os.path.dirname(root)
    return [os.path.relpath(p, root) for p in paths]


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# the pass over the images
# ---------------------------------------------------------------------------


def _seed_result(ri: RunImages, path: str, sweep, check, layers: Sequence[str]) -> SeedResult:
    """The prediction recomputed from the run's checkpoint (what the maps explain),
    the stored one beside it where the shared rule says they differ, and the maps."""
    i = ri.rows[path]
    maps = {name: sweep.maps[name][i] for name in layers}
    if len(layers) > 1:
        maps[FUSED] = _fused(sweep, i, layers)
    pred = int(sweep.y_pred[i])
    return SeedResult(
        pred=pred,
        confidence=float(sweep.probs[i, pred - 1]),
        probs=[float(p) for p in sweep.probs[i]],
        maps=maps,
        geometry=sweep.geometries[i],
        stored_pred=int(ri.run.stored.y_pred[i]) if check.differs[i] else None,
    )


def _fused(sweep, i: int, layers: Sequence[str]) -> np.ndarray:
    """Mean of the image's normalised layer maps (as report-pack's fused row)."""
    from mammography.cam import fuse_maps

    return fuse_maps([torch.from_numpy(np.ascontiguousarray(sweep.maps[n][i])) for n in layers], "mean").numpy()


@dataclass
class _RunAttention:
    """What the analysis module measured on one run, by image path."""

    analysis: object  # mammography.analysis.run_analysis.RunAnalysis
    index: dict[str, int]

    def numbers(self, path: str) -> tuple[float | None, bool | None, dict]:
        """(spurious score, spurious flag, details shown in the image view) of one image."""
        from mammography.analysis.maps import mass_share
        from mammography.analysis.spurious import border_band

        a, i = self.analysis, self.index[path]
        row = a.table.iloc[i]
        breast = a.regions[i].breast()
        off_tissue = (~breast | border_band(breast.shape, a.options.border_fraction) | a.regions[i].markers()
                      | a.regions[i].film_edges())
        share = mass_share(a.grid_map(i), off_tissue)
        details = {}
        for label, column in _DETAILS:
            value = row.get(column)
            if value is not None and np.isfinite(value):
                details[label] = round(float(value), 3)
        flag = row.get("spurious_flag")
        return (None if np.isnan(share) else float(share)), (None if flag is None else bool(flag)), details


def _orientation_meta(row, prepared) -> dict:
    """``{"laterality": "R (PatientID)", "view": ...}``: the value and where it came from, as the run's
    predictions record it, else as the image was prepared here."""
    meta = {}
    for key in ("laterality", "view"):
        value, source = row.get(key), row.get(f"{key}_source")
        if not isinstance(source, str) or not source or not isinstance(value, str):
            value, source = getattr(prepared, key, None), getattr(prepared, f"{key}_source", None)
        if value:
            meta[key] = f"{value} ({source})" if source else value
    return meta


#: per-seed numbers of the analysis shown in the image view (label, column)
_DETAILS = (
    ("outside breast", "outside_breast_share"),
    ("border", "border_share"),
    ("markers", "marker_share"),
    ("film edges", "film_edge_share"),
    ("ROI IoU", "iou"),
    ("ROI energy", "energy_pointing"),
    ("ROI pointing hit", "pointing_hit"),
)


def _analyse(run_images, sweeps, checks, options) -> tuple[list[_RunAttention], dict]:
    """Run the analysis module on each run's final-layer maps, then compare the runs.

    Returns the per-run measurements and image path -> ImageConsistency.
    """
    from mammography.analysis.run_analysis import analyze_maps, compare_runs
    from mammography.analysis.store import FactStore

    attention = []
    facts = FactStore(options.cache_dir)  # each image's masks found once for all the runs
    for ri, sweep, check in zip(run_images, sweeps, checks):
        run = ri.run
        analysis = analyze_maps(run, run.dataset(options.cache_dir), sweep.maps[options.layer], sweep.probs,
                                options=options, check=check, geometries=sweep.geometries, facts=facts)
        attention.append(_RunAttention(analysis, {p: i for i, p in enumerate(sweep.image_paths)}))
    consistency = {}
    if len(attention) >= 2 and set.intersection(*(set(a.index) for a in attention)):
        result = compare_runs([a.analysis for a in attention])
        consistency = {rec.image_path: rec for rec in result.records}
    return attention, consistency


def _display(owners: list[RunImages], sweeps: dict, path: str, cache_dir):
    """(prepared image, display) shown for an image: the square of the first run
    whose input holds the whole image (display None: cut from the square); when
    every run centre-cropped it, the whole image read again (display only)."""
    for ri in owners:
        if not sweeps[id(ri)].geometries[ri.rows[path]].crops:
            return ri.run.dataset(cache_dir, rows=[ri.rows[path]]).prepared(0), None
    from mammography.io import read_mammogram

    ri = owners[0]
    return ri.run.dataset(cache_dir, rows=[ri.rows[path]]).prepared(0), read_mammogram(path).pixels


def iter_site_images(
    runs: Sequence,
    layers: Sequence[str] = DEFAULT_LAYERS,
    *,
    method: str = "gradcam",
    device: str = "cpu",
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    seeds: Sequence[SiteSeed] | None = None,
    progress: bool = False,
    sweeps=None,
) -> Iterator[SiteImage]:
    """Yield one :class:`SiteImage` per validation image of any of ``runs``.

    Parameters
    ----------
    runs : :class:`mammography.runs.Run` objects (see :func:`load_runs`).
    layers : CAM layers, shallow to deep; the last is the final block, whose
        maps the attention numbers are measured on. With two or more, a fused
        map (mean of the normalised layers) is added under :data:`FUSED`.
    method : CAM method (``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam``,
        ``layercam``); each map explains the class the run predicted (its
        ``val_predictions.csv``).
    device : torch device for the models (``"auto"``: CUDA when available).
    batch_size : images per CAM call.
    cache_dir : decoded-image cache folder (see
        :class:`mammography.data.dataset.MammogramDataset`); without one every
        image is decoded three times (CAMs, analysis, display).
    seeds : the site columns of ``runs`` (default :func:`seed_columns`).
    progress : tqdm progress bar over the CAM batches.

    Yields
    ------
    SiteImage, sorted by image path; maps are in each run's model square.
    The CAMs and the analysis are computed when the first image is asked for.
    """
    from mammography.analysis.consistency import HIGH_AGREEMENT
    from mammography.analysis.run_analysis import AnalysisOptions
    from mammography.io.mask import read_mask_cell
    from mammography.machine import resolve_device

    device = resolve_device(device)
    layers = list(layers)
    if not layers:
        raise ConfigError("the explorer needs at least one CAM layer (e.g. features.8)")
    runs = list(runs)
    seeds = list(seeds) if seeds is not None else seed_columns(runs)
    run_images = [
        RunImages(run, seed, {str(p): i for i, p in enumerate(run.predictions["image_path"].astype(str))})
        for run, seed in zip(runs, seeds)
    ]
    index = _image_index(run_images)
    paths = [p for p, _ in index]
    names = _display_names(paths)

    # 1. one sweep per run: recomputed predictions and the maps of every layer (low resolution, kept)
    if sweeps is None:
        sweeps = sweep_runs(runs, layers, method, device=device, batch_size=batch_size, cache_dir=cache_dir,
                            progress=progress)
    elif callable(sweeps):  # computed on first use: after the site's output folder was checked and locked
        sweeps = sweeps()
    sweeps = {id(ri): sweep for ri, sweep in zip(run_images, sweeps)}
    checks = [ri.run.check_predictions(sweeps[id(ri)].probs) for ri in run_images]

    # 2. attention numbers from the analysis module, on the final block
    options = AnalysisOptions(method=method, layer=layers[-1], batch_size=batch_size, device=str(device),
                              cache_dir=None if cache_dir is None else Path(cache_dir))
    attention, consistency = _analyse(run_images, [sweeps[id(ri)] for ri in run_images], checks, options)

    # 3. one record per image
    for i, (path, y_true) in enumerate(index):
        owners = [k for k, ri in enumerate(run_images) if path in ri.rows]
        first = run_images[owners[0]]
        prep, display = _display([run_images[k] for k in owners], sweeps, path, cache_dir)
        g = prep.geometry
        results = {}
        for k in owners:
            ri = run_images[k]
            score, flag, details = attention[k].numbers(path)
            result = _seed_result(ri, path, sweeps[id(ri)], checks[k], layers)
            result.spurious, result.spurious_flag, result.details = score, flag, details
            results[ri.seed.key] = result
        row = first.run.predictions.iloc[first.rows[path]]
        rec = consistency.get(path)
        rho = None if rec is None else rec.mean_rank_correlation
        yield SiteImage(
            name=names[i],
            y_true=y_true,
            square=prep.square,
            geometry=g,
            results=results,
            roi=read_mask_cell(row.get("roi_path"), "ROI mask"),
            attention_agreement=None if rho is None or np.isnan(rho) else float(rho),
            high_agreement=None if rec is None else rec.agreement == HIGH_AGREEMENT,
            reasons=() if rec is None else tuple(rec.reasons),
            meta={**{c: row.get(c) for c in _META_COLUMNS if c in row.index}, **_orientation_meta(row, prep),
                  "size": f"{g.original_shape[0]} x {g.original_shape[1]} px", "path": path},
            display=display,
        )


def sweep_runs(runs: Sequence, layers: Sequence[str], method: str = "gradcam", *, device="auto",
               batch_size: int = 16, cache_dir=None, store=None, num_workers=None, progress: bool = False) -> list:
    """Every run's maps of every layer (:func:`~mammography.cam.sweep.run_maps`: a stored record
    when one matches, else one sweep per run, every layer in one pass)."""
    from mammography.cam.sweep import run_maps

    return [run_maps(run, list(layers), method, batch_size=batch_size, device=device, cache_dir=cache_dir,
                     store=store, num_workers=num_workers, progress=progress) for run in runs]


def build_explorer(
    runs: Sequence,
    out_dir: str | Path,
    *,
    layers: Sequence[str] = DEFAULT_LAYERS,
    method: str = "gradcam",
    device: str = "auto",
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    store=None,
    num_workers: int | None = None,
    outputs_root: str | Path = Path("outputs"),
    title: str | None = None,
    progress: bool = True,
) -> SiteSummary:
    """Write the explorer site for every validation image of ``runs`` into ``out_dir``.

    Parameters
    ----------
    runs : run directories (paths, globs, names under ``outputs_root``),
        cross-validation roots (their folds), or ``Run`` / ``CVRun`` objects.
    out_dir : the site folder (replaced whole; see
        :func:`mammography.web.site.build_site`).
    layers : CAM layers, shallow to deep (the last is the final block); a
        fused map is added.
    method : CAM method.
    device : torch device (``"auto"``, ``"cpu"``, ``"cuda"``).
    batch_size : images per CAM call.
    cache_dir : decoded-image cache folder and its record store of sweeps, or None.
    store : where sweep records are found and kept (default: the store of
        ``cache_dir``; see :func:`mammography.cam.sweep.run_maps`).
    num_workers : image-decoding processes of a sweep (``None``: a number that suits the machine).
    outputs_root : where bare run names are looked up.
    title : page title (default names the runs).
    progress : show a progress bar.

    Returns
    -------
    SiteSummary (``.index`` is the page to open).
    """
    from mammography.limits import MAX_BATCH_SIZE, check_int

    check_int(batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
    layers = resolve_layer_names(layers)
    run_list = load_runs(runs, outputs_root=outputs_root)
    memo: list = []

    def sweeps() -> list:
        """One sweep per run, computed once, when the first image is asked for."""
        if not memo:
            memo.append(sweep_runs(run_list, layers, method, device=device, batch_size=batch_size,
                                   cache_dir=cache_dir, store=store, num_workers=num_workers, progress=progress))
        return memo[0]

    seeds = seed_columns(run_list)
    n = len({str(p) for r in run_list for p in r.predictions["image_path"]})
    subtitle = (
        f"{n} validation images, {len(run_list)} run{'s' if len(run_list) != 1 else ''}; "
        f"{method} maps explain each run's predicted class"
    )
    return build_site(
        out_dir,
        iter_site_images(run_list, layers, method=method, device=device, batch_size=batch_size,
                         cache_dir=cache_dir, seeds=seeds, progress=progress, sweeps=sweeps),
        seeds,
        site_layers(list(layers)),
        title=title or "Grad-CAM explorer: " + ", ".join(s.label for s in seeds),
        subtitle=subtitle,
        n_images=n,
        progress=progress,
        final_seeds=lambda: seed_columns(run_list, sweeps()),
    )
