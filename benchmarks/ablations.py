"""Each of the model's inference speed-ups, undone one at a time, so the benchmark can measure what it buys.

Every entry is a context manager that patches one piece back to the straightforward computation the
original implementation used; outputs stay the same (up to float rounding), only the cost changes.
Sizes must be whole windows everywhere (multiples of 128), like the original.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

import models.attention as attention
import models.enhance as enhance
import models.inn as inn


def _materialised_window_attention(self, x: torch.Tensor) -> torch.Tensor:
    """Window attention computed as the original did: relative-position index and shift mask rebuilt
    (with numpy) on every call, all logits of all windows materialised, einsum products."""
    B, H, W, C = x.shape
    w, s, heads, hd = self.window_size, self.shift, self.num_heads, self.head_dim
    if s:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
    nh, nw = H // w, W // w
    windows = x.view(B, nh, w, nw, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, nh * nw, w * w, C)
    qkv = self.embedding_layer(windows).view(B, nh * nw, w * w, 3 * heads, hd).permute(3, 0, 1, 2, 4)
    q, k, v = qkv.chunk(3, dim=0)
    sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * hd**-0.5
    cord = torch.tensor(np.array([[i, j] for i in range(w) for j in range(w)]))
    relation = cord[:, None, :] - cord[None, :, :] + w - 1
    bias = self.relative_position_params[:, relation[:, :, 0].long(), relation[:, :, 1].long()]
    sim = sim + bias[:, None, None]
    if s:
        mask = torch.zeros(nh, nw, w, w, w, w, dtype=torch.bool, device=x.device)
        t = w - s
        mask[-1, :, :t, :, t:, :] = True
        mask[-1, :, t:, :, :t, :] = True
        mask[:, -1, :, :t, :, t:] = True
        mask[:, -1, :, t:, :, :t] = True
        sim = sim.masked_fill(mask.view(1, 1, nh * nw, w * w, w * w), float("-inf"))
    probs = torch.softmax(sim, dim=-1)
    out = torch.einsum("hbwij,hbwjc->hbwic", probs, v).permute(1, 2, 3, 0, 4).reshape(B, nh * nw, w * w, C)
    out = self.linear(out)
    out = out.view(B, nh, nw, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    if s:
        out = torch.roll(out, shifts=(s, s), dims=(1, 2))
    return out


def _conv_pointwise(x, weight, bias=None):
    c_out = weight.shape[0]
    return F.conv2d(x, weight.reshape(c_out, x.shape[1], 1, 1), bias)


def _concatenating_dense_forward(self, x):
    features = [x]
    for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
        features.append(self.act(conv(torch.cat(features, dim=1))))
    return self.conv5(torch.cat(features, dim=1))


def _uncached_inverse(self):
    return torch.linalg.inv(self.weight.detach().double()).to(self.weight.dtype)


ABLATIONS: Dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "attention: materialised logits, masks rebuilt per call": lambda: mock.patch.object(
        attention.WindowAttention, "forward", _materialised_window_attention
    ),
    "INN 1x1 convolutions through oneDNN": lambda: mock.patch.object(inn, "pointwise_conv", _conv_pointwise),
    "dense blocks concatenate at every step": lambda: mock.patch.object(
        enhance.DenseBlock, "forward", _concatenating_dense_forward
    ),
    "INN inverse recomputed per call": lambda: mock.patch.object(inn.InvertibleConv1x1, "inverse_weight", _uncached_inverse),
}
