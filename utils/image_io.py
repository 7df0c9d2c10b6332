"""Reading and writing images, and the one uint8 <-> tensor conversion used everywhere.

Every image enters the repo through ``read_image`` as an HxWx3 uint8 RGB array, whatever Pillow opened
(palette, 16-bit, CMYK, alpha, EXIF-rotated, ...), with a list of notices saying what was changed, so
metrics always compare like with like. ``to_tensor`` / ``to_uint8`` are the only conversions between
that array and the model's 1x3xHxW float tensor in [0, 1]; using one rounding rule everywhere keeps
PSNR comparable between the codec, the evaluation and the anchors.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# The six orders of the colour channels (input channels in the order they are taken): what --colour-augment
# draws from, what the encoder's channel-order search tries, what colour evaluations code, and the orders
# the entropy stage computes its latents in.
CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

# Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that. We turn the warning into a refusal
# too, so the limit is one number: 2**28 pixels (16384x16384) opens, anything larger is refused before
# a byte of pixel data is decoded. This is well above 8192x8192 and stops decompression bombs.
MAX_PIXELS = 2**28
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_EXIF_ORIENTATION = 0x0112

# Pillow's errors for a file that is not, or not entirely, a valid image vary by plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def read_image(path: PathLike) -> tuple[np.ndarray, list[str]]:
    """Read any image Pillow can open as HxWx3 uint8 RGB, plus notices about what had to change.

    Conversions (each one that loses or changes information adds a notice):
      * EXIF orientation is applied, so the array looks like the image does in a viewer.
      * Grayscale (1, L) is copied to three channels; palette images are expanded.
      * Alpha (LA, RGBA, PA, palette transparency) is dropped: RGB values are kept as stored, not
        composited, because the codecs here code three channels.
      * 16-bit samples (I;16, 16-bit PNG) become ``round(v * 255 / 65535)``; 32-bit integer images
        (mode I) are read with the same 16-bit scale after clipping to 0..65535.
      * 32-bit float images (mode F) follow Pillow's convention of a 0..255 range: rounded and clipped.
      * CMYK and other colour spaces go through Pillow's conversion (no ICC colour management).
      * Multi-frame files (animated, multi-page) give their first frame.

    Raises ``UserError`` naming the path for a missing file, a folder, an empty file, a file that is
    not an image, a truncated or corrupt image, and an image above ``MAX_PIXELS`` pixels.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not an image")

    notices: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                rgb = _decode_rgb(path, img, notices)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: image too large (more than {MAX_PIXELS} pixels); refusing to decode it") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file Pillow can read") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except _DECODE_ERRORS as exc:
        raise UserError(f"{path}: truncated or corrupt image ({_one_line(exc)})") from None
    return rgb, notices


def _decode_rgb(path: Path, img: Image.Image, notices: list[str]) -> np.ndarray:
    """Fully decode ``img`` (so truncation shows up here) and convert it to HxWx3 uint8 RGB."""
    if getattr(img, "n_frames", 1) > 1:
        notices.append(f"{img.n_frames} frames; using the first")
    png_rawmode = _png_16bit_rawmode(img)  # read before load(), which discards the tile list
    img.load()
    if png_rawmode is not None:
        rgb, alpha = _png_16bit_colour(path, img, png_rawmode, notices)
    else:
        rgb, alpha = _to_rgb(_upright(img, notices), notices)
    if alpha:
        notices.append("alpha channel dropped")
    return np.array(rgb, dtype=np.uint8, order="C")  # a writable copy, not a view of Pillow's buffer


def _to_rgb(img: Image.Image, notices: list[str]) -> tuple[np.ndarray, bool]:
    """Convert a decoded Pillow image to uint8 RGB; also say whether an alpha channel was present."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img), False
    if mode in ("1", "L"):
        return np.asarray(img.convert("RGB")), False
    if mode.startswith("I;16"):
        notices.append("16-bit samples scaled to 8 bit")
        return _gray_to_rgb(_scale_16_to_8(np.asarray(img).astype(np.int64))), False
    if mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            notices.append("32-bit integer samples clipped to 0..65535")
        notices.append("32-bit integer samples read as 16 bit and scaled to 8 bit")
        return _gray_to_rgb(_scale_16_to_8(np.clip(values, 0, 65535))), False
    if mode == "F":
        notices.append("32-bit float samples rounded and clipped to 0..255")
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        return _gray_to_rgb(np.clip(np.round(values), 0, 255).astype(np.uint8)), False
    if mode == "P":
        has_alpha = "transparency" in img.info
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))[..., :3], has_alpha
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return np.asarray(img.convert("RGBA"))[..., :3], True
    if mode == "CMYK":
        notices.append("CMYK converted to RGB without colour management")
        return np.asarray(img.convert("RGB")), False
    try:
        converted = img.convert("RGB")
    except ValueError:
        raise UserError(f"unsupported image mode {mode}") from None
    notices.append(f"{mode} converted to RGB")
    return np.asarray(converted), False


def _png_16bit_rawmode(img: Image.Image) -> str | None:
    """The raw mode of a 16-bit colour PNG, which Pillow would otherwise cut to its high bytes."""
    if img.format != "PNG" or len(img.tile) != 1:
        return None
    rawmode = img.tile[0].args
    if isinstance(rawmode, str) and rawmode.endswith(";16B") and not rawmode.startswith("I;"):
        return rawmode
    return None


def _png_16bit_colour(path: Path, img: Image.Image, rawmode: str, notices: list[str]) -> tuple[np.ndarray, bool]:
    """Decode a 16-bit colour PNG at full precision and round it to 8 bit.

    Pillow has no 16-bit colour mode: it keeps each sample's high byte, i.e. truncates. Decoding the
    file a second time with the little-endian raw mode yields the low bytes, so we can round instead.
    If Pillow cannot do that second decode, we keep its truncated result and say so.
    """
    upright = _upright(img, notices)
    high = np.asarray(upright).astype(np.int64)
    try:
        with Image.open(path) as again:
            again.tile = [again.tile[0]._replace(args=rawmode[:-1] + "L")]
            again.load()
            low = np.asarray(_upright(again, None)).astype(np.int64)
    except (ValueError, OSError):
        notices.append("16-bit samples reduced to 8 bit by keeping the high byte")
        return _to_rgb(upright, [])
    notices.append("16-bit samples scaled to 8 bit")
    values = _scale_16_to_8(high * 256 + low)
    has_alpha = img.mode in ("LA", "RGBA")
    if values.shape[-1] < 3:  # LA kept as two channels
        return _gray_to_rgb(values[..., 0]), has_alpha
    return values[..., :3], has_alpha


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 with rounding (integer arithmetic, so exact)."""
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _upright(img: Image.Image, notices: list[str] | None) -> Image.Image:
    """Apply the EXIF orientation tag (``ImageOps.exif_transpose``) so pixels look as in a viewer."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # Pillow raises many types for malformed EXIF; the pixels are still fine.
        if notices is not None:
            notices.append("unreadable EXIF metadata ignored")
        return img
    if orientation not in range(2, 9):
        return img
    if notices is not None:
        notices.append(f"rotated/flipped according to EXIF orientation {orientation}")
    return ImageOps.exif_transpose(img)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def write_png(path: PathLike, rgb_uint8: np.ndarray) -> None:
    """Save an HxWx3 uint8 array as a PNG (lossless), creating parent folders as needed."""
    if rgb_uint8.dtype != np.uint8 or rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb_uint8.dtype} {rgb_uint8.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb_uint8)).save(path, format="PNG")


def to_tensor(rgb_uint8: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float32 equal to ``value / 255``, the model's input convention."""
    if rgb_uint8.dtype != np.uint8 or rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb_uint8.dtype} {rgb_uint8.shape}")
    if not rgb_uint8.flags.writeable:  # e.g. np.asarray(PIL image); torch warns about sharing those
        rgb_uint8 = rgb_uint8.copy()
    x = torch.from_numpy(np.ascontiguousarray(rgb_uint8)).permute(2, 0, 1).unsqueeze(0)
    return x.to(torch.float32).div(255.0).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) float in [0, 1] -> HxWx3 uint8 via ``round(clamp(x, 0, 1) * 255)``.

    This is the single quantisation to 8 bit in the repo (reconstructions, metrics, saved PNGs).
    ``torch.round`` rounds halves to even; ``to_uint8(to_tensor(a))`` returns ``a`` exactly.
    """
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got shape {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a 1x3xHxW or 3xHxW tensor, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round()
    return np.ascontiguousarray(x.to(torch.uint8).permute(1, 2, 0).numpy())


def find_images(root: PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, sorted), by extension, case-insensitively.

    Hidden files and folders (names starting with ".", e.g. macOS "._x.png" resource forks) are
    skipped. A single image file is accepted as ``root`` and returned alone. A missing folder, or one
    with no images, is a ``UserError``: an empty evaluation would otherwise report nothing silently.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: folder not found")
    if root.is_file():
        if root.suffix.lower() in IMAGE_EXTENSIONS:
            return [root]
        raise UserError(f"{root}: not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)}) or a folder")
    found = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not found:
        raise UserError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found)
