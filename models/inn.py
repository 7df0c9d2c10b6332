"""The invertible network (INN) around the analysis/synthesis transforms.

Four levels on the 3 image channels, each an invertible 1×1 convolution followed by three affine
coupling layers. ``forward`` runs before g_a; ``reverse`` (the exact inverse) runs after g_s.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .tiling import Stage, conv_radius, conv_step, run_stages


def pointwise_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """A 1×1 convolution as one matrix product: oneDNN's convolution is very slow for 1-3 channels."""
    B, C, H, W = x.shape
    out = torch.matmul(weight.reshape(weight.shape[0], C), x.reshape(B, C, H * W))
    if bias is not None:
        out = out + bias[:, None]
    return out.view(B, -1, H, W)


@contextmanager
def _im2col_convolutions() -> Iterator[None]:
    """PyTorch's own im2col convolution instead of oneDNN's (a process-wide switch, so kept short)."""
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(enabled)


class _FewChannelConv(torch.autograd.Function):
    """A stride-1 convolution whose forward and backward both run PyTorch's im2col kernels: for 1-4
    channels oneDNN's backward is mostly per-pixel overhead. The ops are ``aten.convolution`` and
    ``aten.convolution_backward``, so FLOP counters and profilers see the usual names."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        with _im2col_convolutions():
            return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        with _im2col_convolutions():
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]], [1, 1], [p, p], [1, 1], False, [0, 0], 1, ctx.needs_input_grad[:3])
        return gx, gw, gb, None


def few_channel_conv(x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
    """A k×k convolution of a few (1-4) channels, stride 1, with a bias.

    Under autograd on the CPU it runs PyTorch's im2col kernels (:class:`_FewChannelConv`): the coupling
    convolutions were ~30 % of a ``small`` training step on 64² crops, nearly all in oneDNN's backward.
    Outside autograd, on a GPU, or under autocast (whose casts the Function would bypass), it is
    ``F.conv2d``, so coded pictures are computed exactly as before."""
    if x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
        return _FewChannelConv.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding)


class CouplingSubnet(nn.Module):
    """conv k×k → LeakyReLU(0.2) → conv 1×1 → LeakyReLU(0.2) → conv k×k; starts as the zero map."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        k = kernel_size
        self.conv1 = nn.Conv2d(in_channels, out_channels, k, padding=k // 2)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 1)
        self.conv3 = nn.Conv2d(out_channels, out_channels, k, padding=(k - 1) // 2)
        self.act = nn.LeakyReLU(0.2)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(few_channel_conv(x, self.conv1.weight, self.conv1.bias, self.conv1.padding[0]))
        h = self.act(pointwise_conv(h, self.conv2.weight, self.conv2.bias))
        return few_channel_conv(h, self.conv3.weight, self.conv3.bias, self.conv3.padding[0])


class AffineCoupling(nn.Module):
    """Two-way affine coupling on channels split 1 | 2, with a soft-clamped scale.

    forward: y1 = x1·e(G2(x2)) + H2(x2);  y2 = x2·e(G1(y1)) + H1(y1)
    reverse: the same steps undone in the opposite order.  e(t) = exp(c·(2·sigmoid(t) − 1)).
    """

    def __init__(self, kernel_size: int, clamp: float = 1.0) -> None:
        super().__init__()
        self.clamp = clamp
        self.G1 = CouplingSubnet(1, 2, kernel_size)
        self.H1 = CouplingSubnet(1, 2, kernel_size)
        self.G2 = CouplingSubnet(2, 1, kernel_size)
        self.H2 = CouplingSubnet(2, 1, kernel_size)

    def _scale(self, t: Tensor) -> Tensor:
        return torch.exp(self.clamp * (torch.sigmoid(t) * 2 - 1))

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, :1], x[:, 1:]
        g2, h2 = _subnet_pair(self.G2, self.H2, x2)
        y1 = x1 * self._scale(g2) + h2
        g1, h1 = _subnet_pair(self.G1, self.H1, y1)
        y2 = x2 * self._scale(g1) + h1
        return torch.cat((y1, y2), dim=1)

    def context_rows(self) -> int:
        """Rows read on each side, either direction: the second half reads the first half's output
        through a subnet (k×k, 1×1, k×k), so two subnets' radii."""
        return 2 * (conv_radius(self.G1.conv1) + (self.G1.conv3.kernel_size[0] - 1) // 2)

    def reverse(self, y: Tensor) -> Tensor:
        y1, y2 = y[:, :1], y[:, 1:]
        g1, h1 = _subnet_pair(self.G1, self.H1, y1)
        x2 = (y2 - h1) / self._scale(g1)
        g2, h2 = _subnet_pair(self.G2, self.H2, x2)
        x1 = (y1 - h2) / self._scale(g2)
        return torch.cat((x1, x2), dim=1)


def _subnet_pair(g: CouplingSubnet, h: CouplingSubnet, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``g(x), h(x)`` with their first convolutions as one: at 1-2 channels a convolution costs about
    the same for 2 or 4 output channels (oneDNN's small-channel path is per-pixel overhead), so the
    shared input is read once and one of the two costliest calls disappears (in training, its backward
    too). The same products and sums as ``g(x), h(x)``; the weights are concatenated per call, so
    gradients reach each subnet's own parameters."""
    c = g.conv1.out_channels
    k = g.conv1.kernel_size[0]
    w = torch.cat((g.conv1.weight, h.conv1.weight))
    b = torch.cat((g.conv1.bias, h.conv1.bias))
    first = few_channel_conv(x, w, b, k // 2)
    outs = []
    for net, t in ((g, first[:, :c]), (h, first[:, c:])):
        t = net.act(pointwise_conv(net.act(t), net.conv2.weight, net.conv2.bias))
        outs.append(few_channel_conv(t, net.conv3.weight, net.conv3.bias, net.conv3.padding[0]))
    return outs[0], outs[1]


class InvertibleConv1x1(nn.Module):
    """A learned 3×3 channel-mixing matrix, initialised orthogonal; the reverse applies its inverse.

    The inverse is computed in float64 (then cast back to the weight's dtype) like the original. Outside autograd it
    is cached and recomputed only when the weight changes (tracked by its version counter). The cached copy is an
    ordinary tensor even when made under ``inference_mode``, so that a pass with autograd on and the weights
    frozen (encode-time refinement, models/refine.py) may use it after a plain encode.
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)
        self._inverse_cache: Optional[Tuple[Tuple, Tensor]] = None

    def forward(self, x: Tensor) -> Tensor:
        return pointwise_conv(x, self.weight)

    def context_rows(self) -> int:
        """A pointwise mix reads no row around its own."""
        return 0

    def inverse_weight(self) -> Tensor:
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return torch.linalg.inv(w.double()).to(w.dtype)
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            with torch.inference_mode(False):
                self._inverse_cache = (key, torch.linalg.inv(w.detach().double()).to(w.dtype))
        return self._inverse_cache[1]

    def reverse(self, y: Tensor) -> Tensor:
        return pointwise_conv(y, self.inverse_weight().to(y.dtype))


class InvertibleNetwork(nn.Module):
    """``operations``: per level an invertible 1×1 conv then three couplings (16 steps for 4 levels)."""

    def __init__(self, kernel_sizes: Tuple[int, ...] = (5, 5, 3, 3), couplings_per_level: int = 3) -> None:
        super().__init__()
        ops = []
        for k in kernel_sizes:
            ops.append(InvertibleConv1x1(3))
            ops.extend(AffineCoupling(k) for _ in range(couplings_per_level))
        self.operations = nn.ModuleList(ops)

    def stages(self, reverse: bool = False) -> List[Stage]:
        """One stage per operation (``reverse``: the inverse's, last operation first), so that streamed
        each coupling computes only its own 2·(k − 1) rows of context again, not the network's 72."""
        ops = list(reversed(self.operations)) if reverse else list(self.operations)
        return [Stage(op.reverse if reverse else op, conv_step(op.context_rows())) for op in ops]

    def context_rows(self) -> int:
        """Rows read on each side, either direction (72 for the published INN)."""
        return sum(op.context_rows() for op in self.operations)

    def forward(self, x: Tensor) -> Tensor:
        return run_stages(self.stages(), x)

    def reverse(self, y: Tensor) -> Tensor:
        return run_stages(self.stages(reverse=True), y)
