"""Classical codecs as rate-distortion anchors: JPEG, WebP, JPEG 2000, HEVC (HEIF), AVIF, JPEG XL.

Every codec is driven through Pillow (plus plugins) the same way: encode the 8-bit RGB image to an
in-memory file, decode that file back, and measure. The rate is the real size of the encoded file, with
all its headers, so the comparison with our ``.icwem`` files (also headers included) is fair.

A codec whose package is not installed is reported by ``codec_unavailable`` and skipped by the tools;
only JPEG and WebP are guaranteed (they are part of Pillow's standard wheels).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import PIL
from PIL import Image, features

from ..errors import UserError
from ..image_io import read_image, to_tensor
from ..metrics import bpp_from_bytes, ms_ssim, psnr


@dataclass(frozen=True)
class Codec:
    """How to drive one classical codec through Pillow.

    ``quality`` is the codec's own quality knob (higher = more bits); ``qualities`` is the default
    sweep and ``quality_range`` the interval ``match_quality`` searches.
    """

    name: str
    label: str
    pillow_format: str
    qualities: tuple[int, ...]
    quality_range: tuple[int, int]
    save_options: Callable[[int], dict]
    package: Optional[str] = None  # pip package providing the Pillow plugin, if not Pillow itself


_SWEEP = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)

CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        Codec("jpeg", "JPEG", "JPEG", _SWEEP, (1, 100), lambda q: {"quality": q, "subsampling": "4:2:0"}),
        Codec("webp", "WebP", "WEBP", _SWEEP, (0, 100), lambda q: {"quality": q}),
        # OpenJPEG's rate control takes a target PSNR in dB, so for JPEG 2000 "quality" is in dB.
        Codec(
            "jpeg2000",
            "JPEG 2000",
            "JPEG2000",
            (24, 27, 30, 33, 36, 39, 42, 45),
            (10, 70),
            lambda q: {"quality_mode": "dB", "quality_layers": [q], "irreversible": True},
        ),
        Codec("hevc-heif", "HEVC (HEIF)", "HEIF", _SWEEP, (0, 100), lambda q: {"quality": q}, "pillow-heif"),
        Codec("avif", "AVIF", "AVIF", _SWEEP, (0, 100), lambda q: {"quality": q}, "pillow-avif-plugin"),
        Codec("jpeg-xl", "JPEG XL", "JXL", _SWEEP, (1, 100), lambda q: {"quality": q}, "pillow-jxl-plugin"),
    )
}


class CodedImage(NamedTuple):
    """One image through one codec: the decoded pixels, the file size, and the time each way."""

    rgb: np.ndarray
    num_bytes: int
    encode_s: float
    decode_s: float


@functools.lru_cache(maxsize=None)
def codec_unavailable(name: str) -> Optional[str]:
    """Why codec ``name`` cannot run here (a one-line notice), or None if it can.

    Importing the plugin packages registers their formats with Pillow; this is done lazily so that
    JPEG and WebP work without them.
    """
    codec = _get(name)
    if name == "hevc-heif":
        try:
            importlib.import_module("pillow_heif").register_heif_opener()
        except ImportError:
            pass
    elif name == "avif" and not features.check("avif"):
        try:
            importlib.import_module("pillow_avif")  # older Pillow: the plugin registers AVIF on import
        except ImportError:
            pass
    elif name == "jpeg-xl":
        try:
            importlib.import_module("pillow_jxl")
        except ImportError:
            pass
    Image.init()
    if codec.pillow_format in Image.SAVE and codec.pillow_format in Image.OPEN:
        return None
    if codec.package is None:
        return f"{codec.label}: this Pillow build cannot encode {codec.pillow_format}; skipped"
    return f"{codec.label}: needs the {codec.package} package (pip install {codec.package}); skipped"


def describe(name: str) -> str:
    """A description for the results file: the libraries and settings behind the numbers."""
    codec = _get(name)
    pillow = f"Pillow {PIL.__version__}"
    if name == "jpeg":
        return f"{pillow}, libjpeg {features.version('jpg')}, 4:2:0 chroma, default Huffman tables"
    if name == "webp":
        return f"{pillow}, libwebp {features.version('webp')}, default method 4"
    if name == "jpeg2000":
        return f"{pillow}, OpenJPEG {features.version('jpg_2000')}, 9/7 wavelet, rate control by target PSNR (dB)"
    if name == "hevc-heif":
        info = importlib.import_module("pillow_heif").libheif_info()
        return f"pillow-heif {_version('pillow-heif')}, libheif {info.get('libheif')}, {info.get('HEIF')}, 4:2:0"
    if name == "avif":
        if features.check("avif"):
            return f"{pillow}, libavif {features.version('avif')}, 4:2:0, default speed"
        return f"pillow-avif-plugin {_version('pillow-avif-plugin')}, 4:2:0, default speed"
    if name == "jpeg-xl":
        return f"pillow-jxl-plugin {_version('pillow-jxl-plugin')}, default effort"
    return codec.label


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _get(name: str) -> Codec:
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r}; choose from {', '.join(CODECS)}")
    return CODECS[name]


def _require(name: str) -> Codec:
    reason = codec_unavailable(name)
    if reason is not None:
        raise UserError(reason.removesuffix("; skipped"))
    return CODECS[name]


def _encode(codec: Codec, img: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=codec.pillow_format, **codec.save_options(quality))
    return buffer.getvalue()


def code_image(codec: str, rgb: np.ndarray, quality: int) -> CodedImage:
    """Encode an HxWx3 uint8 image with a classical codec at ``quality`` and decode it back."""
    spec = _require(codec)
    img = Image.fromarray(rgb)
    start = time.perf_counter()
    data = _encode(spec, img, quality)
    encode_s = time.perf_counter() - start

    start = time.perf_counter()
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()
        out = np.array(decoded if decoded.mode == "RGB" else decoded.convert("RGB"))
    decode_s = time.perf_counter() - start
    if out.shape != rgb.shape:
        raise RuntimeError(f"{spec.label} decoded a {out.shape} image from a {rgb.shape} input")
    return CodedImage(out, len(data), encode_s, decode_s)


def match_quality(codec: str, rgb: np.ndarray, target_bpp: float) -> int:
    """The codec quality whose file size comes closest to ``target_bpp`` on this image.

    Binary search over the integer quality range, assuming size grows with quality (true of all
    these codecs up to small wobbles); only encodes, so it costs about log2(range) encodings.
    """
    spec = _require(codec)
    img = Image.fromarray(rgb)
    height, width = rgb.shape[:2]
    sizes: dict[int, float] = {}

    def bpp_at(quality: int) -> float:
        if quality not in sizes:
            sizes[quality] = bpp_from_bytes(len(_encode(spec, img, quality)), height, width)
        return sizes[quality]

    low, high = spec.quality_range
    if bpp_at(high) <= target_bpp:
        return high
    # Invariant: bpp_at(high) > target; find the lowest such quality.
    while low < high:
        middle = (low + high) // 2
        if bpp_at(middle) > target_bpp:
            high = middle
        else:
            low = middle + 1
    candidates = [q for q in (high - 1, high) if q >= spec.quality_range[0]]
    return min(candidates, key=lambda q: (abs(bpp_at(q) - target_bpp), q))


def match_bitrate(codec: str, rgb: np.ndarray, target_bpp: float) -> CodedImage:
    """Code ``rgb`` at the quality closest to ``target_bpp`` (see ``match_quality``), for side-by-side demos."""
    return code_image(codec, rgb, match_quality(codec, rgb, target_bpp))


def evaluate_codecs(
    paths: Sequence[Path],
    codecs: Sequence[str],
    qualities: Optional[Sequence[int]] = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, list[float]]]:
    """Sweep each codec's qualities over every image; return CompressAI-style averaged results.

    For each quality, PSNR, MS-SSIM, bpp and times are averaged over images (as CompressAI's
    ``eval_model`` does), giving one RD point per quality. ``qualities`` overrides every codec's
    default sweep. Each image is read once; codecs must be available (see ``codec_unavailable``).
    """
    if not paths:
        raise ValueError("no images to evaluate")
    sweeps = {name: tuple(qualities) if qualities else _require(name).qualities for name in codecs}
    keys = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
    sums = {name: {key: np.zeros(len(sweep)) for key in keys} for name, sweep in sweeps.items()}

    for index, path in enumerate(paths):
        rgb, notices = read_image(path)
        for notice in notices:
            log(f"{path}: {notice}")
        log(f"[{index + 1}/{len(paths)}] {path} ({rgb.shape[1]}x{rgb.shape[0]})")
        original = to_tensor(rgb)
        for name, sweep in sweeps.items():
            for i, quality in enumerate(sweep):
                coded = code_image(name, rgb, quality)
                decoded = to_tensor(coded.rgb)
                point = sums[name]
                point["psnr-rgb"][i] += psnr(original, decoded)
                point["ms-ssim-rgb"][i] += ms_ssim(original, decoded)
                point["bpp"][i] += bpp_from_bytes(coded.num_bytes, rgb.shape[0], rgb.shape[1])
                point["encoding_time"][i] += coded.encode_s
                point["decoding_time"][i] += coded.decode_s

    return {
        name: {"quality": [float(q) for q in sweeps[name]]}
        | {key: (totals / len(paths)).tolist() for key, totals in sums[name].items()}
        for name in sweeps
    }
