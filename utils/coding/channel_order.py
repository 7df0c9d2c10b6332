"""Channel-order search: the encoder codes a picture in whichever of its six channel orders the model codes best.

A learned codec does not treat its three input channels alike: trained on photographs it learns where
luminance tends to sit, and colour augmentation in training narrows the gap without closing it (the shipped
models of round 8 coded one held-out photo 2.4 dB apart in two of its channel orders). So the encoder tries
the six orders of the picture on a small proxy of it, scores each with the model's training objective
bpp + λ·255²·MSE (likelihood rate, the λ the model was trained for at the rate it codes), codes the picture
in the best order and records that order's index in the file (format versions 5 and 6,
``utils/coding/bitstream.py``); the decoder puts the channels back.

The six candidates of a picture given in any channel order are the same six pictures, scored alike, so the
choice, the bits and the decoded picture do not depend on the order the picture came in: the codec is blind
to which channel is which by construction, and each picture gets the order its model codes best. The proxy
is the picture shrunk by an integer factor to at most ``SEARCH_PIXELS`` pixels by box averaging (Pillow's
``reduce``, the same arithmetic on every channel). On the held-out photos at 512 pixels (proxies at half
size), the proxy's pick scored 0.6 % above the best order at full size on average (3.1 % at worst), an
order at random 6.6 % (``tools/channel_order_study.py``, round-8 models), at a quarter of the work per
candidate.

A model that records no λ (the published checkpoints) is not searched: its pictures are coded in their own
order, into the files they always made.
"""

from __future__ import annotations

import math
import zlib
from typing import List, Optional

import numpy as np
from PIL import Image
from torch import nn

from models.refine import trained_lambda_at

from ..image_io import CHANNEL_ORDERS
from .forward import estimate

# The proxy's largest size: six forward passes on 2^16 pixels cost about as much as one on 0.4 MP.
SEARCH_PIXELS = 1 << 16


def reorder(rgb: np.ndarray, index: int) -> np.ndarray:
    """``rgb`` (H×W×3) in channel order ``CHANNEL_ORDERS[index]``."""
    return np.ascontiguousarray(rgb[..., list(CHANNEL_ORDERS[index])])


def restore(rgb: np.ndarray, index: int) -> np.ndarray:
    """The inverse of ``reorder``: a picture coded in order ``index`` back in its own order."""
    order = CHANNEL_ORDERS[index]
    return np.ascontiguousarray(rgb[..., [order.index(c) for c in range(3)]])


def proxy(rgb: np.ndarray, max_pixels: int = SEARCH_PIXELS) -> np.ndarray:
    """``rgb`` shrunk by the smallest integer factor that leaves at most ``max_pixels`` pixels (box average)."""
    height, width = rgb.shape[:2]
    factor = math.ceil(math.sqrt(height * width / max_pixels))
    if factor <= 1:
        return rgb
    return np.asarray(Image.fromarray(rgb).reduce(factor))


def scores(model: nn.Module, rgb: np.ndarray, lmbda: float, quality: Optional[float] = None,
           max_pixels: int = SEARCH_PIXELS) -> List[float]:
    """bpp + λ·255²·MSE of the proxy of ``rgb`` (at most ``max_pixels``) in each of the six channel orders
    (likelihood rate)."""
    small = proxy(rgb, max_pixels)
    values = []
    for index in range(len(CHANNEL_ORDERS)):
        candidate = reorder(small, index)
        bpp, decoded, _ = estimate(model, candidate, quality)
        mse = float(np.mean(np.square(decoded.astype(np.float64) - candidate))) / 255**2
        values.append(bpp + lmbda * 255**2 * mse)
    return values


def choose(model: nn.Module, rgb: np.ndarray, quality: Optional[float] = None) -> int:
    """The index of the channel order to code ``rgb`` in: the best-scoring one, or 0 (its own order) for a
    model that records no λ."""
    lmbda = trained_lambda_at(model, quality)
    if lmbda is None:
        return 0
    values = scores(model, rgb, lmbda, quality)
    return int(np.argmin(values))  # a tie is between identical candidates (channels alike): any is the same picture


def seal(check: int, index: int) -> int:
    """The coder check a file stores: the model's, with the channel order folded in when it is not the
    picture's own (index 0 leaves version-3 and -4 files as they were)."""
    return check if index == 0 else zlib.crc32(bytes([index]), check)


def name(index: int) -> str:
    """A channel order's name, the input's channels in coding order (``"GRB"``: green, red, blue)."""
    return "".join("RGB"[c] for c in CHANNEL_ORDERS[index])
