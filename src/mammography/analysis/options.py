"""The parameters of a run analysis (:class:`AnalysisOptions`, one field per ``analyze`` flag)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mammography.analysis.faithfulness import BASELINES
from mammography.analysis.localisation import ATTENTION_THRESHOLD
from mammography.analysis.spurious import BORDER_FRACTION, SpuriousThresholds
from mammography.errors import ConfigError

__all__ = ["ANALYSIS_SIZE", "DENSE_SOURCES", "MAX_ANALYSIS_SIZE", "AnalysisOptions"]

#: default longer side of the analysis grid. EfficientNet-B0's last block has
#: 1/32 of the input resolution (16 x 16 at 512 px), so 256 px still gives
#: 16 grid pixels per CAM cell while keeping every per-image step cheap.
ANALYSIS_SIZE = 256
DENSE_SOURCES = ("auto", "roi", "estimate")
#: largest analysis grid side (masks and maps are compared at this resolution; 4096 px is a full mammogram)
MAX_ANALYSIS_SIZE = 4096


@dataclass(frozen=True)
class AnalysisOptions:
    """Parameters of a run analysis (the ``analyze`` flags, one field each).

    Attributes
    ----------
    method : CAM method (``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam``, ``layercam``).
    layer : target layer (``None``: the last conv block, ``features.8``).
    analysis_size : longer side of the analysis grid in pixels; the image
        facts (breast, markers, film edges ...) are found at this resolution.
    batch_size : images per CAM batch (and perturbed copies per faithfulness batch).
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``; the per-image measurements
        run there too.
    cache_dir : decoded-image cache folder; the image facts are cached beside
        it (``None``: nothing is cached on disk).
    roi_dir : folder of ROI masks named after the images.
    manifest : a manifest CSV whose ``roi_path``, ``breast_mask_path`` and
        ``artifact_bbox`` columns are used for images the run lacks them for.
    dense_source : ``"auto"``, ``"roi"`` or ``"estimate"`` (see
        :mod:`mammography.analysis.run_analysis`).
    attention_threshold : normalised attention counted as "attended" (IoU,
        Dice, attended breast share).
    border_fraction : width of the border band, fraction of the image side.
    spurious : :class:`SpuriousThresholds`.
    max_images : analyse only the first N validation images (by path), for quick looks.
    marker_occlusion : also paint each image's markers with its background
        level and record how much the predicted class's probability drops
        (one forward pass per image with markers; needs the model).
    faithfulness, faithfulness_images, faithfulness_steps, faithfulness_baseline :
        run deletion/insertion on a seeded sample of this many images, with
        this many steps and this baseline (``zero``, ``blur``, ``mean``).
    sanity, sanity_images : run the cascading-randomisation check on a
        seeded sample of this many images.
    seed : seed of the samples, random orders, re-initialisation and bootstrap.
    progress : show tqdm progress bars.
    workers : processes that find the image facts the cache lacks (None: one
        per CPU, at most 8, once 64 or more images lack them; 1: in this process).
    """

    method: str = "gradcam"
    layer: str | None = None
    analysis_size: int = ANALYSIS_SIZE
    batch_size: int = 16
    device: str = "cpu"
    cache_dir: Path | None = None
    roi_dir: Path | None = None
    manifest: Path | None = None
    dense_source: str = "auto"
    attention_threshold: float = ATTENTION_THRESHOLD
    border_fraction: float = BORDER_FRACTION
    spurious: SpuriousThresholds = SpuriousThresholds()
    max_images: int | None = None
    marker_occlusion: bool = True
    faithfulness: bool = False
    faithfulness_images: int = 16
    faithfulness_steps: int = 20
    faithfulness_baseline: str = "zero"
    sanity: bool = False
    sanity_images: int = 8
    seed: int = 0
    progress: bool = False
    workers: int | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        from mammography.limits import MAX_BATCH_SIZE, check_float, check_int

        check_int(self.analysis_size, "--analysis-size", 16, MAX_ANALYSIS_SIZE)
        check_int(self.batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
        check_float(self.attention_threshold, "attention threshold", 0.0, 1.0)
        check_float(self.border_fraction, "border fraction", 0.0, 0.5)
        if self.dense_source not in DENSE_SOURCES:
            raise ConfigError(f"--dense-source must be one of {', '.join(DENSE_SOURCES)}, got {self.dense_source!r}")
        if self.faithfulness_baseline not in BASELINES:
            raise ConfigError(f"--faithfulness-baseline must be one of {', '.join(BASELINES)}")
        if self.faithfulness_steps < 1 or self.faithfulness_images < 1 or self.sanity_images < 1:
            raise ConfigError("faithfulness steps and the faithfulness/sanity image counts must be at least 1")
        if self.workers is not None:
            check_int(self.workers, "analysis workers", 1, 256)
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"--max-images must be at least 1, got {self.max_images}")
        if self.roi_dir is not None and not Path(self.roi_dir).is_dir():
            raise ConfigError(f"--roi-dir {self.roi_dir} is not a folder; give the folder of the ROI mask PNGs")

    def to_dict(self) -> dict:
        """JSON-ready options; the cache folder is a detail of this machine, not recorded (shipped JSON
        names no local path the user did not give)."""
        d = dataclasses.asdict(self)
        d["cache_dir"] = None
        for k in ("roi_dir", "manifest"):
            d[k] = None if d[k] is None else str(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "AnalysisOptions":
        """From :meth:`to_dict` (a written ``attention_summary.json``); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        opts = {k: v for k, v in (d or {}).items() if k in names}
        opts["spurious"] = SpuriousThresholds.from_dict(opts.get("spurious"))
        for k in ("cache_dir", "roi_dir", "manifest"):
            opts[k] = None if opts.get(k) is None else Path(opts[k])
        return cls(**opts)
