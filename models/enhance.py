"""Feature-attention ("enhancement") blocks applied to the image before analysis and after synthesis."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


def _scaled_xavier_(conv: nn.Conv2d, scale: float) -> None:
    nn.init.xavier_normal_(conv.weight)
    conv.weight.data.mul_(scale)
    nn.init.zeros_(conv.bias)


class DenseBlock(nn.Module):
    """Five 3×3 convolutions, each reading the input and all earlier outputs (dense connectivity).

    Initialised near zero (conv1-4 Xavier × 0.1, conv5 zero) so that a fresh enhancement block
    starts as the identity. Inference runs it as the stages of ``models.tiling.enh_stages``.
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

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return self.conv5(torch.cat(features, dim=1))


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

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.2 * self.layers(x)


class EnhModule(nn.Module):
    """The two independent enhancement blocks: ``forw_enh`` before g_a, ``back_enh`` after g_s."""

    def __init__(self, channels: int = 64, growth: int = 32) -> None:
        super().__init__()
        self.forw_enh = EnhBlock(channels, growth)
        self.back_enh = EnhBlock(channels, growth)
