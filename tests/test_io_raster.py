"""PNG, JPEG and TIFF reading: bit-depth rule, colour, min-is-white, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from _io_phantom import breast_phantom
from mammography.errors import ImageReadError
from mammography.io import breast_mask, read_mammogram
from mammography.io.raster import raster_to_unit

SHAPE = (128, 96)


@pytest.fixture(scope="module")
def phantom():
    image, breast, _ = breast_phantom(SHAPE)
    return image, breast


def assert_raster_record(m, path):
    assert m.pixels.dtype == np.float32 and m.pixels.shape == SHAPE and m.original_shape == SHAPE
    assert 0.0 <= m.pixels.min() and m.pixels.max() <= 1.0
    assert m.laterality is None and m.view is None and m.pixel_spacing is None
    assert m.path == path


def test_png_8bit_divided_by_255(tmp_path, phantom):
    stored = np.rint(phantom[0] * 255).astype(np.uint8)
    path = tmp_path / "img8.png"
    Image.fromarray(stored).save(path)
    m = read_mammogram(path)
    assert_raster_record(m, path)
    assert m.intensity_rule == "bit_depth" and m.photometric_interpretation == "MONOCHROME2"
    np.testing.assert_array_equal(m.pixels, stored.astype(np.float32) / 255)


def test_png_16bit_full_range_divided_by_65535(tmp_path, phantom):
    stored = np.rint(phantom[0] * 65535).astype(np.uint16)
    path = tmp_path / "img16.png"
    Image.fromarray(stored).save(path)
    assert Image.open(path).mode in ("I;16", "I")  # really a 16-bit PNG
    m = read_mammogram(path)
    assert_raster_record(m, path)
    assert m.intensity_rule == "bit_depth"
    np.testing.assert_allclose(m.pixels, stored / 65535.0, atol=1e-7)


def test_png_12bit_values_in_16bit_container_windowed_by_percentiles(tmp_path, phantom):
    image, breast = phantom
    stored = np.rint(image * 4000 + 40).astype(np.uint16)  # max ~3920: raw 12-bit detector values
    path = tmp_path / "img12.png"
    Image.fromarray(stored).save(path)
    m = read_mammogram(path)
    assert m.intensity_rule == "breast_percentiles"
    lo = np.percentile(stored, 0.5)
    found = breast_mask(np.clip((stored - lo) / (np.percentile(stored, 99.6) - lo), 0, 1))
    hi = np.percentile(stored[found], 99.6, method="higher")  # the high end from the breast alone
    np.testing.assert_allclose(m.pixels, np.clip((stored - lo) / (hi - lo), 0, 1), atol=1e-6)
    # divided by 65535 the breast would sit below 0.06; windowed it is well lit
    assert m.pixels[breast].mean() > 0.4 > m.pixels[~breast].mean() + 0.3


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255), (np.uint16, 65535)])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_8_and_16_bit(tmp_path, phantom, dtype, scale, compression):
    stored = np.rint(phantom[0] * scale).astype(dtype)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, stored, photometric="minisblack", compression=compression)
    m = read_mammogram(path)
    assert_raster_record(m, path)
    assert m.intensity_rule == "bit_depth" and m.photometric_interpretation == "MONOCHROME2"
    np.testing.assert_allclose(m.pixels, stored / float(scale), atol=1e-7)


def test_tiff_min_is_white_is_inverted(tmp_path, phantom):
    image, breast = phantom
    stored = np.rint(image * 65535).astype(np.uint16)
    normal, inverted = tmp_path / "black.tif", tmp_path / "white.tif"
    tifffile.imwrite(normal, stored, photometric="minisblack")
    tifffile.imwrite(inverted, 65535 - stored, photometric="miniswhite")
    m = read_mammogram(inverted)
    assert m.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_allclose(m.pixels, read_mammogram(normal).pixels, atol=1e-6)
    assert m.pixels[breast].mean() > m.pixels[~breast].mean() + 0.3


def test_tiff_float(tmp_path, phantom):
    image = phantom[0].astype(np.float32)
    unit, wide = tmp_path / "unit.tif", tmp_path / "wide.tif"
    tifffile.imwrite(unit, image)
    tifffile.imwrite(wide, image * 1000 - 200)
    m = read_mammogram(unit)
    assert m.intensity_rule == "range"
    np.testing.assert_array_equal(m.pixels, image)  # already in [0, 1]: kept
    m = read_mammogram(wide)
    np.testing.assert_allclose(m.pixels, (image - image.min()) / np.ptp(image), atol=1e-5)


def test_rgb_png_and_tiff_become_luminance(tmp_path, phantom):
    image = phantom[0]
    rgb = np.rint(np.stack([image, image * 0.9, image * 0.5], axis=-1) * 255).astype(np.uint8)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    png, tif = tmp_path / "rgb.png", tmp_path / "rgb.tif"
    Image.fromarray(rgb, mode="RGB").save(png)
    tifffile.imwrite(tif, rgb, photometric="rgb")
    for path in (png, tif):
        m = read_mammogram(path)
        assert m.photometric_interpretation == "RGB" and m.pixels.shape == SHAPE
        np.testing.assert_allclose(m.pixels, luma / 255, atol=1.01 / 255)


def test_jpeg_grayscale(tmp_path, phantom):
    stored = np.rint(phantom[0] * 255).astype(np.uint8)
    path = tmp_path / "img.jpg"
    Image.fromarray(stored).save(path, quality=95)
    m = read_mammogram(path)
    assert_raster_record(m, path)
    assert m.intensity_rule == "bit_depth"
    assert np.abs(m.pixels - stored / 255.0).mean() < 0.01


def test_format_recognised_from_content_not_name(tmp_path, phantom):
    stored = np.rint(phantom[0] * 255).astype(np.uint8)
    path = tmp_path / "export.dcm"  # a PNG with a misleading name
    Image.fromarray(stored).save(path, format="PNG")
    np.testing.assert_array_equal(read_mammogram(path).pixels, stored.astype(np.float32) / 255)


def test_raster_to_unit_rules():
    full = np.array([[0, 40000], [65535, 100]], dtype=np.uint16)
    pixels, rule = raster_to_unit(full)
    assert rule == "bit_depth" and pixels[1, 0] == 1.0 and pixels[0, 1] == pytest.approx(40000 / 65535)
    raw = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 10  # max 2550: a 12-bit container
    pixels, rule = raster_to_unit(raw)
    assert rule == "percentiles" and pixels.min() == 0.0 and pixels.max() == 1.0


# -- refusals -------------------------------------------------------------------------------


def assert_refused(path, *phrases):
    with pytest.raises(ImageReadError) as info:
        read_mammogram(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message
    for phrase in phrases:
        assert phrase in message, message


def test_truncated_png(tmp_path, phantom):
    path = tmp_path / "full.png"
    Image.fromarray(np.rint(phantom[0] * 65535).astype(np.uint16)).save(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:-2000])
    assert_refused(cut, "truncated")


def test_truncated_tiff(tmp_path, phantom):
    path = tmp_path / "full.tif"
    tifffile.imwrite(path, np.rint(phantom[0] * 65535).astype(np.uint16), compression="zlib")
    cut = tmp_path / "cut.tif"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert_refused(cut, "truncated")


def test_multi_page_tiff(tmp_path, phantom):
    stored = np.rint(phantom[0] * 255).astype(np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([stored, stored]), photometric="minisblack")
    assert_refused(path, "2 full-resolution pages")


def test_palette_tiff(tmp_path, phantom):
    stored = np.rint(phantom[0] * 255).astype(np.uint8)
    path = tmp_path / "palette.tif"
    colormap = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    tifffile.imwrite(path, stored, photometric="palette", colormap=colormap)
    assert_refused(path, "PALETTE")


def test_tiny_image(tmp_path):
    path = tmp_path / "icon.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    assert_refused(path, "implausible image size", "8 x 8")


def test_unrecognised_content(tmp_path):
    path = tmp_path / "scan.png"
    path.write_text("not an image at all")
    assert_refused(path, "not a DICOM, PNG, JPEG or TIFF")
