"""report-pack's parameters: :class:`ReportOptions` (one field per flag) and the command that regenerates a pack."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from mammography.cam.layers import density_layer_names
from mammography.cam.sweep import DEFAULT_BATCH_SIZE, DEFAULT_LAYERS, canonical_method
from mammography.data.dataset import default_cache_dir
from mammography.errors import ConfigError
from mammography.limits import MAX_BATCH_SIZE, check_int
from mammography.report.latex import default_article_dir, graphics_path
from mammography.report.overlay import get_colormap
from mammography.report.texlayout import check_layout
from mammography.runs import DEFAULT_PROB_TOLERANCE

__all__ = [
    "DEFAULT_ASSETS_DIR",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LAYERS",
    "DEFAULT_MARKDOWN",
    "DEFAULT_TEX",
    "MAX_PER_CLASS",
    "ReportOptions",
    "command_line",
]

DEFAULT_ASSETS_DIR = Path("Article/assets")
DEFAULT_TEX = Path("Article/sections/density_model.tex")
DEFAULT_MARKDOWN = Path("Article/02-density.md")
#: most examples per class a figure can hold legibly
MAX_PER_CLASS = 32


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
    layers : target layers of the layer-wise figure (:data:`DEFAULT_LAYERS`:
        two intermediate depths and the final block); the class grids use the
        last one. ``("stages",)`` means features.0 .. features.8.
    fuse : how the layer-wise figure's fused row combines layers (``mean`` or ``layercam``).
    colormap : matplotlib colour map of the heatmaps.
    alpha : heatmap weight in the overlay, 0..1.
    device : ``auto``, ``cpu`` or ``cuda``.
    batch_size : images per CAM batch.
    num_workers : image-decoding processes of the sweep (``None``: a number that suits the machine).
    strict : stop without writing anything when a checkpoint's predictions
        disagree with its ``val_predictions.csv``.
    prob_tolerance : largest probability difference still counted as agreement.
    cache_dir : decoded-image cache and its record store of sweeps (default:
        :func:`~mammography.data.dataset.default_cache_dir`; ``None``: no cache,
        every image decoded and every map computed anew).
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
    marker_occlusion : paint each image's markers over and measure how the
        prediction changes (one forward pass per image whose markers the
        model saw); ``False`` flags markers by the heatmap share alone.
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
    batch_size: int = DEFAULT_BATCH_SIZE
    num_workers: int | None = None
    strict: bool = False
    prob_tolerance: float = DEFAULT_PROB_TOLERANCE
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    progress: bool = True
    command: str | None = None
    analysis: bool = True
    roi_dir: Path | None = None
    manifest: Path | None = None
    faithfulness: bool = False
    faithfulness_images: int = 16
    marker_occlusion: bool = True
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
        density_layer_names(self.layers)  # ... for an unknown layer
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
        if (self.faithfulness or self.roi_dir is not None or self.manifest is not None
                or not self.marker_occlusion) and not self.analysis:
            raise ConfigError("--no-analysis turns the attention analysis off; drop --faithfulness, --roi-dir, "
                              "--manifest and --no-marker-occlusion, or drop --no-analysis")
        get_colormap(self.colormap)
        check_layout(self.layout)
        # figure paths in the .tex must be readable by TeX: check the folders before any work
        graphics_path(Path(os.path.abspath(self.assets_dir)) / "figure.png", self.resolved_article_dir())

    def resolved_article_dir(self) -> Path:
        """The folder the article is compiled from (``article_dir``, else derived from ``tex``)."""
        return (Path(os.path.abspath(self.article_dir)) if self.article_dir is not None
                else default_article_dir(self.tex))

    def layer_names(self) -> list[str]:
        """``layers`` as the density model's layer names (``stages`` expanded), shallow to deep as given."""
        return density_layer_names(self.layers)

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
            "marker_occlusion": self.marker_occlusion,
            "layout": self.layout,
        }


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
    if not options.marker_occlusion:
        argv.append("--no-marker-occlusion")
    return shlex.join(argv)
