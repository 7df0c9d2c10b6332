"""Composite blocks of the TCM transforms and the entropy model (channels-first interfaces).

Every block here that the row-band engine streams (models/tiling.py) says how: ``stages()`` lists its
computation as stages, each with the rule of which output rows it computes exactly from given input
rows, and the block's ``forward`` is those same stages on the whole map (one stage: the block itself).
CompressAI's layers that ICWEM uses get their rule by subclassing, with their attribute names (and so
the checkpoints' keys) unchanged.
"""

from __future__ import annotations

from fractions import Fraction
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import AttentionBlock, ResidualBlock, ResidualBlockUpsample, ResidualBlockWithStride, conv1x1
from torch import Tensor

from .attention import SwinBlock
from .tiling import (
    Stage, before, beside, both, chain, chain_radius, conv_radius, conv_step, run_stages, shuffle_step,
    strided_conv_step, then, window_step,
)


class Transform(nn.Sequential):
    """Layers in sequence (g_a, g_s, h_a, h_*_s, a slice's SWAtten): its stages are its layers' stages."""

    def stages(self) -> List[Stage]:
        return [stage for layer in self for stage in layer.stages()]


class StridedResidualBlock(ResidualBlockWithStride):
    """CompressAI's ``ResidualBlockWithStride`` (stride 2) with its rule: a strided 3×3 then a 3×3; the
    skip is a strided 1×1, inside that. A band starts on an even row."""

    def stages(self) -> List[Stage]:
        assert self.conv1.stride == (2, 2)
        return [Stage(self, chain(strided_conv_step, conv_step(1)), 2, Fraction(1, 2))]


class UpsamplingResidualBlock(ResidualBlockUpsample):
    """CompressAI's ``ResidualBlockUpsample`` (×2) with its rule: sub-pixel 3×3, then a 3×3; the skip is
    a sub-pixel 3×3, inside that."""

    def stages(self) -> List[Stage]:
        return [Stage(self, chain(conv_step(1), shuffle_step, conv_step(1)), 1, Fraction(2))]


class StridedConv(nn.Conv2d):
    """A 3×3 convolution with stride 2 and padding 1 (CompressAI's ``conv3x3(..., stride=2)``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, stride=2, padding=1)

    def stages(self) -> List[Stage]:
        return [Stage(self, strided_conv_step, 2, Fraction(1, 2))]


class SubpelConv(nn.Sequential):
    """A 3×3 convolution then a pixel shuffle (CompressAI's ``subpel_conv3x3``: same layers, same keys)."""

    def __init__(self, in_channels: int, out_channels: int, r: int = 2) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels * r**2, 3, padding=1), nn.PixelShuffle(r))

    def stages(self) -> List[Stage]:
        assert self[-1].upscale_factor == 2
        return [Stage(self, chain(conv_step(conv_radius(self[0])), shuffle_step), 1, Fraction(2))]


class ParameterNet(nn.Sequential):
    """A per-slice mean / scale / LRP network: three 3×3 convolutions with GELU between them."""

    def __init__(self, in_channels: int, hidden: Sequence[int], out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden[0], 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden[0], hidden[1], 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden[1], out_channels, 3, padding=1),
        )

    def stages(self) -> List[Stage]:
        """One stage per convolution, the activation after it included."""
        stages: List[Stage] = []
        for layer in self:
            if isinstance(layer, nn.Conv2d):
                stages.append(Stage(layer, conv_step(conv_radius(layer))))
            else:  # a pointwise activation: joins the convolution before it
                stages[-1] = then(stages[-1], layer)
        return stages

    def forward(self, x: Tensor) -> Tensor:
        return run_stages(self.stages(), x)


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

    def stages(self) -> List[Stage]:
        """One stage: the residual conv half (two 3×3) beside the window attention half; a band starts
        on a multiple of the window."""
        msa = self.trans_block.msa
        conv_half = chain(conv_step(1), conv_step(1))
        return [Stage(self, both(conv_half, window_step(msa.window_size, msa.shift)), msa.window_size)]

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

    def stages(self) -> List[Stage]:
        """One stage per block, each on a channels-first map; a band starts on a multiple of the window."""

        def stage(block: SwinBlock) -> Stage:
            msa = block.msa
            return Stage(lambda x: block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                         window_step(msa.window_size, msa.shift), msa.window_size)

        return [stage(self.block_1), stage(self.block_2)]

    def forward(self, x: Tensor) -> Tensor:
        return run_stages(self.stages(), x)


class SWAtten(AttentionBlock):
    """Swin-window attention for the entropy model: compressai's AttentionBlock with its non-local
    branch computed by a Swin pair, wrapped in 1×1 projections in → attn_dim → out.

    ``out_conv(conv_a(t) · sigmoid(conv_b(swin(t))) + t)`` with ``t = in_conv(x)``, computed as the three
    stages of ``stages``.
    """

    def __init__(self, in_dim: int, out_dim: int, attn_dim: int, head_dim: int, window_size: int) -> None:
        super().__init__(N=attn_dim)
        self.non_local_block = SwinPair(attn_dim, head_dim, window_size)
        self.in_conv = conv1x1(in_dim, attn_dim)
        self.out_conv = conv1x1(attn_dim, out_dim)

    def stages(self) -> List[Stage]:
        """Three stages: ``t = in_conv(x)`` and the W Swin block, the SW Swin block (its Swin branch beside
        ``t``: ``tiling.beside``), then ``out_conv(conv_a(t) · sigmoid(conv_b(s)) + t)``, whose two
        branches read ``chain_radius`` rows each. A band starts on a multiple of the window."""
        first, second = self.non_local_block.stages()

        def project(x: Tensor) -> Tuple[Tensor, Tensor]:
            t = self.in_conv(x)
            return t, t

        def gate(m: Tuple[Tensor, Tensor]) -> Tensor:
            t, s = m
            return self.out_conv(self.conv_a(t) * torch.sigmoid(self.conv_b(s)) + t)

        radius = max(chain_radius(self.conv_a), chain_radius(self.conv_b))
        return [before(beside(first), project), beside(second), Stage(gate, conv_step(radius))]

    def forward(self, x: Tensor) -> Tensor:
        return run_stages(self.stages(), x)
