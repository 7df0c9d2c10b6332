"""The training objective of the original: rate + λ·distortion, and its two optimizers."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

# pytorch_msssim's 5-scale MS-SSIM downsamples four times with an 11-tap window, so it needs a smaller
# side above (11 - 1) * 2**4 = 160 pixels.
MS_SSIM_MIN_SIZE = 161


def bpp_from_likelihoods(likelihoods: Dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """The likelihood estimate of the rate, before any coding: Σ over the latents of Σ log2(1 / likelihood),
    divided by the pixels (B·H·W). ``utils.metrics.bpp_from_bytes`` is the real one, from a file's bytes."""
    total_bits = sum(torch.log(p.float()).sum() for p in likelihoods.values()) / -math.log(2)
    return total_bits / num_pixels


class RateDistortionLoss(nn.Module):
    """Rate-distortion Lagrangian used to train every published ICWEM model.

    mse:     loss = λ · 255² · MSE(x̂, x) + bpp
    ms-ssim: loss = λ · (1 − MS-SSIM(x̂, x, data_range=1)) + bpp

    ``forward`` returns the terms as a dict: ``loss``, ``bpp_loss`` and either ``mse_loss`` (the MSE on the
    [0, 1] scale) or ``ms_ssim_loss``. As in the original, ``ms_ssim_loss`` holds the MS-SSIM *value*
    (higher is better), not 1 − MS-SSIM. Everything is computed in float32 (autocast off), so the terms are
    the same under mixed precision. ``x_hat`` is used unclamped, as in the original. A model trained with
    ``decoder_clamp`` also returns ``range_loss`` (g_s's output outside [0, 1]); it is added with the
    distortion's weight (λ·255² for MSE, λ for MS-SSIM) and reported as ``range_loss``.
    """

    def __init__(self, lmbda: float = 1e-2, metric: str = "mse"):
        super().__init__()
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"metric must be 'mse' or 'ms-ssim', not {metric!r}")
        self.lmbda = lmbda
        self.metric = metric

    def forward(self, output: dict, target: torch.Tensor, lmbda: Optional[float] = None) -> Dict[str, torch.Tensor]:
        """The terms for this batch; ``lmbda`` replaces λ for it (a variable-rate model's λ(Q))."""
        with torch.autocast(target.device.type, enabled=False):  # float32 even when called under autocast
            return self._terms(output, target, self.lmbda if lmbda is None else lmbda)

    def _terms(self, output: dict, target: torch.Tensor, lmbda: float) -> Dict[str, torch.Tensor]:
        batch, _, height, width = target.shape
        x_hat = output["x_hat"].float()
        target = target.float()
        terms = {"bpp_loss": bpp_from_likelihoods(output["likelihoods"], batch * height * width)}
        if self.metric == "mse":
            terms["mse_loss"] = F.mse_loss(x_hat, target)
            terms["loss"] = lmbda * 255**2 * terms["mse_loss"] + terms["bpp_loss"]
        else:
            terms["ms_ssim_loss"] = ms_ssim(x_hat, target, data_range=1.0)
            terms["loss"] = lmbda * (1 - terms["ms_ssim_loss"]) + terms["bpp_loss"]
        if "range_loss" in output:
            terms["range_loss"] = output["range_loss"].float()
            weight = lmbda * 255**2 if self.metric == "mse" else lmbda
            terms["loss"] = terms["loss"] + weight * terms["range_loss"]
        return terms


def configure_optimizers(model: nn.Module, lr: float, aux_lr: float) -> Tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam on the network, and a separate Adam on the entropy bottlenecks' ``quantiles``.

    Why two: the quantiles are trained only by ``aux_loss()`` (they locate each channel's tails and median for
    the range coder); the rate-distortion loss must not move them through the main optimizer.
    """
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    aux_names = {name for name in named if name.endswith(".quantiles")}
    main_names = {name for name in named if not name.endswith(".quantiles")}
    assert not main_names & aux_names, "a parameter is in both optimizers"
    assert main_names | aux_names == set(named), "a parameter is in neither optimizer"
    # Sorted names give the same parameter order in every process and every run, so optimizer state dicts
    # saved by one run load into another.
    main = [named[n] for n in sorted(main_names)]
    aux = [named[n] for n in sorted(aux_names)]
    return torch.optim.Adam(main, lr=lr, **adam_implementation(main)), \
        torch.optim.Adam(aux, lr=aux_lr, **adam_implementation(aux))


def adam_implementation(params: List[torch.Tensor]) -> Dict[str, Optional[bool]]:
    """How Adam computes its step (not what it computes): fused on the CPU, where PyTorch's default is a
    Python loop over ~1,600 tensors (3.6x slower for the published model, 5x for ``small``); PyTorch's
    default (foreach) elsewhere."""
    on_cpu = bool(params) and all(p.device.type == "cpu" for p in params)
    return {"fused": True if on_cpu else None, "foreach": None}
