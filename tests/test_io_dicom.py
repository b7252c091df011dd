"""DICOM reading: every display rule, every compression, every refusal.

Files are written here with pydicom from a synthetic breast image (see
``_io_phantom``), or taken from pydicom's bundled test files (only those that
ship with the wheel; nothing is downloaded).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    MPEG2MPML,
    RLELossless,
    generate_uid,
)

from _io_phantom import breast_phantom
from mammography.errors import ImageReadError
from mammography.io import breast_mask, read_mammogram
from mammography.io.dicom import read_dicom

SHAPE = (128, 96)
BUNDLED = Path(pydicom.data.__file__).parent / "test_files"


def bundled(name: str) -> Path:
    """A test file shipped inside the pydicom wheel (never downloaded)."""
    path = BUNDLED / name
    if not path.exists():
        pytest.skip(f"pydicom does not ship {name}")
    return path


def stored_12bit(seed: int = 0) -> np.ndarray:
    """The phantom as 12-bit stored values (breast ~1250-3500, marker ~3900)."""
    image, _, _ = breast_phantom(SHAPE, seed=seed)
    return np.rint(image * 4000 + 40).astype(np.uint16)


def make_dataset(stored: np.ndarray, *, photometric="MONOCHROME2", bits_stored=12, **elements) -> Dataset:
    """A minimal digital-mammography data set holding ``stored`` uncompressed."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = "P0"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape[-2:])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits_allocated = 8 if stored.dtype == np.uint8 else 16
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype(np.uint8 if bits_allocated == 8 else np.uint16).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def write(tmp_path: Path, name: str, ds: Dataset) -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom(tmp_path: Path, name: str, stored: np.ndarray, **kwargs) -> Path:
    return write(tmp_path, name, make_dataset(stored, **kwargs))


def reference_window(stored: np.ndarray, center, width, function="LINEAR") -> np.ndarray:
    """pydicom's own windowing of 12-bit unsigned values, rescaled from 0..4095 to 0..1."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 12, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    return apply_windowing(stored.astype(np.float64), ds) / 4095.0


# -- display rules -------------------------------------------------------------------


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_matches_pydicom_for_each_voi_lut_function(tmp_path, function):
    stored = stored_12bit()
    path = write_dicom(tmp_path, "w.dcm", stored, WindowCenter=2200, WindowWidth=1800, VOILUTFunction=function)
    m = read_dicom(path)
    assert m.intensity_rule == "window"
    np.testing.assert_allclose(m.pixels, reference_window(stored, 2200, 1800, function), atol=2e-5)
    # the window really clips: background at 0, marker at 1 for the linear ones
    if function != "SIGMOID":
        assert m.pixels.min() == 0.0 and m.pixels.max() == 1.0


def test_rescale_slope_intercept_applied_before_window(tmp_path):
    real = stored_12bit() // 2 * 2  # even, so (real + 100) / 2 is an integer
    window = dict(WindowCenter=2200, WindowWidth=1800)
    plain = read_dicom(write_dicom(tmp_path, "plain.dcm", real, **window))
    rescaled_stored = (real + 100) // 2  # real = 2 * stored - 100
    rescaled = read_dicom(
        write_dicom(tmp_path, "rescaled.dcm", rescaled_stored, RescaleSlope=2, RescaleIntercept=-100, **window)
    )
    np.testing.assert_allclose(rescaled.pixels, plain.pixels, atol=1e-6)
    # without the rescale tags the same stored values read differently
    ignored = read_dicom(write_dicom(tmp_path, "ignored.dcm", rescaled_stored, **window))
    assert np.abs(ignored.pixels - plain.pixels).mean() > 0.1


def test_first_of_several_windows_is_used(tmp_path):
    stored = stored_12bit()
    multi = read_dicom(write_dicom(tmp_path, "multi.dcm", stored, WindowCenter=[1500, 3000], WindowWidth=[2000, 500]))
    first = read_dicom(write_dicom(tmp_path, "first.dcm", stored, WindowCenter=1500, WindowWidth=2000))
    second = read_dicom(write_dicom(tmp_path, "second.dcm", stored, WindowCenter=3000, WindowWidth=500))
    np.testing.assert_array_equal(multi.pixels, first.pixels)
    assert np.abs(multi.pixels - second.pixels).mean() > 0.1


def voi_lut_item(first_map: int, values: np.ndarray, bits: int) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(values), first_map, bits])
    item.add_new("LUTData", "OW", values.astype("<u2").tobytes())  # OW, as most vendors write it
    item.LUTExplanation = "GAMMA"
    return item


def test_voi_lut_sequence_is_applied_and_preferred_over_window(tmp_path):
    stored = stored_12bit()
    first_map, entries = 500, 3000  # values below 500 take the first entry, above 3499 the last
    lut = np.rint(100 + 3800 * np.linspace(0, 1, entries) ** 0.5).astype(np.uint16)  # range 100..3900
    path = write_dicom(
        tmp_path,
        "lut.dcm",
        stored,
        VOILUTSequence=[voi_lut_item(first_map, lut, 12)],
        WindowCenter=1000,  # a window that would give a very different image
        WindowWidth=200,
    )
    m = read_dicom(path)
    assert m.intensity_rule == "voi_lut"
    expected = (lut[np.clip(stored.astype(np.int64) - first_map, 0, entries - 1)] - 100.0) / 3800.0
    np.testing.assert_allclose(m.pixels, expected, atol=1e-6)
    assert m.pixels.min() == 0.0 and m.pixels.max() == 1.0


def test_percentiles_when_no_window(tmp_path):
    """No window: 0.5 % of the image, 99.6 % of the breast (found on the whole-image window)."""
    stored = stored_12bit()
    m = read_dicom(write_dicom(tmp_path, "raw.dcm", stored))
    assert m.intensity_rule == "breast_percentiles"
    _, breast, marker = breast_phantom(SHAPE)
    lo = np.percentile(stored, 0.5)
    whole = np.clip((stored - lo) / (np.percentile(stored, 99.6) - lo), 0, 1)
    found = breast_mask(whole)
    assert (found & breast).sum() / (found | breast).sum() > 0.9 and not found[marker].any()
    hi = np.percentile(stored[found], 99.6, method="higher")
    np.testing.assert_allclose(m.pixels, np.clip((stored - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert (m.pixels[breast] >= 1.0).mean() <= 0.005  # the bright marker does not set the window


def test_invalid_window_falls_back_to_percentiles(tmp_path):
    stored = stored_12bit()
    m = read_dicom(write_dicom(tmp_path, "bad_window.dcm", stored, WindowCenter=2000, WindowWidth=0))
    assert m.intensity_rule == "breast_percentiles"
    assert m.pixels.min() == 0.0 and m.pixels.max() == 1.0


@pytest.mark.parametrize("windowed", [True, False])
def test_monochrome1_reads_like_monochrome2(tmp_path, windowed):
    stored = stored_12bit()
    center, width = 2200, 1800
    # MONOCHROME1 stores 4095 - x; its window centre mirrors to 4096 - c
    # (LINEAR puts the window on [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2]).
    w2 = dict(WindowCenter=center, WindowWidth=width) if windowed else {}
    w1 = dict(WindowCenter=4096 - center, WindowWidth=width) if windowed else {}
    m2 = read_dicom(write_dicom(tmp_path, "m2.dcm", stored, photometric="MONOCHROME2", **w2))
    m1 = read_dicom(write_dicom(tmp_path, "m1.dcm", 4095 - stored, photometric="MONOCHROME1", **w1))
    assert m1.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_allclose(m1.pixels, m2.pixels, atol=1e-5)
    _, breast, _ = breast_phantom(SHAPE)
    assert m1.pixels[breast].mean() > m1.pixels[~breast].mean() + 0.3  # dense (tissue) is bright


def test_record_fields(tmp_path):
    stored = stored_12bit()
    path = write_dicom(
        tmp_path,
        "IMG0001",  # no extension: recognised by its 'DICM' marker
        stored,
        PixelSpacing=[0.07, 0.065],
        ImagerPixelSpacing=[0.1, 0.1],
        ImageLaterality="R",
        Laterality="L",
        ViewPosition="MLO",
    )
    m = read_mammogram(path)
    assert m.pixels.dtype == np.float32 and m.pixels.shape == SHAPE
    assert m.original_shape == SHAPE
    assert 0.0 <= m.pixels.min() and m.pixels.max() <= 1.0
    assert m.pixel_spacing == (0.07, 0.065)
    assert m.laterality == "R" and m.view == "MLO"
    assert (m.laterality_source, m.view_source) == ("ImageLaterality", "ViewPosition")
    assert m.photometric_interpretation == "MONOCHROME2"
    assert m.path == path


def test_record_fallbacks(tmp_path):
    stored = stored_12bit()
    m = read_dicom(
        write_dicom(tmp_path, "b.dcm", stored, ImagerPixelSpacing=[0.1, 0.09], Laterality="L", ViewPosition="ML")
    )
    assert m.pixel_spacing == (0.1, 0.09)
    assert (m.laterality, m.laterality_source) == ("L", "Laterality")
    assert (m.view, m.view_source) == ("ML", "ViewPosition")  # lateral views keep their name
    m = read_dicom(write_dicom(tmp_path, "c.dcm", stored, ImageLaterality="B", Laterality="L", ViewPosition="CC"))
    assert m.pixel_spacing is None and m.laterality is None and m.view == "CC"  # the image's own 'B' wins
    m = read_dicom(write_dicom(tmp_path, "d.dcm", stored, ViewPosition="XCCL"))
    assert m.view is None and m.view_source is None  # no other view is one of this toolkit


def test_bare_dataset_without_preamble_is_read(tmp_path):
    stored = stored_12bit()
    ds = make_dataset(stored, WindowCenter=2200, WindowWidth=1800)
    del ds.file_meta
    path = tmp_path / "legacy"
    pydicom.dcmwrite(path, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    m = read_mammogram(path)
    np.testing.assert_allclose(m.pixels, reference_window(stored, 2200, 1800), atol=2e-5)


# -- compressed files ------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k_lossless"])
def test_lossless_compression_reads_identically(tmp_path, syntax):
    stored = stored_12bit()
    plain = read_dicom(write_dicom(tmp_path, "plain.dcm", stored, WindowCenter=2200, WindowWidth=1800))
    ds = make_dataset(stored, WindowCenter=2200, WindowWidth=1800)
    ds.compress(syntax)
    path = write(tmp_path, "compressed.dcm", ds)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_dicom(path).pixels, plain.pixels)


def test_lossy_jpeg2000_reads_close_to_original(tmp_path):
    stored = stored_12bit()
    plain = read_dicom(write_dicom(tmp_path, "plain.dcm", stored, WindowCenter=2200, WindowWidth=1800))
    ds = make_dataset(stored, WindowCenter=2200, WindowWidth=1800)
    ds.compress(JPEG2000, j2k_cr=[10])
    path = write(tmp_path, "lossy.dcm", ds)
    diff = np.abs(read_dicom(path).pixels - plain.pixels)
    assert 0 < diff.max() and diff.mean() < 0.01


def test_jpeg_baseline_reads_close_to_original(tmp_path):
    image, _, _ = breast_phantom(SHAPE)
    stored = np.rint(image * 255).astype(np.uint8)
    plain = read_dicom(write_dicom(tmp_path, "plain8.dcm", stored, bits_stored=8, WindowCenter=128, WindowWidth=256))
    buffer = io.BytesIO()
    Image.fromarray(stored, mode="L").save(buffer, format="JPEG", quality=95)
    ds = make_dataset(stored, bits_stored=8, WindowCenter=128, WindowWidth=256)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    m = read_dicom(write(tmp_path, "baseline.dcm", ds))
    diff = np.abs(m.pixels - plain.pixels)
    assert diff.mean() < 0.01 and diff.max() < 0.1


def encode_jpeg_lossless(image: np.ndarray, precision: int) -> bytes:
    """A minimal ITU T.81 lossless encoder: process 14, predictor 1, one component.

    pydicom has no JPEG-lossless encoder, so the test writes the code stream
    itself; the decoder (pylibjpeg-libjpeg) must give back every value.
    """
    x = image.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first row: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the pixel above
    pred[1:, 1:] = x[1:, :-1]  # elsewhere (predictor 1): left neighbour
    diff = (x - pred + 32768) % 65536 - 32768
    ssss = np.zeros_like(diff)
    nonzero = diff != 0
    ssss[nonzero] = np.floor(np.log2(np.abs(diff[nonzero]))).astype(np.int64) + 1
    # Huffman table: the 17 categories all get 5-bit codes 0..16 (canonical order).
    acc, nbits, out = 0, 0, bytearray()

    def put(value: int, length: int) -> None:
        nonlocal acc, nbits
        acc = (acc << length) | value
        nbits += length
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)  # byte stuffing
        acc &= (1 << nbits) - 1

    for d, s in zip(diff.ravel().tolist(), ssss.ravel().tolist()):
        put(s, 5)
        if 0 < s < 16:
            put(d if d > 0 else d + (1 << s) - 1, s)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad with 1-bits
    rows, cols = x.shape
    sof3 = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision]) + rows.to_bytes(2, "big")
    sof3 += cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    bits = [0] * 16
    bits[4] = 17
    dht = b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + bytes([0x00] + bits + list(range(17)))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof3 + dht + sos + bytes(out) + b"\xff\xd9"


def test_jpeg_lossless_reads_identically(tmp_path):
    stored = stored_12bit()
    plain = read_dicom(write_dicom(tmp_path, "plain.dcm", stored, WindowCenter=2200, WindowWidth=1800))
    ds = make_dataset(stored, WindowCenter=2200, WindowWidth=1800)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([encode_jpeg_lossless(stored, precision=12)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    np.testing.assert_array_equal(read_dicom(write(tmp_path, "lossless.dcm", ds)).pixels, plain.pixels)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_bundled_compressed_files_match_their_uncompressed_original(name):
    original = read_dicom(bundled("MR_small.dcm"))
    compressed = read_dicom(bundled(name))
    assert compressed.intensity_rule == original.intensity_rule == "window"
    np.testing.assert_array_equal(compressed.pixels, original.pixels)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm"])
def test_bundled_jpeg_extended_and_jpeg2000_decode(name):
    m = read_dicom(bundled(name))
    assert m.pixels.shape == (1024, 256) and m.pixels.dtype == np.float32
    assert m.intensity_rule in ("breast_percentiles", "percentiles")
    assert m.pixels.min() == 0.0 and m.pixels.max() == 1.0
    assert m.pixels.std() > 0.1  # an image, not a flat field


# -- refusals ------------------------------------------------------------------------


def assert_refused(path: Path, *phrases: str) -> str:
    with pytest.raises(ImageReadError) as info:
        read_mammogram(path)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message  # the CLI prints it as one line
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_missing_file(tmp_path):
    assert_refused(tmp_path / "absent.dcm", "does not exist")


def test_not_a_dicom(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("patient notes, not an image\n" * 20)
    assert_refused(text, "not a DICOM file")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(4096))
    assert_refused(blob, "not a DICOM, PNG, JPEG or TIFF")


def test_missing_pixel_data(tmp_path):
    ds = make_dataset(stored_12bit())
    del ds.PixelData
    message = assert_refused(write(tmp_path, "nopixels.dcm", ds), "no pixel data")
    assert "cut off" not in message


def test_multi_frame(tmp_path):
    frames = np.stack([stored_12bit(0), stored_12bit(1)])
    ds = make_dataset(frames, NumberOfFrames=2)
    assert_refused(write(tmp_path, "tomo.dcm", ds), "2 frames")


@pytest.mark.parametrize("uid", ["1.2.3.4.5.6", MPEG2MPML], ids=["unknown", "mpeg2"])
def test_unsupported_transfer_syntax(tmp_path, uid):
    ds = make_dataset(stored_12bit())
    ds.file_meta.TransferSyntaxUID = uid
    if uid == MPEG2MPML:  # a compressed syntax: pydicom writes only encapsulated data
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    path = tmp_path / "odd_syntax.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    assert_refused(path, "unsupported transfer syntax")


@pytest.mark.parametrize("rows, cols", [(8, 8), (30000, 30000), (16, 25000), (12, 5000)])
def test_absurd_dimensions_are_refused_from_the_header(tmp_path, rows, cols):
    # The pixel data hold 64 values whatever the header says: if the size
    # check came after decoding, the error would be a decode error instead.
    ds = make_dataset(np.zeros((8, 8), dtype=np.uint16))
    ds.Rows, ds.Columns = rows, cols
    assert_refused(write(tmp_path, "huge.dcm", ds), "implausible image size", f"{rows} x {cols}")


def test_colour_image_is_refused():
    assert_refused(bundled("SC_rgb_rle.dcm"), "not a grayscale image")


def test_truncated_in_pixel_data(tmp_path):
    path = write_dicom(tmp_path, "full.dcm", stored_12bit())
    cut = tmp_path / "cut.dcm"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) - 5000])
    assert_refused(cut, "truncated")
    assert_refused(bundled("MR_truncated.dcm"), "truncated")


def test_truncated_in_header(tmp_path):
    path = write_dicom(tmp_path, "full.dcm", stored_12bit(), PatientName="Doe^Jane")
    cut = tmp_path / "cut_header.dcm"
    cut.write_bytes(path.read_bytes()[:300])
    assert_refused(cut, "truncated")


def test_truncated_compressed(tmp_path):
    ds = make_dataset(stored_12bit())
    ds.compress(JPEG2000Lossless)
    data = write(tmp_path, "j2k.dcm", ds).read_bytes()
    cut = tmp_path / "j2k_cut.dcm"
    for keep in (len(data) // 2, len(data) - 8):  # inside the code stream; inside the last delimiter
        cut.write_bytes(data[:keep])
        assert_refused(cut, "truncated")


def test_undecodable_pixel_data():
    # pydicom's JPEG-lossy.dcm has a code stream the libjpeg decoder rejects
    assert_refused(bundled("JPEG-lossy.dcm"), "cannot decode the pixel data")
