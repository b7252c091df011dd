"""report-pack's inputs: the runs it reports on, each with its recomputed predictions and maps.

:func:`load_inputs` reads the ``--run`` and ``--cv-run`` specs (one seed per
figure name); :func:`evaluate_run` gets a run's predictions and maps of
every layer the pack draws from :func:`mammography.cam.sweep.run_maps` (a
stored sweep record when one matches, else one batched sweep) and compares
the predictions with the run's ``val_predictions.csv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from mammography.errors import ConfigError, RunError
from mammography.report.options import ReportOptions
from mammography.runs import PredictionCheck, metrics_differ

__all__ = ["EvaluatedRun", "evaluate_run", "load_inputs"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class EvaluatedRun:
    """A run with its recomputed predictions and Grad-CAM maps.

    Attributes
    ----------
    run : the :class:`mammography.runs.Run`.
    dataset : the validation images as the run's model input (``Run.dataset``).
    y_true, y_pred : (N,) labels 1..4 (``y_pred`` recomputed).
    probs : (N, 4) recomputed probabilities.
    maps : (N, h, w) float32 maps of ``layer`` for the predicted class, min-max normalised per image.
    layer : the layer of ``maps`` (the deepest of the pack's layers).
    check : comparison with the stored predictions.
    metrics : metrics recomputed from ``y_true``, ``y_pred``, ``probs``.
    sweep : the :class:`~mammography.cam.sweep.RunMaps` the rest comes from
        (raw maps of every layer of the pack, logits, geometries, provenance).
    device : where :attr:`model` is loaded.
    """

    run: object
    dataset: object
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    maps: np.ndarray
    layer: str
    check: PredictionCheck
    metrics: dict
    sweep: object = None
    device: torch.device = torch.device("cpu")
    _model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def model(self) -> torch.nn.Module:
        """The run's model (eval mode), loaded on first use: a pack whose maps came from a stored
        record needs it only for the analysis's extra forward passes."""
        if self._model is None:
            self._model = self.run.load_model(device=self.device)
        return self._model

    def geometry(self, i: int):
        """How image ``i`` was placed into the model input (from the sweep, no decoding)."""
        return self.sweep.geometries[i]

    @property
    def metrics_differ(self) -> bool:
        """True when the run's stored metrics differ from the recomputed ones (at the 3 decimals shown)."""
        return metrics_differ(self.metrics, self.run.metrics)


def evaluate_run(run, options: ReportOptions, device: torch.device | None = None, *, store=None,
                 layers=None) -> EvaluatedRun:
    """Recomputed predictions and CAM maps of every validation image of ``run``.

    Parameters
    ----------
    run : a :class:`mammography.runs.Run`.
    options : method, layers, batch size, workers, cache folder, tolerance and progress are used.
    device : torch device (default: ``options.device`` resolved).
    store : where sweep records are found and kept (default: the store of
        ``options.cache_dir``; see :func:`mammography.cam.sweep.run_maps`).
    layers : the layers to get (default: ``options.layers``); the pack's
        layers must be among them (more, e.g. the explorer's, make one record
        serve both).

    Returns
    -------
    EvaluatedRun
    """
    from mammography.cam.sweep import run_maps
    from mammography.machine import resolve_device

    device = device or resolve_device(options.device)
    names = options.layer_names()
    wanted = list(dict.fromkeys([*(layers or []), *names]))
    sweep = run_maps(run, wanted, options.method, batch_size=options.batch_size, device=device,
                     cache_dir=options.cache_dir, store=store, num_workers=options.num_workers,
                     progress=options.progress)
    layer = names[-1]
    probs = sweep.probs.astype(np.float64)
    check = run.check_predictions(probs, options.prob_tolerance)
    return EvaluatedRun(run=run, dataset=run.dataset(cache_dir=options.cache_dir), y_true=sweep.y_true.astype(int),
                        y_pred=sweep.y_pred.astype(int), probs=probs, maps=sweep.normalised(layer), layer=layer,
                        check=check, metrics=sweep.metrics(), sweep=sweep, device=device)


def load_inputs(run_specs, cv_specs, outputs_root) -> tuple[list, list]:
    """(seed runs sorted by seed, cross-validation runs sorted by folder name) of the pack.

    A cross-validation root given with ``--run`` is drawn as with ``--cv-run``.

    Raises
    ------
    ConfigError
        Nothing given; two runs with one seed or two CV runs with one folder name (their files would collide).
    RunError
        A run without a seed (its figure name needs one).
    """
    from mammography.runs import CVRun, open_runs

    items = open_runs(list(run_specs), outputs_root) if run_specs else []
    runs = [item for item in items if not isinstance(item, CVRun)]
    cvs = [item for item in items if isinstance(item, CVRun)]
    for cv in cvs:
        log.info("%s is a cross-validation run: drawing its folds as with --cv-run", cv.root)
    cvs += open_runs(list(cv_specs), outputs_root, cv_only=True) if cv_specs else []
    if not runs and not cvs:
        raise ConfigError("nothing to report: give at least one --run or --cv-run")
    for run in runs:
        if run.seed is None:
            raise RunError(f"{run.path}/summary.json has no seed; the figure name needs it "
                           "(density_gradcam_seed{SEED}.png)")
    seeds: dict[int, object] = {}
    for run in runs:
        if run.seed in seeds:
            raise ConfigError(
                f"two runs have seed {run.seed} ({seeds[run.seed].path} and {run.path}); their figures would "
                "share one name: pass only one of them"
            )
        seeds[run.seed] = run
    cv_ids = [cv.root.name for cv in cvs]
    if len(set(cv_ids)) != len(cv_ids):
        raise ConfigError(f"two cross-validation runs share a folder name ({', '.join(cv_ids)}); pass one of each")
    return sorted(runs, key=lambda r: r.seed), sorted(cvs, key=lambda c: c.root.name)
