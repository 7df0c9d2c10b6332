"""Pad an arbitrary image to the model's size multiple (64) and crop the result back.

The mode and placement were chosen by measurement (``tools/padding_study.py``, results in
benchmarks/RESULTS.md): zeros at the bottom/right cost the fewest real bytes of the five variants
measured (0.6 % fewer than the original's centred zeros; all variants were within 1 %), and keep the
image at the origin, so cropping back is a plain slice.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

DEFAULT_MULTIPLE = 64
DEFAULT_MODE = "constant"
DEFAULT_PLACEMENT = "bottom-right"


class Padding(NamedTuple):
    """Pixels added on each side."""

    top: int
    bottom: int
    left: int
    right: int


def compute_padding(h: int, w: int, multiple: int = DEFAULT_MULTIPLE, placement: str = DEFAULT_PLACEMENT) -> Padding:
    """Smallest padding that makes (h, w) multiples of ``multiple``, placed ``centre`` or ``bottom-right``."""
    if h < 1 or w < 1:
        raise ValueError(f"image size {h}x{w} is empty")
    ph, pw = (-h) % multiple, (-w) % multiple
    if placement == "bottom-right":
        return Padding(0, ph, 0, pw)
    if placement == "centre":
        return Padding(ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    raise ValueError(f"unknown placement {placement!r}")


def pad(x: Tensor, padding: Padding, mode: str = DEFAULT_MODE) -> Tensor:
    """Pad a B×C×H×W tensor. ``replicate`` works for any size, even 1×1; ``constant`` pads with zeros."""
    if not any(padding):
        return x
    spec = (padding.left, padding.right, padding.top, padding.bottom)
    if mode == "constant":
        return F.pad(x, spec, mode="constant", value=0.0)
    if mode == "reflect":
        # Reflection needs the pad to be smaller than the side; fall back to replicate where it is not.
        h, w = x.shape[-2:]
        if padding.top >= h or padding.bottom >= h or padding.left >= w or padding.right >= w:
            mode = "replicate"
    return F.pad(x, spec, mode=mode)


def pad_image(x: Tensor, multiple: int = DEFAULT_MULTIPLE, mode: str = DEFAULT_MODE, placement: str = DEFAULT_PLACEMENT):
    """Pad ``x`` to a multiple of ``multiple``; returns (padded tensor, Padding) for :func:`crop`."""
    padding = compute_padding(x.shape[-2], x.shape[-1], multiple, placement)
    return pad(x, padding, mode), padding


def crop(x: Tensor, padding: Padding) -> Tensor:
    """Undo :func:`pad_image`."""
    h, w = x.shape[-2:]
    return x[..., padding.top:h - padding.bottom, padding.left:w - padding.right]
