"""One image to an ``.icwem`` bitstream and back, with a loaded ICWEM.

``encode_image`` and ``decode_bitstream`` are the only place that pads, entropy-codes, crops and
quantises for real coding; ``codec.py``, ``test.py`` and ``eval.py --real`` all go through them, so the
same image and checkpoint give the same bytes and the same decoded pixels everywhere.

Times are wall-clock seconds for pixels -> strings and strings -> pixels on the model's device (no file
I/O). Both calls end on the CPU (entropy coding, the uint8 copy), so no CUDA synchronisation is needed.
"""

from __future__ import annotations

import time
import weakref

import numpy as np
import torch
from torch import nn

from .bitstream import OVERHEAD_BYTES, Bitstream
from .errors import UserError
from .image_io import MAX_PIXELS, to_tensor, to_uint8
from .metrics import bits_per_pixel
from .padding import Padding, crop, pad_image

_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, bytes]" = weakref.WeakKeyDictionary()

# CompressAI's rANS decoder (cpp_exts/rans/rans_interface.cpp) reads its input without bounds checks, so
# a damaged stream that is too short makes it read past the end of its buffer. We append zeros for it to
# read instead: 8 bytes of initial state, and 4 per coded symbol. A symbol consumes at most 16 bits of
# state (16-bit probabilities), so that covers any stream of ordinary symbols with room for raw
# out-of-range values; a stream crafted around long raw values can still read further (CompressAI's to
# fix). A valid stream is consumed exactly, so the zeros never change a correct decode.
_GUARD_BYTES_PER_SYMBOL = 4
_GUARD_BYTES_STATE = 8


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
    return OVERHEAD_BYTES + len(bs.y_string) + len(bs.z_string)


def encode_image(model: nn.Module, rgb_uint8: np.ndarray) -> tuple[Bitstream, dict]:
    """Code an HxWx3 uint8 image; returns the bitstream and ``{"bytes", "bpp", "encode_s"}``.

    ``bytes`` is the size of the whole ``.icwem`` file and ``bpp`` counts those bytes per pixel of the
    original (unpadded) image. The model must be in eval mode with its coder tables built
    (``load_checkpoint`` does both).
    """
    height, width = rgb_uint8.shape[:2]
    fingerprint = model_fingerprint(model)
    device = next(model.parameters()).device
    start = time.perf_counter()
    with torch.inference_mode():
        x, padding = pad_image(to_tensor(rgb_uint8).to(device))
        out = model.compress(x)
    encode_s = time.perf_counter() - start

    (y_string,), (z_string,) = out["strings"]
    bs = Bitstream(
        height=height,
        width=width,
        pad=tuple(padding),
        z_shape=tuple(int(side) for side in out["shape"]),
        y_string=y_string,
        z_string=z_string,
        fingerprint=fingerprint,
    )
    num_bytes = packed_size(bs)
    return bs, {"bytes": num_bytes, "bpp": bits_per_pixel(num_bytes, height, width), "encode_s": encode_s}


def decode_bitstream(model: nn.Module, bs: Bitstream) -> tuple[np.ndarray, dict]:
    """Decode a bitstream to an HxWx3 uint8 image; returns it and ``{"decode_s"}``.

    ``bs`` should come from ``unpack`` / ``read_file`` (which validate the header) or ``encode_image``.
    Raises a one-line ``UserError`` if the bitstream was made by other weights, claims an image larger
    than the repository reads, does not decode (a damaged stream whose checksum still matched), or
    needs more memory than there is. A damaged stream may also decode to another picture: the checksum
    is what catches damage to a file; nothing inside the entropy-coded strings can.
    """
    fingerprint = model_fingerprint(model)
    if bs.fingerprint != fingerprint:
        raise UserError(
            f"this bitstream was encoded with a different model (fingerprint {bs.fingerprint.hex()}, this "
            f"checkpoint's is {fingerprint.hex()}); decode it with the checkpoint it was encoded with"
        )
    if bs.height * bs.width > MAX_PIXELS:
        # No file written by this repository is this large (read_image refuses such images), and the
        # decoder would try to allocate memory in proportion to the claimed size.
        raise UserError(f"corrupted bitstream: image size {bs.height}x{bs.width} is above the {MAX_PIXELS}-pixel limit")

    z_h, z_w = bs.z_shape
    z_symbols = model.config["Z"] * z_h * z_w
    y_symbols = model.config["M"] * (4 * z_h) * (4 * z_w)  # y has 4x the hyper-latent's resolution
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            strings = [[_with_guard(bs.y_string, y_symbols)], [_with_guard(bs.z_string, z_symbols)]]
            x_hat = crop(model.decompress(strings, (z_h, z_w))["x_hat"], Padding(*bs.pad))
            finite = bool(torch.isfinite(x_hat).all())
    except (RuntimeError, ValueError, IndexError, OverflowError) as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
            raise UserError(f"not enough memory to decode a {bs.height}x{bs.width} image ({_one_line(exc)})") from None
        raise UserError(f"corrupted bitstream: decoding failed ({_one_line(exc)})") from None
    if tuple(x_hat.shape[-2:]) != (bs.height, bs.width):
        raise UserError(
            f"corrupted bitstream: decoded {x_hat.shape[-2]}x{x_hat.shape[-1]} pixels, header says {bs.height}x{bs.width}"
        )
    if not finite:
        raise UserError("corrupted bitstream: decoding produced non-finite values")
    rgb = to_uint8(x_hat)
    return rgb, {"decode_s": time.perf_counter() - start}


def _with_guard(string: bytes, num_symbols: int) -> bytes:
    return bytes(string) + bytes(_GUARD_BYTES_STATE + _GUARD_BYTES_PER_SYMBOL * num_symbols)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
