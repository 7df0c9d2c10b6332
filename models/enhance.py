"""Feature-attention ("enhancement") blocks applied to the image before analysis and after synthesis."""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, List, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .tiling import Stage, before, beside, conv_radius, conv_step, run_stages

# An enhancement block's dense maps hold up to 195 channels at full resolution: streamed, its stages
# compute this share of a band at a time, so that they need no more memory than the half-resolution TCBs.
ENH_SHARE = Fraction(1, 2)


def _scaled_xavier_(conv: nn.Conv2d, scale: float) -> None:
    nn.init.xavier_normal_(conv.weight)
    conv.weight.data.mul_(scale)
    nn.init.zeros_(conv.bias)


class DenseBlock(nn.Module):
    """Five 3×3 convolutions, each reading the input and all earlier outputs (dense connectivity).

    Initialised near zero (conv1-4 Xavier × 0.1, conv5 zero) so that a fresh enhancement block
    starts as the identity. Its computation is written once, as stages (``grow_stages``, then conv5),
    which ``forward`` and the enclosing ``EnhBlock`` both run.
    """

    def __init__(self, in_channels: int, out_channels: int, growth: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(in_channels + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(in_channels + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(in_channels + 4 * growth, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            _scaled_xavier_(conv, 0.1)
        nn.init.zeros_(self.conv5.weight)
        nn.init.zeros_(self.conv5.bias)

    def grow_stages(self) -> List[Stage]:
        """conv1..conv4, each appending its features to the map it reads (the block's input, then the
        features so far): one concatenation per convolution, as dense connectivity needs anyway."""

        def grow(conv: nn.Conv2d) -> Callable[[Tensor], Tensor]:
            return lambda t: torch.cat((t, self.act(conv(t))), dim=1)

        return [Stage(grow(conv), conv_step(conv_radius(conv)), share=ENH_SHARE)
                for conv in (self.conv1, self.conv2, self.conv3, self.conv4)]

    def context_rows(self) -> int:
        """Each of the five convolutions reads the previous one's output: their radii add up."""
        return sum(conv_radius(c) for c in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv5(run_stages(self.grow_stages(), x))


class EnhBlock(nn.Module):
    """``x + 0.2 · layers(x)``: a residual refinement of a 3-channel image."""

    def __init__(self, channels: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            DenseBlock(3, channels, growth),
            nn.Conv2d(channels, channels, 1),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Conv2d(channels, channels, 1),
            DenseBlock(channels, 3, growth),
        )

    def stages(self, clamp: bool = False) -> List[Stage]:
        """The block one 3×3 convolution at a time (``clamp``: the decoder's clamp of its output to [0, 1]).

        As one stage the block would compute its whole 11-row context again for every streamed piece;
        as a stage per convolution each repeats only its own row on either side. Between the stages
        the block's input x travels beside the map being computed (``tiling.beside``), for the residual.
        """
        db1, *middle, db2 = self.layers

        def stage(fn: Callable[[Tensor], Tensor], *convs: nn.Conv2d) -> Stage:
            return Stage(fn, conv_step(sum(conv_radius(conv) for conv in convs)), share=ENH_SHARE)

        def middle_layers(h: Tensor) -> Tensor:
            for layer in middle:
                h = layer(h)
            return h

        def last(m: Tuple[Tensor, Tensor]) -> Tensor:
            x = m[0] + 0.2 * db2.conv5(m[1])
            return x.clamp(0, 1) if clamp else x

        first, *grow_1 = db1.grow_stages()
        return [
            before(beside(first), lambda x: (x, x)),
            *map(beside, grow_1),
            beside(stage(db1.conv5, db1.conv5)),
            beside(stage(middle_layers, *middle)),
            *map(beside, db2.grow_stages()),
            stage(last, db2.conv5),
        ]

    def context_rows(self) -> int:
        """Rows of context the block reads on each side (11 for the published blocks)."""
        return sum(m.context_rows() if isinstance(m, DenseBlock) else conv_radius(m) for m in self.layers)

    def forward(self, x: Tensor) -> Tensor:
        return run_stages(self.stages(), x)


class EnhModule(nn.Module):
    """The two independent enhancement blocks: ``forw_enh`` before g_a, ``back_enh`` after g_s."""

    def __init__(self, channels: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.forw_enh = EnhBlock(channels, growth)
        self.back_enh = EnhBlock(channels, growth)
