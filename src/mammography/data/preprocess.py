"""A run's preprocessing record and the one function that makes its model input.

A model must always get exactly the input it was trained on. Every run
carries one :class:`Preprocessing` record (``summary.json``'s ``preprocess``
block for this project's runs; inferred for runs of the earlier
``mammography-pipelines`` project, which record none), and every command
that feeds a model -- training, ``explain``, ``analyze``, ``report-pack``,
``explore``, the faithfulness and randomisation checks -- turns an image file
into that model's input through :meth:`Preprocessing.prepare` and
:meth:`Preprocessing.to_tensor`, never through a pipeline of its own.

Pipelines
---------
``fit-pad`` (this project)
    :func:`~mammography.io.read_mammogram` (VOI LUT, else window, else robust
    percentiles; MONOCHROME1 inverted), right breasts mirrored when
    ``normalise_laterality``, the whole image resized with its aspect ratio
    kept (antialiased) and centre-padded (:func:`~mammography.io.prepare_input`);
    the square is quantised to uint16.
``pipelines-crop`` (the earlier project)
    :func:`~mammography.io.pipelines.read_pipelines_image` (rescale, ``max -
    x`` for MONOCHROME1, 0.5/99.5 percentile window of the whole image,
    uint8) then :func:`~mammography.io.prepare.prepare_pipelines_input`
    (shorter side to the model size, bicubic without antialiasing on uint8,
    centre crop, ``to_dtype``); exact to the bit, stored as uint8.

Both end with the grey square replicated to three channels and normalised
with the run's ``mean`` / ``std``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mammography import __version__
from mammography.errors import ConfigError
from mammography.io.geometry import Geometry
from mammography.limits import MAX_IMG_SIZE, MIN_IMG_SIZE, check_img_size, check_normalisation

__all__ = [
    "FIT_PAD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMG_SIZE",
    "MIN_IMG_SIZE",
    "PIPELINES",
    "PIPELINES_CROP",
    "PREPROCESS_VERSION",
    "PreparedImage",
    "Preprocessing",
]

#: the fit-pad rule's version; a run records the one it was trained with and
#: keeps getting that input (:meth:`Preprocessing.prepare`):
#: 1: files without a display window windowed by the whole image's 0.5/99.5 %
#:    percentiles; laterality for the flip from the DICOM tags only;
#: 2: no-window files windowed from the image's 0.5 % to the breast's 99.6 %
#:    percentile; laterality from the manifest, the tags, PatientID and name
#:    tokens, then the image itself
PREPROCESS_VERSION = "2"
#: what each fit-pad version reads (for :meth:`Preprocessing.prepare` and the record)
_VERSION_RULES = {
    "1": {"percentile_window": "image", "laterality_sources": ("ImageLaterality", "Laterality"), "hints": False},
    "2": {"percentile_window": "breast", "laterality_sources": None, "hints": True},
}
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
FIT_PAD = "fit-pad"
PIPELINES_CROP = "pipelines-crop"
PIPELINES = (FIT_PAD, PIPELINES_CROP)

_DESCRIPTIONS = {
    FIT_PAD: "DICOM VOI LUT / window (else 0.5-99.5 % percentiles), whole image resized with its aspect "
             "ratio kept (antialiased) and zero-padded to a square",
    PIPELINES_CROP: "earlier mammography-pipelines rule: 0.5-99.5 % percentile window of the whole image to "
                    "8 bits, shorter side resized (bicubic, no antialiasing), centre crop",
}
_QUANT = {FIT_PAD: np.uint16, PIPELINES_CROP: np.uint8}


_ORIENTATION_FIELDS = ("laterality", "laterality_source", "view", "view_source")


@dataclass(frozen=True)
class PreparedImage:
    """An image placed into the square model input, before normalisation.

    Attributes
    ----------
    square : float32 (S, S) in [0, 1], dense = bright, padding = 0 -- the
        grey model input (for colour inputs the mean of ``channels``).
    geometry : how the original pixels map into ``square``.
    channels : float32 (3, S, S) when the model input's channels differ
        (a colour raster under the earlier project's rule), else None.
    laterality, laterality_source, view, view_source : the laterality and
        view the image was prepared with and where they came from
        (:func:`mammography.io.with_orientation`); None when unknown.
    """

    square: np.ndarray
    geometry: Geometry
    channels: np.ndarray | None = None
    laterality: str | None = None
    laterality_source: str | None = None
    view: str | None = None
    view_source: str | None = None

    def orientation(self) -> dict:
        """``laterality, laterality_source, view, view_source`` as a dict (for tables and the cache)."""
        return {k: getattr(self, k) for k in _ORIENTATION_FIELDS}

    def with_orientation(self, values) -> "PreparedImage":
        """The same image with the orientation fields of ``values`` (a dict or an object with them)."""
        if not values:
            return self
        get = values.get if isinstance(values, dict) else (lambda k: getattr(values, k, None))
        return replace(self, **{k: get(k) for k in _ORIENTATION_FIELDS})


def _triple(values, name: str) -> tuple[float, float, float]:
    try:
        arr = np.broadcast_to(np.asarray(values, dtype=np.float64), (3,))
    except (TypeError, ValueError):
        raise ConfigError(f"normalisation {name} must be a number or 3 numbers, got {values!r}") from None
    return check_normalisation(tuple(float(v) for v in arr), f"normalisation {name}", positive=(name == "std"))


@dataclass(frozen=True)
class Preprocessing:
    """How a run turns an image file into its model input.

    Parameters
    ----------
    pipeline : ``"fit-pad"`` (this project) or ``"pipelines-crop"`` (the
        earlier project); see the module docstring.
    img_size : side of the square model input, ``MIN_IMG_SIZE..MAX_IMG_SIZE``.
    mean, std : per-channel normalisation (a number or 3 numbers; ImageNet
        statistics by default).
    normalise_laterality : mirror right breasts (fit-pad only).
    version : :data:`PREPROCESS_VERSION` of the fit-pad rule the run used.
    thumbnail : pipelines-crop only: the earlier project's in-memory cache
        shrank each image to a ``img_size`` thumbnail first
        (:func:`mammography.io.pipelines.memory_cache_used`).
    source : where the record came from (for messages; not compared).
    """

    pipeline: str
    img_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    normalise_laterality: bool = False
    version: str = PREPROCESS_VERSION
    thumbnail: bool = False
    source: str = field(default="", compare=False)

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"unknown preprocessing pipeline {self.pipeline!r}; expected one of {', '.join(PIPELINES)}")
        size = int(self.img_size) if isinstance(self.img_size, np.integer) else self.img_size
        object.__setattr__(self, "img_size", check_img_size(size, "model input size (img_size)"))
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        object.__setattr__(self, "normalise_laterality", bool(self.normalise_laterality))
        if self.pipeline == PIPELINES_CROP and self.normalise_laterality:
            raise ConfigError("the earlier project's pipeline never mirrored images; normalise_laterality must be False")
        if self.pipeline == FIT_PAD and self.thumbnail:
            raise ConfigError("thumbnail belongs to the earlier project's pipeline only")
        if self.pipeline == FIT_PAD and self.version not in _VERSION_RULES:
            raise ConfigError(f"preprocessing version {self.version!r} is newer than this mammography knows "
                              f"({', '.join(_VERSION_RULES)}); update mammography to use this run")

    # -- constructors ---------------------------------------------------------
    @classmethod
    def fit_pad(cls, img_size: int, mean=None, std=None, normalise_laterality: bool = True) -> "Preprocessing":
        """This project's rule (what ``train-density`` uses)."""
        return cls(FIT_PAD, img_size, IMAGENET_MEAN if mean is None else mean, IMAGENET_STD if std is None else std,
                   normalise_laterality, source="train-density")

    @classmethod
    def pipelines_crop(cls, img_size: int, mean=None, std=None, source: str = "",
                       thumbnail: bool = False) -> "Preprocessing":
        """The earlier ``mammography-pipelines`` project's rule."""
        return cls(PIPELINES_CROP, img_size, IMAGENET_MEAN if mean is None else mean,
                   IMAGENET_STD if std is None else std, False, thumbnail=thumbnail, source=source)

    # -- record -----------------------------------------------------------------
    def to_record(self) -> dict:
        """The JSON block written as ``summary.json``'s ``preprocess``."""
        return {
            "pipeline": self.pipeline,
            "img_size": self.img_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "normalise_laterality": self.normalise_laterality,
            "version": self.version,
            "thumbnail": self.thumbnail,
            "quantisation": np.dtype(_QUANT[self.pipeline]).name,
            "description": _DESCRIPTIONS[self.pipeline],
        }

    @classmethod
    def from_record(cls, record: dict, *, img_size=None, mean=None, std=None, source: str = "") -> "Preprocessing":
        """Read a ``preprocess`` block; ``img_size``/``mean``/``std`` fill what
        older records kept at the top level of summary.json.

        A block without ``pipeline`` is this project's fit-pad rule (every
        record it wrote before the field existed).
        """
        if not isinstance(record, dict):
            raise ConfigError(f"preprocess record must be a JSON object, found {type(record).__name__}")
        pipeline = record.get("pipeline", FIT_PAD)
        return cls(
            pipeline=pipeline,
            img_size=record.get("img_size", img_size),
            mean=_or_default(record.get("mean", mean), IMAGENET_MEAN),
            std=_or_default(record.get("std", std), IMAGENET_STD),
            normalise_laterality=bool(record.get("normalise_laterality", False)),
            version=str(record.get("version", PREPROCESS_VERSION)),
            thumbnail=bool(record.get("thumbnail", False)),
            source=source,
        )

    def describe(self) -> str:
        """One line for logs and captions."""
        flip = ", right breasts mirrored" if self.normalise_laterality else ""
        thumb = ", shrunk to a thumbnail first (in-memory cache)" if self.thumbnail else ""
        return f"{self.pipeline} at {self.img_size} px ({_DESCRIPTIONS[self.pipeline]}{flip}{thumb})"

    def cache_key(self, laterality: str | None = None) -> str:
        """Everything that decides the (unnormalised) square, for the decoded-image cache."""
        hint = f";lat={laterality}" if laterality and self.normalise_laterality and self._rules()["hints"] else ""
        thumb = ";thumb=1" if self.thumbnail else ""
        return (f"pipe={self.pipeline};size={self.img_size};flip={int(self.normalise_laterality)};"
                f"prep={self.version};pkg={__version__}{thumb}{hint}")

    # -- the input ----------------------------------------------------------------
    def _rules(self) -> dict:
        return _VERSION_RULES[self.version]

    def prepare(self, path: str | Path, laterality: str | None = None) -> PreparedImage:
        """Decode ``path`` and place it into the square, exactly as this run's model saw it.

        Parameters
        ----------
        path : the image file (DICOM, PNG, JPEG, TIFF).
        laterality : ``'L'``/``'R'`` from the manifest; for fit-pad runs of
            version 2 it comes first when deciding the mirroring (version 1
            runs were mirrored by the DICOM tags alone, and still are).

        Returns
        -------
        PreparedImage
            Quantised as a cache entry would be, so a run gives the same
            tensors whether the cache is cold, warm or off.

        Raises
        ------
        ImageReadError
            The file cannot be read.
        """
        if self.pipeline == PIPELINES_CROP:
            from mammography.io.pipelines import read_pipelines_image
            from mammography.io.prepare import prepare_pipelines_input

            image = read_pipelines_image(path, thumbnail_to=self.img_size if self.thumbnail else None)
            square, geometry = prepare_pipelines_input(image, self.img_size)
            return self.dequantise(self.quantise(square), geometry)
        from mammography.io import read_mammogram

        return self.prepare_mammogram(read_mammogram(path, percentile_window=self.percentile_window), laterality)

    @property
    def percentile_window(self) -> str | None:
        """``read_mammogram``'s ``percentile_window`` this run's files are read with; None for the
        earlier project's rule, which reads them with its own reader."""
        return None if self.pipeline == PIPELINES_CROP else self._rules()["percentile_window"]

    def prepare_mammogram(self, mammogram, laterality: str | None = None) -> PreparedImage:
        """:meth:`prepare` of a fit-pad run on a file already read (by a caller that reads it for other
        work too), with ``read_mammogram(path, percentile_window=self.percentile_window)``."""
        from mammography.io import prepare_input, with_orientation

        if self.pipeline == PIPELINES_CROP:
            raise ConfigError("the earlier project's pipeline reads files with its own reader; use prepare(path)")
        rules = self._rules()
        mammogram = with_orientation(mammogram, laterality_hint=laterality if rules["hints"] else None,
                                     laterality_sources=rules["laterality_sources"])
        square, geometry = prepare_input(mammogram, size=self.img_size, normalise_laterality=self.normalise_laterality)
        return self.dequantise(self.quantise(square), geometry).with_orientation(mammogram)

    def quantise(self, square: np.ndarray) -> np.ndarray:
        """Square(s) in [0, 1] -> the stored integer form (uint16 fit-pad, uint8 earlier pipeline)."""
        dtype = _QUANT[self.pipeline]
        scale = float(np.iinfo(dtype).max)
        return np.round(np.clip(np.asarray(square, dtype=np.float32), 0.0, 1.0) * scale).astype(dtype)

    def dequantise(self, stored: np.ndarray, geometry: Geometry) -> PreparedImage:
        """The stored integer form back to a :class:`PreparedImage` (exactly
        torchvision's ``to_dtype`` scaling for the uint8 form)."""
        stored = np.asarray(stored)
        if stored.dtype != _QUANT[self.pipeline]:
            raise ConfigError(f"stored square has dtype {stored.dtype}, expected {np.dtype(_QUANT[self.pipeline])}")
        if stored.dtype == np.uint8:
            from torchvision.transforms.v2 import functional as tvf

            unit = tvf.to_dtype(torch.from_numpy(np.ascontiguousarray(stored)), torch.float32, scale=True).numpy()
        else:
            unit = stored.astype(np.float32) / np.float32(np.iinfo(stored.dtype).max)
        if unit.ndim == 3:
            return PreparedImage(unit.mean(axis=0, dtype=np.float32), geometry, unit)
        return PreparedImage(unit, geometry)

    def to_tensor(self, prepared: PreparedImage | np.ndarray) -> torch.Tensor:
        """Normalised float32 (3, S, S) model input of a prepared image (or of a
        grey (S, S) square, e.g. an occluded copy)."""
        if isinstance(prepared, PreparedImage):
            pixels = prepared.channels if prepared.channels is not None else prepared.square
        else:
            pixels = prepared
        return self.normalise(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None])[0]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """A batch of unnormalised squares -> the model input, on the batch's device.

        Parameters
        ----------
        pixels : float32 (B, S, S) grey squares (replicated to three channels)
            or (B, 3, S, S), in [0, 1].

        Returns
        -------
        float32 (B, 3, S, S): ``(x - mean) / std`` per channel. Subtraction and
        division are exactly rounded on every device, so a GPU batch equals
        :meth:`to_tensor` of its images bit for bit.
        """
        if pixels.ndim == 3:
            pixels = pixels.unsqueeze(1).expand(-1, 3, -1, -1)
        # tensors, not Python numbers: CUDA divides by a scalar as a multiplication by its reciprocal
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
        return (pixels.float() - mean) / std


def _or_default(value, default):
    return default if value is None else value
