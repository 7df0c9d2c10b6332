"""The forward pass on one image: the likelihood rate and the picture, without entropy coding.

What ``eval.py`` reports without ``--real`` and what the encoder's channel-order search scores
(``channel_order.py``): the transforms run as coding runs them (in row bands for a large image), on a GPU
without TF32, so the estimate describes the picture a real file would decode to.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..device import full_float32
from ..image_io import to_tensor, to_uint8
from ..padding import crop, pad_image


def estimate(model: nn.Module, rgb_uint8: np.ndarray, quality: Optional[float] = None) -> tuple[float, np.ndarray, float]:
    """Forward pass on one image: (estimated bpp of the original size, 8-bit reconstruction, seconds).
    On a GPU without TF32, like coding (``docs/cuda.md``). ``quality``: a variable-rate model's."""
    height, width = rgb_uint8.shape[:2]
    device = next(model.parameters()).device
    start = time.perf_counter()
    with torch.inference_mode(), full_float32():
        x, padding = pad_image(to_tensor(rgb_uint8).to(device))
        out = model(x, inference=True, quality=quality)  # as coding runs the transforms: in bands for a large image
        bits = float(sum(-torch.log2(likelihoods).sum() for likelihoods in out["likelihoods"].values()))
        reconstruction = to_uint8(crop(out["x_hat"], padding))
    return bits / (height * width), reconstruction, time.perf_counter() - start
