"""Image quality and rate metrics, computed the way the learned-compression literature reports them.

Inputs are float tensors in [0, 1] (see ``utils.image_io.to_tensor``), usually 1x3xHxW and already
quantised to 8 bit, so that numbers match what a user would measure on the decoded PNG.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import pytorch_msssim
import torch
import torch.nn.functional as F

# Wang, Simoncelli & Bovik (2003): per-scale exponents, finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11
_WIN_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements, the headline distortion metric.

    Identical inputs give ``float("inf")``; callers that average PSNR over images should expect it
    (lossless coding) rather than a crash.
    """
    _check_pair(a, b)
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


def ms_ssim_levels(height: int, width: int) -> int:
    """How many MS-SSIM scales fit an image: the most L <= 5 with ``min(H, W) > 10 * 2**(L-1)``.

    That is the 11-pixel Gaussian window still fitting the coarsest scale; it is the same condition
    pytorch_msssim asserts for its 5 scales (short side > 160). 0 means not even one scale fits.
    """
    short_side = min(height, width)
    levels = 0
    while levels < len(MS_SSIM_WEIGHTS) and short_side > (_WIN_SIZE - 1) * 2**levels:
        levels += 1
    return levels


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Multi-scale SSIM of two Bx3xHxW images in [0, 1] (averaged over the batch); 1.0 is identical.

    Images with a short side over 160 px use the standard 5 scales (``pytorch_msssim.ms_ssim``).
    Smaller images use the ``ms_ssim_levels`` finest scales with the standard weights truncated and
    renormalised to sum to 1, which keeps the measure defined on small crops instead of failing.
    With a single scale this is plain SSIM (clamped at 0, as MS-SSIM does). Below 11 px the window
    does not fit at all and the result is ``float("nan")``.
    """
    _check_pair(a, b)
    levels = ms_ssim_levels(a.shape[-2], a.shape[-1])
    if levels == 0:
        return float("nan")
    a, b = a.float(), b.float()
    with _one_cpu_thread(a.device):
        if levels == len(MS_SSIM_WEIGHTS):
            return pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=True).item()
        weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=a.dtype, device=a.device)
        return _ms_ssim(a, b, weights / weights.sum()).item()


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the block with one intra-op CPU thread, then restore the previous count.

    Why: PyTorch's grouped (depthwise) CPU convolutions, which SSIM's Gaussian filters are, slow down
    badly with several threads on a busy CPU: a 192 px MS-SSIM took 0.6-1.3 s with 2 threads on a
    shared 2-core machine and 0.03 s with one. The thread count is process-wide, so other work gets
    its threads back as soon as the measurement is done.
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _ms_ssim(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MS-SSIM with any number of scales; the same computation as pytorch_msssim, minus its size check."""
    window = _gaussian_window(a.shape[1], a.dtype, a.device)
    factors = []
    for level in range(len(weights)):
        ssim_map_mean, cs_mean = _ssim_and_cs(a, b, window)
        if level < len(weights) - 1:
            factors.append(torch.relu(cs_mean))
            padding = [s % 2 for s in a.shape[2:]]
            a = F.avg_pool2d(a, kernel_size=2, padding=padding)
            b = F.avg_pool2d(b, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_map_mean))
    per_channel = torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0)  # (batch, channel)
    return per_channel.mean()


def _gaussian_window(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(_WIN_SIZE, dtype=dtype, device=device) - _WIN_SIZE // 2
    g = torch.exp(-(coords**2) / (2 * _WIN_SIGMA**2))
    return (g / g.sum()).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding ("valid"), per channel."""
    channels = x.shape[1]
    x = F.conv2d(x, window.transpose(2, 3), groups=channels)
    return F.conv2d(x, window, groups=channels)


def _ssim_and_cs(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(batch, channel) mean SSIM and contrast-structure term at one scale (data range 1)."""
    c1, c2 = _K1**2, _K2**2
    mu_a, mu_b = _blur(a, window), _blur(b, window)
    var_a = _blur(a * a, window) - mu_a**2
    var_b = _blur(b * b, window) - mu_b**2
    cov = _blur(a * b, window) - mu_a * mu_b
    cs_map = (2 * cov + c2) / (var_a + var_b + c2)
    ssim_map = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, ``-10 log10(1 - v)``, which spreads out the values near 1 that matter."""
    if value >= 1.0:
        return float("inf")
    return -10.0 * math.log10(1.0 - value)


def bpp_from_bytes(num_bytes: int, height: int, width: int) -> float:
    """The real rate of a coded image: its bytes in bits per pixel of the original (unpadded) image."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return 8.0 * num_bytes / (height * width)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4:
        raise ValueError(f"expected BxCxHxW tensors, got shape {tuple(a.shape)}")
