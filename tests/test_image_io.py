"""read_image turns anything Pillow opens into HxWx3 uint8 RGB, or fails with one line naming the file."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from utils.errors import UserError
from utils.image_io import IMAGE_EXTENSIONS, find_images, read_image, to_tensor, to_uint8, write_png


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A small real photo crop, taller than wide so rotations are visible in the shape."""
    return np.ascontiguousarray(data.astronaut()[80:128, 200:232])  # 48x32


def _png_bytes(samples: np.ndarray, color_type: int) -> bytes:
    """A minimal 16-bit PNG written by hand (Pillow cannot write 16-bit colour PNGs)."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _expect_one_line_error(path, *words):
    with pytest.raises(UserError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message
    return message


def test_rgb_png_round_trips_exactly(tmp_path, photo):
    write_png(tmp_path / "a" / "b" / "x.png", photo)
    rgb, notices = read_image(tmp_path / "a" / "b" / "x.png")
    assert rgb.dtype == np.uint8 and rgb.shape == photo.shape
    np.testing.assert_array_equal(rgb, photo)
    assert notices == []


def test_grayscale_is_copied_to_three_channels(tmp_path, photo):
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb, notices = read_image(tmp_path / "g.png")
    assert rgb.shape == photo.shape
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)
    assert notices == []


def test_16bit_grayscale_is_rounded_to_8bit_with_notice(tmp_path):
    values = np.array([[0, 128, 129, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")  # Pillow writes I;16 as a 16-bit PNG
    rgb, notices = read_image(tmp_path / "g16.png")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(rgb[..., 2], expected)
    assert any("16-bit" in n for n in notices)


def test_16bit_colour_png_is_rounded_not_truncated(tmp_path):
    samples = np.array([[[0, 128, 129], [65535, 32896, 1000]]], dtype=np.uint16)
    (tmp_path / "c16.png").write_bytes(_png_bytes(samples, color_type=2))
    rgb, notices = read_image(tmp_path / "c16.png")
    expected = np.round(samples.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)  # truncation would give 0 for 129 and 3 for 1000
    assert any("16-bit" in n for n in notices)


def test_16bit_rgba_png_drops_alpha_and_rounds(tmp_path):
    samples = np.array([[[0, 129, 1000, 7], [65535, 32896, 200, 65535]]], dtype=np.uint16)
    (tmp_path / "c16a.png").write_bytes(_png_bytes(samples, color_type=6))
    rgb, notices = read_image(tmp_path / "c16a.png")
    expected = np.round(samples[..., :3].astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)
    assert "alpha channel dropped" in notices


def test_32bit_integer_image_uses_the_16bit_scale(tmp_path):
    values = np.array([[0, 257, 65535, 70000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    rgb, notices = read_image(tmp_path / "i.tif")
    np.testing.assert_array_equal(rgb[0, :, 1], [0, 1, 255, 255])
    assert any("clipped" in n for n in notices)


def test_float_image_is_rounded_and_clipped(tmp_path):
    values = np.array([[-3.0, 0.4, 0.6, 254.5, 300.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    rgb, notices = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 1, 254, 255])  # numpy rounds halves to even
    assert notices


def test_palette_image_is_expanded(tmp_path, photo):
    palette = Image.fromarray(photo).quantize(16)
    palette.save(tmp_path / "p.png")
    rgb, notices = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(rgb, np.asarray(palette.convert("RGB")))
    assert notices == []


def test_palette_transparency_is_dropped_with_notice(tmp_path, photo):
    palette = Image.fromarray(photo).quantize(16)
    palette.save(tmp_path / "pt.png", transparency=0)
    rgb, notices = read_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(rgb, np.asarray(palette.convert("RGB")))
    assert "alpha channel dropped" in notices


def test_rgba_keeps_colour_and_drops_alpha_with_notice(tmp_path, photo):
    alpha = np.full(photo.shape[:2] + (1,), 100, dtype=np.uint8)
    Image.fromarray(np.concatenate([photo, alpha], axis=2)).save(tmp_path / "a.png")
    rgb, notices = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(rgb, photo)
    assert "alpha channel dropped" in notices


def test_gray_with_alpha_drops_alpha(tmp_path, photo):
    Image.fromarray(photo).convert("LA").save(tmp_path / "la.png")
    rgb, notices = read_image(tmp_path / "la.png")
    assert rgb.shape == photo.shape
    assert "alpha channel dropped" in notices


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path, photo):
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgb, notices = read_image(tmp_path / "cmyk.jpg")
    assert rgb.shape == photo.shape
    assert np.abs(rgb.astype(int) - photo.astype(int)).mean() < 6
    assert any("CMYK" in n for n in notices)


def test_exif_orientation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; display rotated 90 degrees clockwise
    Image.fromarray(photo).save(tmp_path / "rot.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "rot.jpg") as stored:
        stored_pixels = np.asarray(stored.convert("RGB"))
    rgb, notices = read_image(tmp_path / "rot.jpg")
    assert rgb.shape == (photo.shape[1], photo.shape[0], 3)
    np.testing.assert_array_equal(rgb, np.rot90(stored_pixels, k=-1))
    assert any("EXIF orientation 6" in n for n in notices)


def test_single_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    rgb, _ = read_image(tmp_path / "one.png")
    np.testing.assert_array_equal(rgb, [[[10, 20, 30]]])


def test_missing_file_is_a_user_error(tmp_path):
    _expect_one_line_error(tmp_path / "nope.png", "not found")


def test_folder_is_a_user_error(tmp_path):
    _expect_one_line_error(tmp_path, "folder")


def test_empty_file_is_a_user_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _expect_one_line_error(tmp_path / "empty.png", "empty")


def test_non_image_is_a_user_error(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n" * 10)
    _expect_one_line_error(tmp_path / "notes.png", "not an image")


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_image_is_a_user_error(tmp_path, photo, fmt, suffix):
    full = tmp_path / ("full" + suffix)
    Image.fromarray(photo).save(full, format=fmt)
    cut = tmp_path / ("cut" + suffix)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _expect_one_line_error(cut, "truncated")


def _png_declaring_size(tmp_path, width: int, height: int):
    """A tiny PNG whose header claims a huge size (its pixel data is missing)."""
    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    raw = bytearray((tmp_path / "tiny.png").read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path = tmp_path / f"claims_{width}x{height}.png"
    path.write_bytes(bytes(raw))
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    _expect_one_line_error(_png_declaring_size(tmp_path, 40000, 40000), "too large")


def test_8k_image_is_not_treated_as_a_bomb(tmp_path):
    # The pixel data is missing, so decoding must fail as truncated, not be refused for its size.
    message = _expect_one_line_error(_png_declaring_size(tmp_path, 8200, 8200))
    assert "too large" not in message


def test_tensor_conversions_round_trip_every_value():
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, values[::-1], values], axis=-1).reshape(16, 16, 3)
    x = to_tensor(rgb)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[0, 0].flatten(), torch.arange(256, dtype=torch.float32) / 255)
    np.testing.assert_array_equal(to_uint8(x), rgb)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 254.6 / 255, 1.0, 2.0]).view(1, 1, 1, 7).repeat(1, 3, 1, 1)
    np.testing.assert_array_equal(to_uint8(x)[0, :, 0], [0, 0, 0, 1, 255, 255, 255])


def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path, photo):
    for name in ["b/z.PNG", "a.jpg", "b/c/y.TiFf", ".hidden/x.png", "b/._mac.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpg", "b/c/y.TiFf", "b/z.PNG"]
    assert ".webp" in IMAGE_EXTENSIONS


def test_find_images_rejects_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="not found"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images"):
        find_images(tmp_path / "empty")
