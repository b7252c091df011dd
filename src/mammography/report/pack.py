"""``report-pack``: regenerate every article figure and table from the current checkpoints.

For every run (and every fold of a cross-validation run) :func:`report_pack`

1. loads the run (:func:`mammography.runs.load_run`), its model and its
   validation images;
2. runs the CAM engine once over all validation images in batches: the same
   pass gives the Grad-CAM maps and the model's probabilities, so checking
   the predictions costs nothing extra;
3. compares the recomputed predictions with ``val_predictions.csv``: an image
   *disagrees* when any class probability differs by more than
   ``prob_tolerance`` or the stored prediction is beaten by more than
   ``prob_tolerance`` (a near-tie flipping under a different precision is not
   a disagreement). With ``strict`` any disagreement stops the pack before
   anything is written;
4. selects samples per true class from the *recomputed* predictions
   (:func:`mammography.analysis.selection.select_per_class`) and draws the
   class-grid figure, the per-sample overlays and the layer-wise figure. Tiles
   show the original image (decoded again, downsampled to at most 1024 px,
   in its own orientation) with the heatmap mapped back through the image's
   ``Geometry``, so the whole breast is shown, unflipped and not squashed;
5. recomputes the metrics from the recomputed predictions (the table can then
   never show numbers of a model that no longer exists).

With ``analysis`` (the default) the seed runs' maps and probabilities then go
to the attention analysis (:mod:`mammography.report.attention`): cross-seed
consistency, spurious attention, localisation, patterns, optionally
faithfulness. Then it renders the LaTeX section and the Markdown block, writes
``report_manifest.json`` (every output with its SHA-256, the source run,
checkpoint hash, seed, git commit, tool version and parameters) and commits
all files at once (:class:`~mammography.atomic.FileBatch`). Figures the
previous pack in the same assets folder listed in its manifest but this pack
no longer makes (a dropped run, fewer examples) are removed. Input run
directories are only read.

Outputs (``assets`` = ``assets_dir``)::

    assets/density_gradcam_seed{SEED}.png           class grid per seed run
    assets/density_gradcam_layers_seed{SEED}.png    layer-wise figure per seed run
    assets/gradcam/seed{SEED}/class{L}_{R}_{stem}.png   per-sample overlays
    assets/{CV_ID}/fold_{K}_gradcam.png             class grid per fold (CV_ID: the CV folder's name,
                                                    other characters than letters, digits, '._-' as '-')
    assets/density_gradcam_consistency.png, consistency.csv, consistency_summary.json,
    assets/density_gradcam_spurious_seed{SEED}.png, assets/attention/seed{SEED}/...
                                                    the attention analysis (:mod:`mammography.report.attention`)
    assets/report_manifest.json
    <tex>                                           LaTeX section
    <markdown>                                      block between markers replaced
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mammography import __version__
from mammography.analysis.selection import ClassSelection, describe_strategy, select_per_class
from mammography.atomic import FileBatch, OutputLock
from mammography.errors import ConfigError, RunError
from mammography.limits import MAX_BATCH_SIZE, check_int
from mammography.report.captions import grid_marks_text, patient_groups
from mammography.report.content import CVEntry, FigureRef, ReportContent, SeedEntry
from mammography.report.figures import COLUMN_WIDTH_IN, ERROR_LEGEND, FigureLayout, GridRow, class_grid_figure
from mammography.report.figures import figure_png_bytes, layer_grid_figure
from mammography.report.latex import default_article_dir, graphics_path, render_latex
from mammography.report.markdown import render_markdown_block, update_markdown
from mammography.report.overlay import DisplayTile, get_colormap, png_bytes
from mammography.report.tables import metric_table
from mammography.report.texlayout import check_layout
from mammography.runs import DEFAULT_PROB_TOLERANCE, PredictionCheck, metrics_differ
from mammography.training.metrics import degenerate_warnings

__all__ = [
    "DEFAULT_ASSETS_DIR",
    "DEFAULT_TEX",
    "DEFAULT_MARKDOWN",
    "DEFAULT_LAYERS",
    "MANIFEST_NAME",
    "ReportOptions",
    "PredictionCheck",
    "EvaluatedRun",
    "DisplayImages",
    "ReportResult",
    "command_line",
    "canonical_method",
    "evaluate_run",
    "report_pack",
]

log = logging.getLogger(__name__)

DEFAULT_ASSETS_DIR = Path("Article/assets")
DEFAULT_TEX = Path("Article/sections/density_model.tex")
DEFAULT_MARKDOWN = Path("Article/02-density.md")
#: rows of the layer-wise figure; the class-grid figures use the last one
DEFAULT_LAYERS: tuple[str, ...] = ("features.4", "features.6", "features.8")
MANIFEST_NAME = "report_manifest.json"
CLASSES: tuple[int, ...] = (1, 2, 3, 4)
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
}
#: files a pack writes into the assets folder (a later pack removes the ones it no longer makes)
_ASSET_SUFFIXES = (".png", ".csv", ".json", ".npz")
#: most examples per class a figure can hold legibly
MAX_PER_CLASS = 32
#: how many disagreeing image paths the manifest lists
LIST_DISAGREEING = 50


@dataclass(frozen=True)
class ReportOptions:
    """Parameters of a report pack (the CLI flags, one field each).

    Attributes
    ----------
    assets_dir : folder of the figures and ``report_manifest.json``.
    tex : the generated LaTeX section (overwritten).
    markdown : Markdown file whose marked block is replaced (created if absent).
    article_dir : folder the LaTeX article is compiled from; figure paths in
        the .tex are relative to it. ``None``: the parent of ``sections/``
        when the .tex lives there, else the .tex file's folder.
    per_class : examples per density class in the class-grid figures.
    select : sample selection (``confident``, ``typical``, ``errors``, ``random``).
    method : CAM method (``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam``, ``layercam``).
    layers : target layers of the layer-wise figure; the class grids use the
        last one. ``("stages",)`` means features.0 .. features.8.
    fuse : how the layer-wise figure's fused row combines layers (``mean`` or ``layercam``).
    colormap : matplotlib colour map of the heatmaps.
    alpha : heatmap weight in the overlay, 0..1.
    device : ``auto``, ``cpu`` or ``cuda``.
    batch_size : images per CAM batch.
    strict : stop without writing anything when a checkpoint's predictions
        disagree with its ``val_predictions.csv``.
    prob_tolerance : largest probability difference still counted as agreement.
    cache_dir : decoded-image cache (``None``: the default cache folder).
    progress : show progress bars.
    command : the command line recorded in the outputs; ``None``: the
        canonical one (:func:`command_line`).
    analysis : analyse the seed runs' attention (cross-seed consistency,
        spurious attention, localisation, patterns) from the maps already
        computed for the figures (:mod:`mammography.report.attention`).
    roi_dir, manifest : where expert-region masks come from when the runs'
        predictions have no ``roi_path`` (localisation).
    faithfulness : also run deletion/insertion and the randomisation sanity
        check on ``faithfulness_images`` images per run.
    layout : how the LaTeX places wide figures and tables: ``auto`` (the
        article's column mode, detected when it is compiled), ``onecolumn``
        or ``twocolumn`` (:mod:`mammography.report.texlayout`).
    """

    assets_dir: Path = DEFAULT_ASSETS_DIR
    tex: Path = DEFAULT_TEX
    markdown: Path = DEFAULT_MARKDOWN
    article_dir: Path | None = None
    per_class: int = 4
    select: str = "confident"
    method: str = "gradcam"
    layers: tuple[str, ...] = DEFAULT_LAYERS
    fuse: str = "mean"
    colormap: str = "jet"
    alpha: float = 0.4
    device: str = "auto"
    batch_size: int = 8
    strict: bool = False
    prob_tolerance: float = DEFAULT_PROB_TOLERANCE
    cache_dir: Path | None = None
    progress: bool = True
    command: str | None = None
    analysis: bool = True
    roi_dir: Path | None = None
    manifest: Path | None = None
    faithfulness: bool = False
    faithfulness_images: int = 16
    layout: str = "auto"

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work (before any model is loaded)."""
        from mammography.analysis.selection import STRATEGIES
        from mammography.cam import FUSE_METHODS

        if not 1 <= self.per_class <= MAX_PER_CLASS:
            raise ConfigError(f"--per-class must be 1..{MAX_PER_CLASS}, got {self.per_class}")
        if os.path.abspath(self.tex) == os.path.abspath(self.markdown):
            raise ConfigError(f"--tex and --markdown both name {self.tex}; give two different files")
        if self.select not in STRATEGIES:
            raise ConfigError(f"--select must be one of {', '.join(STRATEGIES)}, got {self.select!r}")
        canonical_method(self.method)  # raises ConfigError for an unknown method
        if self.fuse not in FUSE_METHODS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSE_METHODS)}, got {self.fuse!r}")
        if not self.layers:
            raise ConfigError("--layers needs at least one layer name (e.g. features.8)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be between 0 and 1, got {self.alpha}")
        check_int(self.batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
        if not self.prob_tolerance >= 0:
            raise ConfigError(f"the probability tolerance must be >= 0, got {self.prob_tolerance}")
        if self.roi_dir is not None and not Path(self.roi_dir).is_dir():
            raise ConfigError(f"--roi-dir {self.roi_dir} is not a folder; give the folder of the ROI mask PNGs")
        if self.manifest is not None and not Path(self.manifest).is_file():
            raise ConfigError(f"--manifest {self.manifest} does not exist; give the manifest CSV of the images")
        if self.faithfulness_images < 1:
            raise ConfigError(f"--faithfulness-images must be at least 1, got {self.faithfulness_images}")
        if (self.faithfulness or self.roi_dir is not None or self.manifest is not None) and not self.analysis:
            raise ConfigError("--no-analysis turns the attention analysis off; drop --faithfulness, --roi-dir and "
                              "--manifest, or drop --no-analysis")
        get_colormap(self.colormap)
        check_layout(self.layout)
        # figure paths in the .tex must be readable by TeX: check the folders before any work
        graphics_path(Path(os.path.abspath(self.assets_dir)) / "figure.png", self.resolved_article_dir())

    def resolved_article_dir(self) -> Path:
        """The folder the article is compiled from (``article_dir``, else derived from ``tex``)."""
        return (Path(os.path.abspath(self.article_dir)) if self.article_dir is not None
                else default_article_dir(self.tex))

    def parameters(self) -> dict:
        """JSON-ready parameters for the manifest."""
        return {
            "per_class": self.per_class,
            "select": self.select,
            "method": canonical_method(self.method),
            "layers": list(self.layers),
            "fuse": self.fuse,
            "colormap": self.colormap,
            "alpha": self.alpha,
            "device": self.device,
            "batch_size": self.batch_size,
            "strict": self.strict,
            "prob_tolerance": self.prob_tolerance,
            "targets": "predicted class",
            "analysis": self.analysis,
            "roi_dir": None if self.roi_dir is None else Path(self.roi_dir).as_posix(),
            "manifest": None if self.manifest is None else Path(self.manifest).as_posix(),
            "faithfulness": self.faithfulness,
            "faithfulness_images": self.faithfulness_images,
            "layout": self.layout,
        }


def canonical_method(method: str) -> str:
    """The CAM engine's name for ``method`` (aliases such as ``grad-cam`` resolved); ConfigError if unknown."""
    from mammography.cam import create_cam

    # the engine owns the names and aliases: ask it, on a one-layer probe model
    probe = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
    return create_cam(method, probe, layers="0").name


@dataclass(eq=False)
class EvaluatedRun:
    """A run with its recomputed predictions and Grad-CAM maps.

    Attributes
    ----------
    run : the :class:`mammography.runs.Run`.
    model : the loaded model (eval mode).
    dataset : the validation images as the run's model input (``Run.dataset``).
    y_true, y_pred : (N,) labels 1..4 (``y_pred`` recomputed).
    probs : (N, 4) recomputed probabilities.
    maps : (N, h, w) float32 maps of ``layer`` for the predicted class, min-max normalised per image.
    layer : the layer of ``maps``.
    check : comparison with the stored predictions.
    metrics : metrics recomputed from ``y_true``, ``y_pred``, ``probs``.
    sweep : the :class:`~mammography.cam.sweep.RunMaps` the rest comes from
        (raw maps, logits, geometries, provenance).
    """

    run: object
    model: torch.nn.Module
    dataset: object
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    maps: np.ndarray
    layer: str
    check: PredictionCheck
    metrics: dict
    sweep: object = None

    def geometry(self, i: int):
        """How image ``i`` was placed into the model input (from the sweep, no decoding)."""
        return self.sweep.geometries[i]

    @property
    def metrics_differ(self) -> bool:
        """True when the run's stored metrics differ from the recomputed ones (at the 3 decimals shown)."""
        return metrics_differ(self.metrics, self.run.metrics)


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report_pack` wrote.

    Attributes
    ----------
    written : every file written, in order.
    assets_dir, tex, markdown, manifest : the main outputs.
    checks : one prediction check per run and fold.
    layouts : asset path (relative to ``assets_dir``, POSIX) -> :class:`FigureLayout` of each figure.
    selections : run id -> class label -> :class:`ClassSelection`.
    attention_summary : the attention analysis's summary sentences (empty without it).
    attention_seconds : wall time of the attention analysis (its figures and tables included).
    warnings : one line per run whose output does not depend on the image (collapsed predictions).
    content : what the LaTeX section and the Markdown block show (figures, captions, tables).
    """

    written: tuple[Path, ...]
    assets_dir: Path
    tex: Path
    markdown: Path
    manifest: Path
    checks: tuple[PredictionCheck, ...]
    layouts: dict = field(default_factory=dict)
    selections: dict = field(default_factory=dict)
    attention_summary: tuple[str, ...] = ()
    attention_seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    content: ReportContent | None = None


# --------------------------------------------------------------------------- evaluation


def _device(name: str) -> torch.device:
    from mammography.training.train import resolve_device

    return resolve_device(name)


def _main_layer(model: torch.nn.Module, layers) -> str:
    from mammography.cam import resolve_layers

    spec = layers[0] if len(layers) == 1 else list(layers)
    return resolve_layers(model, spec)[-1].name


def evaluate_run(run, options: ReportOptions, device: torch.device | None = None) -> EvaluatedRun:
    """Recompute predictions and CAM maps of every validation image of ``run`` in one sweep.

    Parameters
    ----------
    run : a :class:`mammography.runs.Run`.
    options : method, layers, batch size, cache folder, tolerance and progress are used.
    device : torch device (default: ``options.device`` resolved).

    Returns
    -------
    EvaluatedRun
    """
    from mammography.cam.sweep import sweep_run
    from mammography.data.dataset import default_cache_dir

    device = device or _device(options.device)
    cache_dir = options.cache_dir if options.cache_dir is not None else default_cache_dir()
    model = run.load_model(device=device)
    layer = _main_layer(model, options.layers)
    sweep = sweep_run(run, [layer], options.method, batch_size=options.batch_size, device=device,
                      cache_dir=cache_dir, progress=options.progress, model=model)
    probs = sweep.probs.astype(np.float64)
    y_true = sweep.y_true.astype(int)
    y_pred = sweep.y_pred.astype(int)
    check = run.check_predictions(probs, options.prob_tolerance)
    return EvaluatedRun(run=run, model=model, dataset=run.dataset(cache_dir=cache_dir), y_true=y_true,
                        y_pred=y_pred, probs=probs, maps=sweep.normalised(layer), layer=layer, check=check,
                        metrics=sweep.metrics(), sweep=sweep)


# --------------------------------------------------------------------------- drawing


def _class_header(label: int) -> str:
    from mammography.data.labels import CLASS_LETTERS, CLASS_NAMES

    return f"{label} ({CLASS_LETTERS[label - 1]}) \u00b7 {CLASS_NAMES[label - 1]}"


def _class_short(label: int) -> str:
    from mammography.data.labels import CLASS_LETTERS

    return f"{label} ({CLASS_LETTERS[label - 1]})"


class DisplayImages:
    """Original mammograms for drawing, decoded once per pack and downsampled.

    Tiles and overlays show the original pixels (original orientation, whole
    image, aspect kept) rather than the low-resolution model input, with the
    heatmap mapped back through the image's :class:`~mammography.io.geometry.Geometry`.
    Runs that share validation images (seeds on one split) decode each image once.

    Parameters
    ----------
    max_side : longest side of a display image in pixels (the figure tiles are
        about 250 px wide at 300 dpi; per-sample overlays use this size).
    """

    def __init__(self, max_side: int = 1024):
        self.max_side = int(max_side)
        self._images: dict[str, np.ndarray] = {}

    def image(self, path: str) -> np.ndarray:
        """float32 (h, w) in [0, 1], dense = bright, the long side at most ``max_side``."""
        if path not in self._images:
            from mammography.io import read_mammogram

            pixels = np.asarray(read_mammogram(path).pixels, dtype=np.float32)
            self._images[path] = _downsample(pixels, self.max_side)
        return self._images[path]

    def tile(self, ev: "EvaluatedRun", i: int, heatmap: np.ndarray | None = None) -> DisplayTile:
        """Display tile of validation image ``i`` of ``ev`` with its (or the given) low-resolution heatmap."""
        path = str(ev.dataset.paths[i])
        image = self.image(path)
        geometry = dataclasses.replace(ev.geometry(i), original_shape=tuple(image.shape))
        hm = geometry.to_original(ev.maps[i] if heatmap is None else heatmap)
        visible = geometry.visible_original() if geometry.crops else None
        return DisplayTile(image=image, heatmap=np.clip(hm, 0.0, 1.0), y_true=int(ev.y_true[i]),
                           y_pred=int(ev.y_pred[i]), confidence=float(ev.probs[i, ev.y_pred[i] - 1]),
                           image_path=path, visible=visible)


def _downsample(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Antialiased resize so the longer side is at most ``max_side`` (aspect kept)."""
    h, w = pixels.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return pixels
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp(0.0, 1.0).numpy()


def _select(ev: EvaluatedRun, options: ReportOptions) -> dict[int, ClassSelection]:
    seed = ev.run.seed if ev.run.seed is not None else 0
    return select_per_class(ev.y_true, ev.y_pred, ev.probs, ev.run.predictions["image_path"].astype(str),
                            per_class=options.per_class, strategy=options.select, seed=seed, classes=CLASSES,
                            groups=patient_groups(ev.run.predictions))


def _short_hash(run) -> str:
    return run.checkpoint_sha256[:8]


def _method_label(method: str) -> str:
    name = canonical_method(method)
    return METHOD_LABELS.get(name, name)


def _grid_rows(ev: EvaluatedRun, selection: dict[int, ClassSelection],
               images: DisplayImages) -> tuple[list[GridRow], dict]:
    rows, tiles = [], {}
    for label in CLASSES:
        sel = selection[label]
        cells = [images.tile(ev, i) for i in sel.indices]
        tiles[label] = list(zip(sel.indices, cells))
        note = sel.note if (sel.shortfall and sel.available) else ""
        rows.append(GridRow(header=_class_header(label), cells=cells, note=note,
                            message="no validation images" if not sel.available else "", key=label))
    return rows, tiles


def _grid_title(run, options: ReportOptions, layer: str) -> str:
    seed = "?" if run.seed is None else run.seed
    return (f"{run.run_id} \u00b7 seed {seed} \u00b7 checkpoint {_short_hash(run)} \u00b7 "
            f"{_method_label(options.method)} at {layer}")


def _shortfall_text(selection: dict[int, ClassSelection]) -> str:
    parts = []
    for label in CLASSES:
        sel = selection[label]
        if not sel.available:
            parts.append(f"class {_class_short(label)}: no validation images")
        elif sel.shortfall:
            parts.append(f"class {_class_short(label)}: {len(sel.indices)} of {sel.requested} requested")
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] + ". ") if parts else ""


def _disagreement_text(check: PredictionCheck) -> str:
    if not check.n_disagree:
        return ""
    why = f" ({check.note})" if check.note else ""
    return (f"Note: {check.n_disagree} of {check.n_images} predictions recomputed from the checkpoint differ from "
            f"the run's stored {check.source}{why}; tiles show the recomputed ones. ")


def _grid_caption(ev: EvaluatedRun, selection, options: ReportOptions, what: str) -> str:
    run = ev.run
    return (
        f"{_method_label(options.method)} heatmaps (layer {ev.layer}) of {what} (run {run.run_id}, checkpoint "
        f"{_short_hash(run)}), explaining the predicted class. Rows: BI-RADS density classes 1 (A) to 4 (D) "
        f"by ground truth; columns: up to {options.per_class} validation images per class, chosen from the "
        f"predictions recomputed from the checkpoint as "
        f"{describe_strategy(options.select, run.seed if run.seed is not None else 0)}. "
        f"{_shortfall_text(selection)}"
        f"Each tile shows the whole mammogram in its original orientation with the ground truth (GT), the "
        f"prediction (Pred) and its probability. Colour scale: {options.colormap}, attention normalised per "
        f"image from 0 (lowest) to 1 (highest). {grid_marks_text(selection, ev.y_true, ev.y_pred)}"
        f"{_crop_text(ev)}{_disagreement_text(ev.check)}"
        + "".join(f"Warning: {w}. " for w in degenerate_warnings(ev.y_true, ev.y_pred))
    ).strip()


def _crop_text(ev: EvaluatedRun) -> str:
    if not any(g.crops for g in ev.sweep.geometries):
        return ""
    return ("The model saw a centre crop of each image (the earlier project's preprocessing); the strips outside "
            "the white line were cut away before the model and carry no attention. ")


def _layer_rows(ev: EvaluatedRun, selection, options: ReportOptions,
                images: DisplayImages) -> tuple[list[GridRow], list[str]]:
    """Rows = layers + fused, columns = the first selected image of each class."""
    from mammography.cam import create_cam

    picks = {label: selection[label].indices[0] for label in CLASSES if selection[label].indices}
    order = [picks[label] for label in CLASSES if label in picks]
    layer_maps: dict[str, np.ndarray] = {}
    names: list[str] = []
    if order:
        batch = torch.stack([ev.dataset[i]["image"] for i in order])
        spec = options.layers[0] if len(options.layers) == 1 else list(options.layers)
        res = create_cam(options.method, ev.model, layers=spec)(batch)
        names = list(res.layers)
        fused = res.fuse(options.fuse).map("fused")
        norm = res.normalise().cpu()
        layer_maps = {n: norm.map(n).numpy() for n in names}
        layer_maps["fused"] = fused.cpu().numpy()
    else:
        names = list(options.layers)
    row_names = names + ["fused"]
    rows = []
    for r, name in enumerate(row_names):
        cells = []
        for label in CLASSES:
            if label not in picks:
                cells.append("no validation images")
                continue
            j = order.index(picks[label])
            cells.append(images.tile(ev, picks[label], heatmap=layer_maps[name][j]))
        header = f"fused ({options.fuse} of {', '.join(names)})" if name == "fused" else name
        rows.append(GridRow(header=header, cells=cells, show_labels=(r == len(row_names) - 1), key=name))
    return rows, names


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def _folder_slug(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``. _ -`` as one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "cv"


def _file_stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"


# --------------------------------------------------------------------------- manifest


def _git_commit(run) -> str | None:
    rep = run.summary.get("reproducibility") if isinstance(run.summary, dict) else None
    return rep.get("git_commit") if isinstance(rep, dict) else None


def _clean(value):
    """JSON-ready, stable numbers (rounded floats, NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, Path):
        return value.as_posix()
    return value


def _run_record(ev: EvaluatedRun) -> dict:
    run = ev.run
    return {
        "run_id": run.run_id,
        "path": Path(run.path).as_posix(),
        "seed": run.seed,
        "fold": run.fold,
        "checkpoint": Path(run.checkpoint).as_posix(),
        "checkpoint_sha256": run.checkpoint_sha256,
        "git_commit": _git_commit(run),
        "n_val": ev.check.n_images,
        "n_disagree": ev.check.n_disagree,
        "disagreeing": list(ev.check.disagreeing[:LIST_DISAGREEING]),
        "max_prob_diff": ev.check.max_prob_diff,
        "stored_predictions": ev.check.source,
        "stored_note": ev.check.note or None,
        "metrics_recomputed": ev.metrics,
        "metrics_stored": {k: v for k, v in run.metrics.items()},
        "metrics_stored_source": run.metrics_source,
        "writer": run.writer,
        "preprocessing": run.preprocessing.to_record(),
        "preprocessing_source": run.preprocessing.source,
        "layer": ev.layer,
    }


@dataclass
class _Pack:
    """Outputs being assembled: staged files plus their manifest entries."""

    options: ReportOptions
    assets_dir: Path
    batch: FileBatch = field(default_factory=FileBatch)
    images: DisplayImages = field(default_factory=DisplayImages)
    assets: list = field(default_factory=list)
    layouts: dict = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.assets_dir)).as_posix()

    def add(self, path: Path, data: bytes | str, kind: str, ev: EvaluatedRun | None = None, **extra) -> Path:
        path = self.batch.add(path, data)
        entry = {"path": self.rel(path), "kind": kind, "sha256": self.batch.sha256(path)}
        if ev is not None:
            entry.update({
                "run_id": ev.run.run_id,
                "source_run": Path(ev.run.path).as_posix(),
                "seed": ev.run.seed,
                "checkpoint_sha256": ev.run.checkpoint_sha256,
                "git_commit": _git_commit(ev.run),
            })
        entry.update(extra)
        self.assets.append(entry)
        return path

    def figure(self, path: Path, fig_and_layout, kind: str, ev: EvaluatedRun, **extra) -> FigureLayout:
        fig, layout = fig_and_layout
        self.add(path, figure_png_bytes(fig), kind, ev, width_in=layout.width_in, height_in=layout.height_in,
                 dpi=layout.dpi, **extra)
        self.layouts[self.rel(path)] = layout
        return layout


def _figure_ref(path: Path, layout: FigureLayout, label: str, caption: str, alt: str) -> FigureRef:
    return FigureRef(path=path, label=label, caption=caption, alt=alt, wide=layout.width_in > COLUMN_WIDTH_IN + 1e-6)


# --------------------------------------------------------------------------- the pack


def _load_inputs(run_specs, cv_specs, outputs_root):
    from mammography.runs import is_cv_root, load_cv_run, load_run, resolve_runs

    runs, cvs = [], []
    for path in resolve_runs(list(run_specs), outputs_root) if run_specs else []:
        if is_cv_root(path):
            log.info("%s is a cross-validation run: drawing its folds as with --cv-run", path)
            cvs.append(load_cv_run(path))
        else:
            runs.append(load_run(path))
    for path in resolve_runs(list(cv_specs), outputs_root) if cv_specs else []:
        cvs.append(load_cv_run(path))
    if not runs and not cvs:
        raise ConfigError("nothing to report: give at least one --run or --cv-run")
    for run in runs:
        if run.seed is None:
            raise RunError(f"{run.path}/summary.json has no seed; the figure name needs it (density_gradcam_seed{{SEED}}.png)")
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
    runs.sort(key=lambda r: r.seed)
    cvs.sort(key=lambda c: c.root.name)
    for note in [n for cv in cvs for n in cv.notes] + [n for r in runs + [f for cv in cvs for f in cv.folds] for n in r.notes]:
        log.warning("%s", note)
    return runs, cvs


def _previous_assets(assets_dir: Path) -> list[Path]:
    """Files the previous pack in ``assets_dir`` listed (to remove the ones no longer produced)."""
    from mammography.errors import MammographyError
    from mammography.io.files import read_json_file

    manifest = assets_dir / MANIFEST_NAME
    if not manifest.is_file():
        return []
    try:
        entries = read_json_file(manifest, "report manifest", RunError).get("assets", [])
    except (MammographyError, AttributeError):
        return []
    if not isinstance(entries, list):
        return []
    root = Path(os.path.abspath(assets_dir))
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kind") in ("latex", "markdown") or "path" not in entry:
            continue
        path = Path(os.path.abspath(root / str(entry["path"])))
        if root in path.parents and path.suffix in _ASSET_SUFFIXES:  # never outside the assets folder
            out.append(path)
    return out


def report_pack(
    runs=(),
    cv_runs=(),
    options: ReportOptions | None = None,
    *,
    outputs_root: str | Path = "outputs",
) -> ReportResult:
    """Regenerate the Grad-CAM figures, tables, LaTeX and Markdown from trained runs.

    Parameters
    ----------
    runs : ``--run`` specs: run directories, names relative to the default
        outputs folder (``results_4`` -> ``outputs/mammo_efficientnetb0_density/results_4``)
        or globs (see :func:`mammography.runs.resolve_runs`).
    cv_runs : ``--cv-run`` specs: cross-validation roots (same forms).
    options : everything else (:class:`ReportOptions`).
    outputs_root : the outputs folder the relative specs are looked up in.

    Returns
    -------
    ReportResult

    Raises
    ------
    RunError, CheckpointError, ImageReadError
        A missing or broken run, checkpoint or image (nothing is written).
    RunError
        With ``options.strict``, when a checkpoint's recomputed predictions
        disagree with its ``val_predictions.csv`` (nothing is written).
    ConfigError
        Bad parameters.
    """
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    cv_runs = [cv_runs] if isinstance(cv_runs, (str, Path)) else list(cv_runs)
    options = options or ReportOptions()
    options.validate()
    command = options.command or command_line(runs, cv_runs, options)
    assets_dir = Path(os.path.abspath(options.assets_dir))
    tex_path = Path(os.path.abspath(options.tex))
    md_path = Path(os.path.abspath(options.markdown))
    # taken before any expensive work: checks the outputs can be written, repairs an interrupted pack
    with OutputLock(folders=[assets_dir], files=[tex_path, md_path], command="mammography report-pack") as lock:
        return _report_pack(runs, cv_runs, options, command, Path(outputs_root), lock)


def _report_pack(runs, cv_runs, options: ReportOptions, command: str, outputs_root: Path,
                 lock: OutputLock) -> ReportResult:
    seed_runs, cvs = _load_inputs(runs, cv_runs, outputs_root)
    device = _device(options.device)

    # 1. recompute everything (the expensive part), check before drawing anything
    evaluated = [evaluate_run(run, options, device) for run in seed_runs]
    cv_evaluated = [(cv, [evaluate_run(fold, options, device) for fold in cv.folds]) for cv in cvs]
    checks = [ev.check for ev in evaluated] + [ev.check for _, folds in cv_evaluated for ev in folds]
    for check in checks:
        (log.warning if check.n_disagree else log.debug)("%s", check.message())
    warnings = _collapse_warnings(evaluated + [f for _, folds in cv_evaluated for f in folds])
    for line in warnings:
        log.warning("%s", line)
    for ev in evaluated + [f for _, folds in cv_evaluated for f in folds]:
        for warning in degenerate_warnings(ev.y_true, ev.y_pred, what=f"{ev.run.run_id}'s model"):
            log.warning("%s", warning)
    bad = [c for c in checks if c.n_disagree]
    if bad and options.strict:
        raise RunError(
            "--strict: predictions recomputed from the checkpoint differ from the stored ones, nothing written. "
            + " | ".join(c.message() for c in bad)
        )

    # 2. draw and render into memory
    assets_dir = Path(os.path.abspath(options.assets_dir))
    pack = _Pack(options=options, assets_dir=assets_dir)
    seed_entries, selections = [], {}
    for ev in evaluated:
        seed_entries.append(_seed_outputs(pack, ev, selections))
    cv_entries = [_cv_outputs(pack, cv, folds, selections) for cv, folds in cv_evaluated]

    attention, analysis_record, attention_seconds = None, None, 0.0
    if options.analysis and evaluated:
        attention, analysis_record, attention_seconds = _attention(pack, evaluated, options)

    seed_table = metric_table(_metric_rows([(str(ev.run.seed), ev) for ev in evaluated])) if evaluated else None
    explained = evaluated or [f for _, fs in cv_evaluated for f in fs]
    main_layer = explained[0].layer if explained else options.layers[-1]
    content = ReportContent(
        seeds=tuple(seed_entries), seed_table=seed_table, cvs=tuple(cv_entries), method=canonical_method(options.method),
        layer=main_layer, selection=describe_strategy(options.select), per_class=options.per_class,
        command=command, version=__version__, attention=attention,
        notes=tuple(line[0].upper() + line[1:] + "." for line in warnings),
    )
    tex_path = Path(os.path.abspath(options.tex))
    md_path = Path(os.path.abspath(options.markdown))
    article_dir = options.resolved_article_dir()
    pack.add(tex_path, render_latex(content, article_dir, options.layout), "latex")
    pack.add(md_path, update_markdown(md_path, render_markdown_block(content, md_path)), "markdown")

    manifest = {
        "tool": "mammography report-pack",
        "version": __version__,
        "command": command,
        "parameters": options.parameters(),
        "article_dir": article_dir.as_posix(),
        "runs": [_run_record(ev) for ev in evaluated],
        "cv_runs": [
            {"cv_id": cv.root.name, "path": cv.root.as_posix(), "seed": cv.seed, "k": cv.k,
             "folds": [_run_record(f) for f in folds]}
            for cv, folds in cv_evaluated
        ],
        "attention": analysis_record,
        "assets": pack.assets,
    }
    manifest_path = pack.batch.add(assets_dir / MANIFEST_NAME,
                                   json.dumps(_clean(manifest), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    for stale in _previous_assets(assets_dir):
        pack.batch.remove(stale, prune_up_to=assets_dir)

    # 3. all files at once, through the journal (report_manifest.json last)
    written = pack.batch.commit(lock.journal(assets_dir))
    return ReportResult(written=tuple(written), assets_dir=assets_dir, tex=tex_path, markdown=md_path,
                        manifest=manifest_path, checks=tuple(checks), layouts=pack.layouts, selections=selections,
                        attention_summary=attention.sentences if attention is not None else (),
                        attention_seconds=attention_seconds, warnings=tuple(warnings), content=content)


def _collapse_warnings(evaluated) -> list[str]:
    """``"<run id>: the model's output does not depend on the image ..."`` per collapsed run."""
    from mammography.training.metrics import prediction_collapse

    return [f"{ev.run.run_id}: {note}" for ev in evaluated if (note := prediction_collapse(ev.probs))]


def _attention(pack: _Pack, evaluated: list[EvaluatedRun], options: ReportOptions):
    """Analyse the seed runs from their maps; stage the files; (report entry, manifest record, seconds)."""
    import time

    from mammography.data.dataset import default_cache_dir
    from mammography.report.attention import AttentionSettings, analyse_runs, analysis_options, attention_outputs

    t0 = time.perf_counter()
    settings = AttentionSettings(roi_dir=options.roi_dir, manifest=options.manifest,
                                 faithfulness=options.faithfulness, faithfulness_images=options.faithfulness_images)
    method = canonical_method(options.method)
    cache = options.cache_dir if options.cache_dir is not None else default_cache_dir()

    def options_for(ev):
        return analysis_options(settings, method=method, layer=ev.layer, batch_size=options.batch_size,
                                device=options.device, cache_dir=cache, progress=options.progress)

    analyses, consistency, notes = analyse_runs(evaluated, options_for)
    for note in notes:
        log.warning("%s", note)
    entry = attention_outputs(pack, analyses, evaluated, consistency, notes)
    seconds = time.perf_counter() - t0
    log.info("attention analysis of %d run(s): %.1f s", len(analyses), seconds)
    record = {
        "runs": {str(ev.run.seed): {k: a.summary.get(k) for k in ("n_images", "n_with_roi", "dense_source",
                                                                  "spurious", "faithfulness", "sanity")}
                 for ev, a in zip(evaluated, analyses)},
        "consistency": None if consistency is None else consistency.summary,
        "notes": notes,
    }
    return entry, record, seconds


def _seed_outputs(pack: _Pack, ev: EvaluatedRun, selections: dict) -> SeedEntry:
    """Class grid, layer figure and per-sample overlays of one seed run."""
    options, run = pack.options, ev.run
    selection = _select(ev, options)
    selections[run.run_id] = selection
    rows, tiles = _grid_rows(ev, selection, pack.images)
    grid_path = pack.assets_dir / f"density_gradcam_seed{run.seed}.png"
    layout = pack.figure(grid_path, class_grid_figure(rows, title=_grid_title(run, options, ev.layer),
                                                      n_columns=options.per_class, colormap=options.colormap,
                                                      alpha=options.alpha),
                         "class_grid", ev, layer=ev.layer)
    figure = _figure_ref(grid_path, layout, f"fig:density-gradcam-seed{run.seed}",
                         _grid_caption(ev, selection, options, f"the seed-{run.seed} density model"),
                         f"Grad-CAM examples per density class, seed {run.seed}")

    for label in CLASSES:
        for rank, (i, tile) in enumerate(tiles[label], start=1):
            name = f"class{label}_{rank:02d}_{_file_stem(tile.image_path)}.png"
            pack.add(pack.assets_dir / "gradcam" / f"seed{run.seed}" / name,
                     png_bytes(tile.rgb(options.alpha, options.colormap)), "overlay", ev,
                     image_path=tile.image_path, y_true=tile.y_true, y_pred=tile.y_pred,
                     confidence=tile.confidence, layer=ev.layer)

    layer_rows, names = _layer_rows(ev, selection, options, pack.images)
    layer_path = pack.assets_dir / f"density_gradcam_layers_seed{run.seed}.png"
    layer_layout = pack.figure(
        layer_path,
        layer_grid_figure(layer_rows, title=_grid_title(run, options, ", ".join(names) + " + fused"),
                          column_headers=[_class_short(label) for label in CLASSES], colormap=options.colormap,
                          alpha=options.alpha),
        "layer_grid", ev, layers=names, fuse=options.fuse,
    )
    layer_caption = (
        f"{_method_label(options.method)} of the seed-{run.seed} model (run {run.run_id}, checkpoint "
        f"{_short_hash(run)}) at several depths ({', '.join(names)}) and fused ({options.fuse} of the "
        f"per-layer maps normalised to 0-1). Columns: one validation image per true density class, the first "
        f"image of that class in the seed-{run.seed} class figure; annotations under the last row. "
        f"Colour scale: {options.colormap}, 0 (lowest) to 1 (highest attention)."
        + (f" Marks: {ERROR_LEGEND}." if layer_layout.n_misclassified else "")
    )
    layer_figure = _figure_ref(layer_path, layer_layout, f"fig:density-gradcam-layers-seed{run.seed}",
                               layer_caption, f"Grad-CAM at several depths, seed {run.seed}")
    return SeedEntry(run_id=run.run_id, seed=int(run.seed), checkpoint_short=_short_hash(run),
                     n_val=ev.check.n_images, n_disagree=ev.check.n_disagree, figure=figure,
                     layer_figure=layer_figure)


def _cv_outputs(pack: _Pack, cv, folds: list[EvaluatedRun], selections: dict) -> CVEntry:
    """Fold figures and the per-fold metrics table of one cross-validation run."""
    options = pack.options
    cv_id = cv.root.name
    figures = []
    for ev in folds:
        selection = _select(ev, options)
        selections[ev.run.run_id] = selection
        rows, _ = _grid_rows(ev, selection, pack.images)
        number = ev.run.fold if ev.run.fold is not None else len(figures) + 1
        # the folder name reaches \includegraphics: a slug, never the raw folder name
        path = pack.assets_dir / _folder_slug(cv_id) / f"fold_{number}_gradcam.png"
        layout = pack.figure(path, class_grid_figure(rows, title=_grid_title(ev.run, options, ev.layer),
                                                     n_columns=options.per_class, colormap=options.colormap,
                                                     alpha=options.alpha),
                             "fold_grid", ev, layer=ev.layer, fold=number)
        caption = _grid_caption(ev, selection, options, f"fold {number} of the {cv.k}-fold cross-validation {cv_id}")
        figures.append(_figure_ref(path, layout, f"fig:density-cv-{_slug(cv_id)}-fold{number}", caption,
                                   f"Grad-CAM examples, {cv_id} fold {number}"))
    evaluated = {ev.run.fold: ev for ev in folds}
    rows = []
    for record in cv.records:
        ev = evaluated.get(record.number)
        if ev is not None:
            rows += _metric_rows([(str(record.number), ev)])
        else:
            rows.append((f"{record.number} (stored)", record.metrics, False))
    table = metric_table(rows)
    return CVEntry(cv_id=cv_id, seed=cv.seed, k=cv.k, table=table, table_label=f"tab:density-cv-{_slug(cv_id)}",
                   figures=tuple(figures), caption=_cv_caption(cv, evaluated))


def _cv_caption(cv, evaluated: dict) -> str:
    """Where each fold's numbers come from, and what the run's files could not give."""
    n = len(evaluated)
    if n == len(cv.records):
        text = "validation metrics per fold, recomputed from each fold's checkpoint."
    elif n:
        text = (f"validation metrics per fold; {n} of {len(cv.records)} folds recomputed from their checkpoints, "
                "the rows marked (stored) as the run's files state them.")
    else:
        text = "validation metrics per fold as the run's files state them (no fold could be recomputed)."
    text += " Last row: mean \u00b1 sample standard deviation over the recomputed folds." if n else ""
    notes = sorted({r.metrics_note for r in cv.records if r.metrics_note and r.number not in evaluated})
    missing = [r.missing.split(": ", 1)[-1] for r in cv.records if r.missing]
    if notes:
        text += " Missing values: " + "; ".join(notes) + "."
    if missing:
        text += " Not recomputed: " + "; ".join(sorted(set(missing))) + "."
    return text


def _metric_rows(labelled: list[tuple[str, EvaluatedRun]]) -> list[tuple[str, dict, bool]]:
    """Table rows: the metrics recomputed from the checkpoint, and under a run whose
    stored metrics read differently a ``(stored)`` row that the mean and sd leave out."""
    rows = []
    for label, ev in labelled:
        rows.append((label, ev.metrics, True))
        if ev.metrics_differ:
            rows.append((f"{label} (stored)", ev.run.metrics, False))
    return rows


def command_line(runs=(), cv_runs=(), options: ReportOptions | None = None) -> str:
    """The canonical command that regenerates a pack (recorded in the TeX, Markdown and manifest).

    Built from the values, not from ``sys.argv``, so the same inputs give the
    same text however the pack was started; the output paths are always
    named, other options only when they differ from their defaults.
    """
    options = options or ReportOptions()
    default = ReportOptions()
    argv = ["mammography", "report-pack"]
    for spec in runs:
        argv += ["--run", str(spec)]
    for spec in cv_runs:
        argv += ["--cv-run", str(spec)]
    # the outputs are always named, so the command says where it writes
    argv += ["--assets-dir", str(options.assets_dir), "--tex", str(options.tex), "--markdown", str(options.markdown)]
    flags = [("article_dir", "--article-dir"), ("per_class", "--per-class"), ("select", "--select"),
             ("method", "--method"), ("colormap", "--colormap"), ("alpha", "--alpha"), ("fuse", "--fuse"),
             ("layout", "--layout")]
    for name, flag in flags:
        value = getattr(options, name)
        if value is not None and str(value) != str(getattr(default, name)):
            argv += [flag, str(value)]
    if tuple(options.layers) != tuple(default.layers):
        argv += ["--layers", *options.layers]
    if options.strict:
        argv.append("--strict")
    if not options.analysis:
        argv.append("--no-analysis")
    for name, flag in (("roi_dir", "--roi-dir"), ("manifest", "--manifest")):
        if getattr(options, name) is not None:
            argv += [flag, str(getattr(options, name))]
    if options.faithfulness:
        argv.append("--faithfulness")
        if options.faithfulness_images != default.faithfulness_images:
            argv += ["--faithfulness-images", str(options.faithfulness_images)]
    return shlex.join(argv)
