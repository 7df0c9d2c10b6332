"""The entropy stage: train the entropy model alone on latents of whole pictures, the transforms frozen.

Why: a model trained on 64 × 64 crops has seen only 4 × 4 latents and 1 × 1 hyper-latents, every position
at a border. Its transforms carry over to a whole photo, its entropy model does not: on the held-out photos
the round-8 q3 file codes each photo cut into 64 × 64 tiles at a third of the rate it needs for the
whole photo, at the same PSNR (``benchmarks/RESULTS.md``, "The entropy stage"). Training the hyper-prior and
the channel-wise entropy model on crops of whole-picture latents teaches them the interior, and costs
little: the analysis transform runs once per picture and orientation (``picture_latents``), after
which a step touches only latent-sized maps.

The objective is the rate alone, bits of ŷ and ẑ per pixel: with the transforms fixed, the distortion
moves only through where μ puts the rounding grid. The latent residual prediction, whose only job is the
distortion, stays as it was, as do the transforms and a variable-rate model's gains.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..image_io import CHANNEL_ORDERS, read_image, to_tensor

# What the entropy stage trains: the hyper-prior and the channel-wise entropy model, not the LRP networks.
ENTROPY_MODULES = ("h_a", "entropy_bottleneck", "h_mean_s", "h_scale_s", "atten_mean", "atten_scale",
                   "cc_mean_transforms", "cc_scale_transforms")
LATENT_STRIDE = 16  # image pixels per latent element, each way


@dataclass
class EntropyStageConfig:
    steps: int = 1000
    learning_rate: float = 1e-4
    aux_learning_rate: float = 1e-3
    batch_size: int = 8
    crop: int = 256  # image pixels per side of a latent crop (a multiple of 16)
    clip_max_norm: float = 1.0
    seed: int = 0


def entropy_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters the stage trains (the bottleneck's quantiles excepted: the aux loss moves those)."""
    return [p for name in ENTROPY_MODULES for n, p in getattr(model, name).named_parameters()
            if not n.endswith("quantiles")]


def picture_latents(model: nn.Module, paths: Sequence[Path], progress: Optional[Callable[[int], None]] = None
                    ) -> List[Tensor]:
    """y of every picture in each of its six channel orders (every other one mirrored), cropped to whole
    64-pixel blocks: the latents the stage draws its crops from, as a whole picture's analysis gives them."""
    latents: List[Tensor] = []
    model.eval()
    with torch.inference_mode():
        for path in paths:
            rgb = read_image(path)[0]
            h, w = rgb.shape[0] // 64 * 64, rgb.shape[1] // 64 * 64
            if not h or not w:
                continue
            for k, order in enumerate(CHANNEL_ORDERS):
                x = to_tensor(np.ascontiguousarray(rgb[:h, :w, list(order)]))
                latents.append(model.analysis(x.flip(-1) if k % 2 else x).clone())
            if progress:
                progress(1)
    return latents


def latent_batch(latents: Sequence[Tensor], size: int, crop: int, rng: random.Random) -> Tensor:
    """``size`` random ``crop // 16``-square crops of the latents, each latent at least that size."""
    side = crop // LATENT_STRIDE
    picks = []
    for _ in range(size):
        y = latents[rng.randrange(len(latents))]
        i, j = rng.randint(0, y.shape[-2] - side), rng.randint(0, y.shape[-1] - side)
        picks.append(y[..., i:i + side, j:j + side])
    return torch.cat(picks)


def latent_bpp(model: nn.Module, y: Tensor, quality: Optional[float] = None) -> Tensor:
    """Bits of ŷ and ẑ per image pixel of the latent ``y`` (the model in training mode: noisy likelihoods)."""
    _, out = model.entropy_pass(y, quality)
    bits = sum(-torch.log2(likelihoods).sum() for likelihoods in out["likelihoods"].values())
    return bits / (y.shape[0] * y.shape[-2] * y.shape[-1] * LATENT_STRIDE ** 2)


def train_entropy_model(model: nn.Module, latents: Sequence[Tensor], cfg: EntropyStageConfig,
                        report: Optional[Callable[[int, float], None]] = None,
                        stop: Callable[[], bool] = lambda: False) -> int:
    """Train the entropy model on crops of ``latents`` for ``cfg.steps`` steps (Adam, the rate alone) and
    rebuild the coder's tables; returns the steps taken. A variable-rate model trains at a quality drawn
    uniformly from [1, K] per step. ``report(step, mean bpp since the last report)`` every 50 steps;
    ``stop()`` ends the stage early (after a step, the tables rebuilt all the same)."""
    side = cfg.crop // LATENT_STRIDE
    small = [tuple(y.shape[-2:]) for y in latents if min(y.shape[-2:]) < side]
    if small or not latents:
        raise ValueError(f"every latent needs sides of at least {side} (crop {cfg.crop}); {len(small)} do not")
    params = entropy_parameters(model)
    quantiles = [model.entropy_bottleneck.quantiles]
    trained = {id(p) for p in params + quantiles}
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    aux_optimizer = torch.optim.Adam(quantiles, lr=cfg.aux_learning_rate)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.train()
    rates: List[float] = []
    step = 0
    try:
        while step < cfg.steps and not stop():
            quality = rng.uniform(1, model.rate_points) if model.rate_points else None
            bpp = latent_bpp(model, latent_batch(latents, cfg.batch_size, cfg.crop, rng), quality)
            optimizer.zero_grad(set_to_none=True)
            aux_optimizer.zero_grad(set_to_none=True)
            step += 1
            if not math.isfinite(float(bpp.detach())):
                continue  # a non-finite rate: the weights stay as they were for this step
            bpp.backward()
            if cfg.clip_max_norm > 0:
                nn.utils.clip_grad_norm_(params, cfg.clip_max_norm)
            optimizer.step()
            aux_optimizer.zero_grad(set_to_none=True)
            model.entropy_bottleneck.loss().backward()
            aux_optimizer.step()
            rates.append(float(bpp.detach()))
            if report and step % 50 == 0:
                report(step, sum(rates[-50:]) / len(rates[-50:]))
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.eval()
        model.update(force=True)
    return step
