"""Read a DICOM mammogram into a :class:`~mammography.io.mammogram.Mammogram`.

The display pipeline of DICOM PS3.3 C.11 is applied in order:

1. the Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence,
   :func:`pydicom.pixels.apply_modality_lut`);
2. the VOI transform, scaled to [0, 1]:

   * the first item of the VOI LUT Sequence (:func:`pydicom.pixels.apply_voi`),
     normalised by the LUT's own smallest and largest entries (vendors are
     known to declare 16-bit LUTs that hold 12-bit values; the LUT's range is
     the display range it means);
   * else the first Window Center/Width pair, with VOILUTFunction LINEAR
     (default), LINEAR_EXACT or SIGMOID (formulas of C.11.2.1.2/C.11.2.1.3);
   * else (or when the window is invalid) robust percentiles: 0.5 % of the
     image, 99.6 % of the breast's pixels
     (:func:`~mammography.io.window.window_breast_percentiles`);

3. MONOCHROME1 images are inverted last (after the VOI transform, where the
   standard puts the presentation inversion), so dense tissue is bright.

Everything a user's file can get wrong becomes an
:class:`~mammography.errors.ImageReadError` that names the file: not DICOM,
unparseable or truncated, a corrupt header value (pydicom converts values
when they are first used, so one bad byte can surface anywhere), no pixel
data, several frames, colour, implausible dimensions or decoded size
(checked from the header, before any pixel is decoded: at most
:data:`~mammography.io.mammogram.MAX_PIXELS` pixels, and RLE data no more
than 64 times smaller than the image they decode to, the most RLE can
compress), a Rescale Slope/Intercept or Window Center/Width that is not a
finite number, a transfer syntax without an installed decoder, or pixel data
that fail to decode.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mammography.errors import ImageReadError
from mammography.io.mammogram import Mammogram, check_dimensions, looks_like_bare_dicom
from mammography.io.orientation import VIEWS, normalise_laterality, orientation_from_path, orientation_from_text
from mammography.io.window import window_without_display

__all__ = ["decode_dicom", "read_dicom", "window_to_unit"]

log = logging.getLogger(__name__)

#: Elements larger than this are read only when used, so the header checks
#: run before the (possibly huge or truncated) pixel data are loaded.
_DEFER_SIZE = "256 KB"
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: RLE (PS3.5 Annex G) turns 2 bytes into at most 128: no file decodes to more than 64x its data
_RLE_MAX_RATIO = 64
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: header values that must be finite numbers when present
_FINITE_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")


def _corrupt_values_are_read_errors(read):
    """pydicom converts a header value when it is first used; a corrupt one (an unknown VR, a
    malformed number) then raises anywhere in the reader. Those become one ImageReadError."""

    @functools.wraps(read)
    def wrapper(path, **options):
        try:
            return read(path, **options)
        except ImageReadError:
            raise
        except MemoryError:
            raise ImageReadError(f"{path}: decoding needs more memory than is free; close other programs "
                                 "or downsample the image") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt values
            raise ImageReadError(
                f"{path}: the DICOM header is corrupt ({_one_line(exc)}); copy or export the image again"
            ) from None

    return wrapper


@_corrupt_values_are_read_errors
def read_dicom(path: str | Path, *, percentile_window: str = "breast") -> Mammogram:
    """Read a single-frame grayscale DICOM image (uncompressed or compressed).

    Parameters
    ----------
    path : str or Path
        The DICOM file, with or without the 128-byte preamble.
    percentile_window : the rule for a file without VOI LUT or window
        (:func:`~mammography.io.window.window_without_display`).

    Returns
    -------
    Mammogram
        float32 pixels in [0, 1], dense tissue bright; ``intensity_rule`` is
        'voi_lut', 'window' or 'breast_percentiles' ('percentiles' when no
        breast is found); laterality and view with their sources (see
        :mod:`mammography.io.orientation`).

    Raises
    ------
    ImageReadError
        See the module docstring for the cases; the message names the file.
    """
    path = Path(path)
    ds, stored = decode_dicom(path)
    values = _modality_values(stored, ds, path)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    pixels, rule = _apply_voi(values, ds, path, monochrome1=photometric == "MONOCHROME1",
                              percentile_window=percentile_window)
    if photometric == "MONOCHROME1":
        pixels = np.subtract(1.0, pixels, dtype=np.float32)
    (laterality, laterality_source), (view, view_source) = _orientation(ds, path)
    return Mammogram(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        original_shape=(int(pixels.shape[0]), int(pixels.shape[1])),
        pixel_spacing=_pixel_spacing(ds),
        laterality=laterality,
        view=view,
        photometric_interpretation=photometric,
        path=path,
        intensity_rule=rule,
        laterality_source=laterality_source,
        view_source=view_source,
    )


# -- reading and checking -------------------------------------------------------


def decode_dicom(path: str | Path) -> tuple[Dataset, np.ndarray]:
    """Parse, check and decode a DICOM file: its data set and stored pixel values.

    The stored values are what the file holds (no Modality LUT, no VOI, no
    inversion); the header checks of :func:`read_dicom` run before any pixel
    is decoded. Used where another intensity rule must be reproduced exactly
    (:mod:`mammography.io.pipelines`).

    Raises
    ------
    ImageReadError
        As :func:`read_dicom`.
    """
    path = Path(path)
    ds = _read_dataset(path)
    _check_header(ds, path)
    return ds, _decode_pixels(ds, path)



def _read_dataset(path: Path) -> Dataset:
    """Parse the file, deferring large values; map every failure to ImageReadError."""
    try:
        try:
            ds = pydicom.dcmread(path, force=False, defer_size=_DEFER_SIZE)
        except InvalidDicomError:
            # force=True reads anything as elements: allow it only for files
            # that start like a bare data set (no preamble), never for others.
            with open(path, "rb") as fh:
                head = fh.read(8)
            if not looks_like_bare_dicom(head):
                raise ImageReadError(
                    f"{path}: not a DICOM file (no 'DICM' marker and no DICOM data set at the start); "
                    "check that the file is a DICOM image"
                ) from None
            ds = pydicom.dcmread(path, force=True, defer_size=_DEFER_SIZE)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise ImageReadError(
            f"{path}: the DICOM file cannot be parsed ({_one_line(exc)}); it is truncated or corrupt, "
            "copy or export it again"
        ) from exc
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a data set read without file meta the transfer syntax it was read with."""
    if ds.file_meta.get("TransferSyntaxUID") is not None:
        return
    implicit, little = ds.original_encoding
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif little or little is None:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


def _check_header(ds: Dataset, path: Path) -> None:
    """Refuse what this reader cannot turn into one grayscale image, before decoding."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageReadError(
                f"{path}: holds floating-point pixel data, which mammograms never use; "
                "export the image with integer pixel data"
            )
        if _pixel_data_tag_in_file(path):
            raise ImageReadError(
                f"{path}: the Pixel Data element is cut off, the file is truncated; copy or export it again"
            )
        raise ImageReadError(
            f"{path}: has no pixel data (PixelData element missing); the file is truncated or is not "
            "an image (e.g. a structured report); export the image again"
        )
    frames = _int_or_none(ds.get("NumberOfFrames", 1))
    if frames is not None and frames > 1:
        raise ImageReadError(
            f"{path}: contains {frames} frames; only single-frame 2-D mammograms are supported "
            "(for tomosynthesis use the synthesised 2-D view, or split the frames into files)"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = _int_or_none(ds.get("SamplesPerPixel", 1))
    if photometric not in _MONOCHROME or samples != 1:
        raise ImageReadError(
            f"{path}: is not a grayscale image (PhotometricInterpretation {photometric or 'missing'}, "
            f"{samples} samples per pixel); mammograms must be MONOCHROME1 or MONOCHROME2"
        )
    rows = _int_or_none(ds.get("Rows"))
    cols = _int_or_none(ds.get("Columns"))
    if rows is None or cols is None:
        raise ImageReadError(f"{path}: Rows or Columns missing from the header; the file is corrupt")
    check_dimensions(path, rows, cols)
    _check_decoded_size(ds, path, rows, cols)
    _check_finite_values(ds, path)
    _check_decoder(ds, path)


def _check_decoded_size(ds: Dataset, path: Path, rows: int, cols: int) -> None:
    """Bound what decoding will allocate by the header, before the decoder runs."""
    bits = _int_or_none(ds.get("BitsAllocated", 16))
    if bits is None or bits not in (1, 8, 16, 32):
        raise ImageReadError(f"{path}: BitsAllocated {bits} is not 1, 8, 16 or 32; the header is corrupt")
    decoded = rows * cols * max(bits, 8) // 8  # at most 4 x MAX_PIXELS bytes (check_dimensions)
    if str(ds.file_meta.get("TransferSyntaxUID", "")) == _RLE_LOSSLESS:
        stored = path.stat().st_size  # the RLE data are at most the whole file
        if decoded > _RLE_MAX_RATIO * stored + 64 * 1024:
            raise ImageReadError(
                f"{path}: {stored} bytes of RLE data cannot decode to the {rows} x {cols} image the header "
                f"declares ({decoded / 1e6:.0f} MB); the file is corrupt or crafted"
            )


def _check_finite_values(ds: Dataset, path: Path) -> None:
    """Rescale and window values that are not finite numbers would turn the image black (or NaN)."""
    for keyword in _FINITE_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        for item in (value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]):
            try:
                number = float(item)
            except (TypeError, ValueError):
                continue  # non-numeric text: the rule that uses it reports or skips it
            if not math.isfinite(number):
                raise ImageReadError(f"{path}: {keyword} is {item}, not a finite number; fix the header "
                                     "or export the image again")


def _pixel_data_tag_in_file(path: Path) -> bool:
    """True when the bytes of a Pixel Data tag (7FE0,0010) occur in the file.

    pydicom silently drops an element cut off by the end of the file, so a
    truncated image looks like a data set without pixel data; the tag's bytes
    tell the two apart (checked only on this error path).
    """
    data = path.read_bytes()
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _check_decoder(ds: Dataset, path: Path) -> None:
    """Say which transfer syntax cannot be decoded and what to install."""
    uid = UID(str(ds.file_meta.TransferSyntaxUID))
    name = uid.name if uid.is_valid and uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageReadError(
            f"{path}: unsupported transfer syntax {name}; no decoder exists for it here, "
            "convert the file (e.g. `dcmdjpeg`/`gdcmconv --raw`) to an uncompressed or JPEG/JPEG 2000/RLE syntax"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)  # e.g. "pylibjpeg - requires ..."
        raise ImageReadError(
            f"{path}: no installed decoder for transfer syntax {name}; install one of the plugins "
            f"({missing or 'pylibjpeg with its openjpeg/libjpeg/rle plugins'})"
        )


def _decode_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Decode the pixel data into a 2-D integer array, mapping failures to ImageReadError."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError ...
        text = _one_line(exc)
        hint = (
            "the file is truncated; copy or export it again"
            if "less than expected" in text or "truncat" in text.lower()
            else "the pixel data are corrupt or use an encoding the installed decoders reject; "
            "export the image again or convert it to an uncompressed transfer syntax"
        )
        raise ImageReadError(f"{path}: cannot decode the pixel data ({text}); {hint}") from exc
    if arr.ndim != 2:
        raise ImageReadError(
            f"{path}: decoded to an array of shape {arr.shape}, not one 2-D image; "
            "export a single-frame grayscale image"
        )
    return arr


# -- intensity --------------------------------------------------------------------


def _modality_values(stored: np.ndarray, ds: Dataset, path: Path) -> np.ndarray:
    """Rescale Slope/Intercept or the Modality LUT Sequence (pydicom), errors named."""
    try:
        return apply_modality_lut(stored, ds)
    except Exception as exc:  # non-numeric slope, malformed LUT ...
        raise ImageReadError(
            f"{path}: invalid Rescale Slope/Intercept or Modality LUT ({_one_line(exc)}); fix the header"
        ) from exc


def _apply_voi(values: np.ndarray, ds: Dataset, path: Path, monochrome1: bool = False,
               percentile_window: str = "breast") -> tuple[np.ndarray, str]:
    """VOI LUT, else window, else percentiles (inside the breast); returns ([0, 1] float32, rule)."""
    if _has_voi_lut(ds):
        try:
            return _apply_voi_lut(values, ds), "voi_lut"
        except Exception as exc:  # a malformed LUT should not stop the read
            log.warning("%s: VOI LUT Sequence unusable (%s); trying the window", path, _one_line(exc))
    window = _first_window(ds)
    if window is not None:
        center, width, function = window
        try:
            return window_to_unit(values, center, width, function), "window"
        except ValueError as exc:
            log.warning("%s: %s; using robust percentiles", path, exc)
    return window_without_display(values, monochrome1=monochrome1, percentile_window=percentile_window)


def _has_voi_lut(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _apply_voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """First VOI LUT item via pydicom, normalised by the LUT's own range."""
    item = ds.VOILUTSequence[0]
    entries, first_map = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    # The LUT is indexed by integers; clip first so pydicom's unsigned index
    # arithmetic cannot wrap around for values far outside the LUT.
    index = np.clip(np.rint(values), first_map, first_map + entries - 1).astype(np.int64)
    mapped = apply_voi(index, ds, index=0)
    lut = apply_voi(np.arange(first_map, first_map + entries, dtype=np.int64), ds, index=0)
    lo, hi = float(lut.min()), float(lut.max())
    if not hi > lo:
        raise ValueError("the LUT is constant")
    out = (mapped.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _first_window(ds: Dataset) -> tuple[float, float, str] | None:
    """First Window Center/Width pair and the VOI LUT function, or None."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        center = float(_first_value(ds.WindowCenter))
        width = float(_first_value(ds.WindowWidth))
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    return center, width, function


def window_to_unit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM window (PS3.3 C.11.2.1.2 and C.11.2.1.3) with output in [0, 1].

    Parameters
    ----------
    values : np.ndarray
        Modality values (after Rescale Slope/Intercept).
    center, width : float
        Window Center and Window Width.
    function : {'LINEAR', 'LINEAR_EXACT', 'SIGMOID'}
        The VOILUTFunction; an unknown name is treated as LINEAR, the
        standard's default.

    Returns
    -------
    float32 array in [0, 1].

    Raises
    ------
    ValueError
        When the width is not valid for the function (LINEAR needs >= 1, the
        others > 0).
    """
    x = np.asarray(values, dtype=np.float32)
    function = function.upper()
    if function == "SIGMOID":
        if not width > 0:
            raise ValueError(f"Window Width {width} is not > 0 for SIGMOID")
        with np.errstate(over="ignore"):  # exp overflow -> inf -> output 0, as it should
            out = np.exp(np.float32(-4.0 / width) * (x - np.float32(center)))
            out += np.float32(1.0)
            return np.reciprocal(out, out=out)
    if function == "LINEAR_EXACT":
        if not width > 0:
            raise ValueError(f"Window Width {width} is not > 0 for LINEAR_EXACT")
        low, span = center - width / 2.0, width
    else:
        if function != "LINEAR":
            log.warning("unknown VOILUTFunction %r; using LINEAR", function)
        if not width >= 1:
            raise ValueError(f"Window Width {width} is not >= 1 for LINEAR")
        # y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped: the line reaches 0
        # at c - 0.5 - (w - 1) / 2 and 1 at c - 0.5 + (w - 1) / 2.
        if width == 1:
            return (x > np.float32(center - 0.5)).astype(np.float32)
        low, span = center - 0.5 - (width - 1) / 2.0, width - 1.0
    out = x - np.float32(low)
    out /= np.float32(span)
    return np.clip(out, 0.0, 1.0, out=out)


# -- metadata -------------------------------------------------------------------


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, col) spacing in mm: PixelSpacing, else ImagerPixelSpacing, else None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _orientation(ds: Dataset, path: Path) -> tuple[tuple[str | None, str | None], tuple[str | None, str | None]]:
    """((laterality, source), (view, source)): header tags, then PatientID, file and folder name tokens.

    An ImageLaterality of B (both) or U (unpaired) is the image's own word:
    no other source is asked for its laterality.
    """
    laterality, settled = _tag_laterality(ds)
    view = _tag_view(ds)
    patient_lat, patient_view = orientation_from_text(ds.get("PatientID"))
    path_lat, path_view = orientation_from_path(path)
    if laterality[0] is None and not settled:
        laterality = (patient_lat, "PatientID") if patient_lat else (path_lat.value, path_lat.source)
    if view[0] is None:
        view = (patient_view, "PatientID") if patient_view else (path_view.value, path_view.source)
    return laterality, view


def _tag_laterality(ds: Dataset) -> tuple[tuple[str | None, str | None], bool]:
    """(value, source) from ImageLaterality (the image's own), else the series' Laterality; and whether
    the tags settle it (an ImageLaterality of B or U says the image has no single side)."""
    own = _text(ds.get("ImageLaterality"))
    if own:
        value = normalise_laterality(own)
        return (value, "ImageLaterality" if value else None), True
    value = normalise_laterality(_text(ds.get("Laterality")))
    return (value, "Laterality" if value else None), False


def _tag_view(ds: Dataset) -> tuple[str | None, str | None]:
    """ViewPosition, else a PatientOrientation that literally holds a view (digitised film misuses it so)."""
    value = _text(ds.get("ViewPosition")).upper()
    if value in VIEWS:
        return value, "ViewPosition"
    orientation = ds.get("PatientOrientation")
    parts = list(orientation) if isinstance(orientation, (list, tuple)) or type(orientation).__name__ == "MultiValue" else [orientation]
    named = {str(p).strip().upper() for p in parts if p is not None} & set(VIEWS)
    if len(named) == 1:
        return named.pop(), "PatientOrientation"
    return None, None


def _text(value) -> str:
    return str(value or "").strip()


# -- small helpers --------------------------------------------------------------


def _first_value(value):
    """First item of a multi-valued element (Window Center/Width may hold several)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0]
    return value


def _int_or_none(value) -> int | None:
    try:
        return int(_first_value(value))
    except (TypeError, ValueError, IndexError):
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
