"""One image to an ``.icwem`` bitstream and back, with a loaded ICWEM.

``encode_image`` and ``decode_bitstream`` are the only place that pads, entropy-codes, crops and
quantises for real coding; ``codec.py``, ``test.py`` and ``eval.py --real`` all go through them, so the
same image and checkpoint give the same bytes and the same decoded pixels everywhere.

Times are wall-clock seconds for pixels -> strings and strings -> pixels on the model's device (no file
I/O). Both calls end on the CPU (entropy coding, the uint8 copy), so no CUDA synchronisation is needed.
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Optional

import numpy as np
import torch
from torch import nn

from models.refine import RefineOptions, compress_refined

from . import channel_order as channel_orders
from .bitstream import (DEFAULT_MAX_PIXELS, ORDER_VERSION, VARIABLE_RATE_VERSION, VERSION, Bitstream, file_size,
                        pixel_limit_problem)
from ..errors import UserError
from ..image_io import to_tensor, to_uint8
from ..metrics import bpp_from_bytes
from ..padding import Padding, compute_padding, crop, pad

_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, bytes]" = weakref.WeakKeyDictionary()


def model_fingerprint(model: nn.Module) -> bytes:
    """``model.fingerprint()``, computed once per model object (it hashes every weight).

    The cache assumes the weights do not change afterwards, as for a model from ``load_checkpoint``.
    """
    fingerprint = _FINGERPRINTS.get(model)
    if fingerprint is None:
        fingerprint = _FINGERPRINTS[model] = model.fingerprint()
    return fingerprint


def packed_size(bs: Bitstream) -> int:
    """Size in bytes of the ``.icwem`` file holding ``bs`` (header, strings and checksum)."""
    return file_size(bs)


def coding_quality(model: nn.Module, quality: Optional[float]) -> Optional[float]:
    """The quality to code at: ``quality`` (None: the model's middle) for a variable-rate model, a
    finite number in its [1, K]; None for a fixed-rate model, which takes none. Else a ``UserError``."""
    rate_points = getattr(model, "rate_points", 0)
    if not rate_points:
        if quality is not None:
            raise UserError(f"quality {quality:g} needs a variable-rate checkpoint; this one is fixed-rate "
                            "(it codes at the one rate it was trained for)")
        return None
    if quality is None:
        return float(model.default_quality)
    if not (math.isfinite(quality) and 1 <= quality <= rate_points):
        raise UserError(f"quality {quality:g} is outside [1, {rate_points}], this variable-rate checkpoint's range")
    return float(quality)


def encode_image(
    model: nn.Module, rgb_uint8: np.ndarray, refine: Optional[RefineOptions] = None, quality: Optional[float] = None,
    channel_order: Optional[int] = None,
) -> tuple[Bitstream, dict]:
    """Code an HxWx3 uint8 image; returns the bitstream and ``{"bytes", "bpp", "encode_s"}``.

    ``bytes`` is the size of the whole ``.icwem`` file and ``bpp`` counts those bytes per pixel of the
    original (unpadded) image. The model must be in eval mode with its coder tables built
    (``load_checkpoint`` does both). ``refine`` with iterations optimises the latents first
    (models/refine.py; the stats then hold its ``Refinement`` as ``refine``); the file format and the
    decoder are the same, and without iterations the bytes are exactly the plain encoder's. A
    variable-rate model codes at ``quality`` (``coding_quality``) into a version-4 file that records it;
    a fixed-rate model's file is version 3. ``channel_order``: the index of the channel order to code the
    image in (``utils/coding/channel_order.py``; 0: its own); None searches for the best one first, for a
    model that records its λ (the stats then hold it as ``channel_order``). An image coded in another
    order than its own goes into a version-5 or -6 file, which records the order.
    """
    quality = coding_quality(model, quality)
    start = time.perf_counter()  # the search is part of the encoding
    if channel_order is None:
        channel_order = channel_orders.choose(model, rgb_uint8, quality)
    if channel_order:
        rgb_uint8 = channel_orders.reorder(rgb_uint8, channel_order)
    height, width = rgb_uint8.shape[:2]
    fingerprint = model_fingerprint(model)
    device = next(model.parameters()).device
    padding = compute_padding(height, width)
    extra = {"channel_order": channel_order}
    if refine is None or refine.iterations == 0:
        with torch.inference_mode():
            rate = {} if quality is None else {"quality": quality}  # a fixed-rate model is called as before
            out = model.compress(pad(to_tensor(rgb_uint8).to(device), padding), **rate)  # not kept: freed after the analysis
    else:
        out, extra["refine"] = compress_refined(model, pad(to_tensor(rgb_uint8).to(device), padding), refine,
                                                (height, width), quality)
    encode_s = time.perf_counter() - start

    (y_string,), (z_string,) = out["strings"]
    version = VERSION if quality is None else VARIABLE_RATE_VERSION
    bs = Bitstream(
        height=height,
        width=width,
        pad=tuple(padding),
        z_shape=tuple(int(side) for side in out["shape"]),
        y_string=y_string,
        z_string=z_string,
        fingerprint=fingerprint,
        check=channel_orders.seal(out["checks"][0], channel_order),
        version=version if not channel_order else ORDER_VERSION[version],
        quality=quality,
        channel_order=channel_order,
    )
    num_bytes = packed_size(bs)
    return bs, {"bytes": num_bytes, "bpp": bpp_from_bytes(num_bytes, height, width), "encode_s": encode_s, **extra}


def decoder_options(version: int) -> dict:
    """What a file of format ``version`` asks of ``model.decompress``: version 1 holds the original
    implementation's strings (``legacy``: float32 parameters, CompressAI's tables), versions 1 and 2 code
    y as one rANS stream, versions 3 and 4 in chunks of the model's default size (version 4 adds the
    quality, which ``decode_bitstream`` passes)."""
    options: dict = {"legacy": version == 1}
    if version < 3:
        options["chunk_symbols"] = None
    return options


def decode_bitstream(model: nn.Module, bs: Bitstream, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Decode a bitstream to an HxWx3 uint8 image; returns it and ``{"decode_s"}``.

    ``bs`` should come from ``unpack`` / ``read_file`` (which validate the header) or ``encode_image``.
    Raises a one-line ``UserError`` if the bitstream was made by other weights, claims more than
    ``max_pixels`` pixels, holds a stream no encoder writes, does not decode, decodes to other symbols
    or scale indexes than the encoder coded (the coder check of versions 2 and 3), or needs more memory than
    there is. A version-1 file has no coder check: a stream damaged before its checksum was computed
    may decode to another picture.
    """
    fingerprint = model_fingerprint(model)
    if bs.fingerprint != fingerprint:
        raise UserError(
            f"this bitstream was encoded with a different model (fingerprint {bs.fingerprint.hex()}, this "
            f"checkpoint's is {fingerprint.hex()}); decode it with the checkpoint it was encoded with"
        )
    problem = pixel_limit_problem(bs, max_pixels)
    if problem is not None:
        raise UserError(problem)
    rate_points = getattr(model, "rate_points", 0)
    if rate_points and bs.quality is None:
        raise UserError(f"corrupted bitstream: a file of this variable-rate checkpoint must record its quality "
                        f"(format version {VARIABLE_RATE_VERSION} or {ORDER_VERSION[VARIABLE_RATE_VERSION]}), this one is version {bs.version}")
    if bs.quality is not None and not rate_points:
        raise UserError(f"corrupted bitstream: it records a quality ({bs.quality:g}), but its checkpoint is fixed-rate")
    if bs.quality is not None and not 1 <= bs.quality <= rate_points:
        raise UserError(f"corrupted bitstream: quality {bs.quality:g} is outside [1, {rate_points}], the range of "
                        "its checkpoint")
    options = decoder_options(bs.version)
    if bs.quality is not None:
        options["quality"] = bs.quality

    start = time.perf_counter()
    try:
        with torch.inference_mode():
            # decompress checks both strings and bounds the coder's reads (models/entropy/rans_guard.py).
            out = model.decompress([[bs.y_string], [bs.z_string]], bs.z_shape, **options)
            x_hat = crop(out["x_hat"], Padding(*bs.pad))
            finite = bool(torch.isfinite(x_hat).all())
    except (RuntimeError, ValueError, IndexError, OverflowError) as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
            raise UserError(f"not enough memory to decode a {bs.height}x{bs.width} image ({_one_line(exc)})") from None
        raise UserError(f"corrupted bitstream: decoding failed ({_one_line(exc)})") from None
    if tuple(x_hat.shape[-2:]) != (bs.height, bs.width):
        raise UserError(
            f"corrupted bitstream: decoded {x_hat.shape[-2]}x{x_hat.shape[-1]} pixels, header says {bs.height}x{bs.width}"
        )
    check = None if bs.check is None else channel_orders.seal(out["checks"][0], bs.channel_order)
    if check is not None and check != bs.check:
        raise UserError(
            "corrupted bitstream: the decoded symbols and scale indexes (or the channel order) differ from the "
            f"encoder's (coder check {check:08x}, file says {bs.check:08x}); the file was damaged before its "
            "checksum was written"
        )
    if not finite:
        raise UserError("corrupted bitstream: decoding produced non-finite values")
    rgb = to_uint8(x_hat)
    if bs.channel_order:
        rgb = channel_orders.restore(rgb, bs.channel_order)
    return rgb, {"decode_s": time.perf_counter() - start}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
