"""Composite blocks of the TCM transforms and the entropy model (channels-first interfaces)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import AttentionBlock, ResidualBlock, conv1x1
from torch import Tensor

from .attention import SwinBlock


class ConvTransBlock(nn.Module):
    """Transformer-CNN block (TCB): a 1×1 mix, then a residual-conv half and a Swin half, then a 1×1 mix.

    Width 2·dim split into dim | dim. The conv half keeps the original's double skip
    (ResidualBlock's own plus an outer one).
    """

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.trans_block = SwinBlock(dim, head_dim, window_size, shifted, drop_path)
        self.conv1_1 = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.conv1_2 = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.conv_block = ResidualBlock(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        conv_x, trans_x = self._halves(x)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))

    def _halves(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``conv1_1(x)`` split into the conv half and the Swin half. A channels-last map (inference,
        models/tiling.py) gets each half from its own convolution, so that each is a contiguous map and
        the Swin half is a plain NHWC tensor for its LayerNorm and windows (a split would hand both
        halves on as strided views, copied again further on)."""
        if x.is_contiguous():
            return torch.split(self.conv1_1(x), (self.dim, self.dim), dim=1)
        w, b = self.conv1_1.weight, self.conv1_1.bias
        return F.conv2d(x, w[:self.dim], b[:self.dim]), F.conv2d(x, w[self.dim:], b[self.dim:])


def tcb_stage(dim: int, depth: int, head_dim: int, window_size: int, drop_paths=None) -> list:
    """``depth`` TCBs alternating W, SW, W, … (always starting with W)."""
    drop_paths = drop_paths if drop_paths is not None else [0.0] * depth
    return [ConvTransBlock(dim, head_dim, window_size, shifted=bool(i % 2), drop_path=drop_paths[i]) for i in range(depth)]


class SwinPair(nn.Module):
    """Two Swin blocks, W then SW, on a channels-first map (``non_local_block`` of SWAtten)."""

    def __init__(self, dim: int, head_dim: int, window_size: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.block_1 = SwinBlock(dim, head_dim, window_size, shifted=False, drop_path=drop_path)
        self.block_2 = SwinBlock(dim, head_dim, window_size, shifted=True, drop_path=drop_path)

    def forward(self, x: Tensor) -> Tensor:
        t = x.permute(0, 2, 3, 1)
        t = self.block_2(self.block_1(t))
        return t.permute(0, 3, 1, 2)


class SWAtten(AttentionBlock):
    """Swin-window attention for the entropy model: compressai's AttentionBlock with its non-local
    branch computed by a Swin pair, wrapped in 1×1 projections in → attn_dim → out.

    ``out_conv(conv_a(t) · sigmoid(conv_b(swin(t))) + t)`` with ``t = in_conv(x)``.
    """

    def __init__(self, in_dim: int, out_dim: int, attn_dim: int, head_dim: int, window_size: int) -> None:
        super().__init__(N=attn_dim)
        self.non_local_block = SwinPair(attn_dim, head_dim, window_size)
        self.in_conv = conv1x1(in_dim, attn_dim)
        self.out_conv = conv1x1(attn_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        t = self.in_conv(x)
        gate = torch.sigmoid(self.conv_b(self.non_local_block(t)))
        return self.out_conv(self.conv_a(t) * gate + t)
