"""Variable rate: one ICWEM for a continuous range of rates, by a learned quantisation gain on y.

A variable-rate model (``ModelConfig.rate_points = K``, K ≥ 2) codes y at a *quality* Q, any real in
[1, K] (1: the lowest rate). Q chooses a gain g(Q) > 0 on y, and y is quantised in the scaled domain:

    symbols   q = round((y − μ)·g)          coded with the Gaussian of scale σ·g (its table index)
    decoded   ŷ = q / g + μ                 what latent residual prediction, later slices and g_s see

so a larger g is a finer quantisation step 1/g and a higher rate. z stays fixed-rate, as in QVRF
(Tong et al., 2023). In training the rounding is CompressAI's: additive unit noise on y·g for the
likelihood of N(μ·g, σ·g), straight-through rounding of (y − μ)·g for ŷ. The gain is

* ``channel`` (the default): a vector over y's M channels per rate point, as the gain units of the
  asymmetric gained VAE (Cui et al., CVPR 2021) with the inverse gain tied to 1/g, so that the
  quantiser stays the coder's own integer grid; or
* ``scalar``: one gain per rate point (QVRF).

The gains are strictly rising with the rate point by construction: ``log g_1 = log_base`` and each
further point adds ``softplus(log_steps[k])`` > 0, per channel. Between the points, log g is linear in
Q (Cui et al.'s interpolation g = g_k^(1−l)·g_{k+1}^l), so g(Q) rises strictly with Q everywhere.

Training draws Q per batch, uniformly over [1, K], and weighs the distortion with λ(Q), log-linear
between the K λs of ``--lambdas`` (``RateSchedule``); a model warm-started from a fixed-rate
checkpoint trained for λ₀ starts with g(Q) = sqrt(λ(Q) / λ₀), so g = 1 (the checkpoint's own
quantiser) where λ(Q) = λ₀: at high rate the MSE-optimal step falls as 1/sqrt(λ).

A fixed-rate model (``rate_points = 0``, every published and shipped checkpoint) has no gain module,
no extra state-dict key, and codes exactly as before: ``coder_domain`` and ``dequantize`` below do no
arithmetic without a gain. Gains are computed in float64 from the stored parameters, so the σ·g that
choose the coder's tables are as portable as σ (``models/entropy/parameters.py``).
"""

from __future__ import annotations

import math
import random
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

GAIN_KINDS = ("channel", "scalar")


def _softplus_inverse(x: float) -> float:
    """The t with softplus(t) = x (x > 0)."""
    return x + math.log(-math.expm1(-x))


def check_quality(quality: float, rate_points: int) -> float:
    """``quality`` as a float if it is a finite number in [1, rate_points]; else a ``ValueError``."""
    try:
        value = float(quality)
    except (TypeError, ValueError):
        raise ValueError(f"quality {quality!r} is not a number") from None
    if not (math.isfinite(value) and 1.0 <= value <= rate_points):
        raise ValueError(f"quality {quality!r} is outside [1, {rate_points}], this model's rate points")
    return value


def interpolation(quality: float, rate_points: int) -> Tuple[int, float]:
    """(k, l): Q lies between the 0-based rate points k and k + 1 at fraction l in [0, 1) (l = 0 at a
    rate point, where only k is used: Q = K gives k = K − 1)."""
    k = min(int(math.floor(quality)) - 1, rate_points - 1)
    return k, quality - 1 - k


class RateGain(nn.Module):
    """The gains g_1 < … < g_K of a variable-rate model, per channel of y or one per rate point.

    Args:
        rate_points: K, the number of learned rate points (Q runs over [1, K]).
        channels: y's channels M for per-channel gains, 1 for a scalar gain per rate point.

    Parameters: ``log_base`` (channels,), log g_1; ``log_steps`` (K − 1, channels), the softplus
    preimages of log g_{k+1} − log g_k. ``channels`` and K are read back from these shapes
    (``models/config.py``).
    """

    def __init__(self, rate_points: int, channels: int) -> None:
        super().__init__()
        if rate_points < 2:
            raise ValueError(f"a variable-rate model needs at least 2 rate points, got {rate_points}")
        self.rate_points = rate_points
        self.log_base = nn.Parameter(torch.zeros(channels))
        self.log_steps = nn.Parameter(torch.full((rate_points - 1, channels), _softplus_inverse(0.25)))

    def log_gains(self, device: Optional[torch.device] = None) -> Tensor:
        """log g_k for k = 1 … K, shape (K, channels), in float64 on ``device`` (default: the parameters';
        coding asks for the CPU, so that every machine computes the same gains whatever device the model
        is on)."""
        device = self.log_base.device if device is None else device
        base = self.log_base.to(device, torch.float64)
        steps = F.softplus(self.log_steps.to(device, torch.float64))
        return torch.cat([base[None], base[None] + torch.cumsum(steps, dim=0)])

    def forward(self, quality: float, device: Optional[torch.device] = None) -> Tensor:
        """g(Q), shape (channels,), float64 on ``device`` (see ``log_gains``): log-linear between the two
        rate points around Q."""
        q = check_quality(quality, self.rate_points)
        k, frac = interpolation(q, self.rate_points)
        log_g = self.log_gains(device)
        return torch.exp(log_g[k] if frac == 0 else (1 - frac) * log_g[k] + frac * log_g[k + 1])

    @torch.no_grad()
    def init_from_lambdas(self, lambdas: Sequence[float], reference: float) -> None:
        """Set g_k = sqrt(λ_k / reference), the same for every channel (see the module docstring)."""
        lambdas = check_lambdas(lambdas)
        if len(lambdas) != self.rate_points:
            raise ValueError(f"{len(lambdas)} λs for {self.rate_points} rate points")
        log_g = [0.5 * math.log(lam / reference) for lam in lambdas]
        self.log_base.fill_(log_g[0])
        for k in range(self.rate_points - 1):
            self.log_steps[k].fill_(_softplus_inverse(log_g[k + 1] - log_g[k]))


def check_lambdas(lambdas: Sequence[float]) -> List[float]:
    """The λs of the rate points as floats: at least two, finite, positive and strictly rising."""
    values = [float(v) for v in lambdas]
    if len(values) < 2:
        raise ValueError(f"a variable-rate model needs at least 2 λs, got {len(values)}")
    if not all(math.isfinite(v) and v > 0 for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"the λs must be positive and strictly rising (lowest rate first), got {values}")
    return values


def slice_gains(gain: Optional[Tensor], num_slices: int, like: Tensor) -> List[Optional[Tensor]]:
    """g split over y's slices, each shaped (1, C_s, 1, 1) (or (1, 1, 1, 1) for a scalar gain) in
    ``like``'s dtype and device; a list of None for a fixed-rate model (``gain`` None)."""
    if gain is None:
        return [None] * num_slices
    g = gain.to(like.device, like.dtype).reshape(1, -1, 1, 1)
    return [g] * num_slices if g.shape[1] == 1 else list(g.chunk(num_slices, dim=1))


def coder_domain(gain: Optional[Tensor], *tensors: Tensor) -> Tuple[Tensor, ...]:
    """Each of ``tensors`` (y, μ, σ of a slice) times g: the slice as the entropy coder sees it;
    the tensors themselves without a gain."""
    return tensors if gain is None else tuple(t * gain for t in tensors)


def dequantize(gain: Optional[Tensor], q: Tensor, mu: Tensor) -> Tensor:
    """ŷ = q / g + μ from the (scaled-domain) integers ``q``; CompressAI's ``dequantize`` (q + μ)
    without a gain."""
    q = q.type_as(mu)
    return q + mu if gain is None else q / gain + mu


# ---------------------------------------------------------------------------------------------- training
class RateSchedule:
    """What training draws per batch: a quality Q, uniform over [1, K], and its λ(Q), log-linear between
    the K λs (λ(k) = λ_k at the rate points). Draws are a function of (seed, step) only, so that an
    exact resume draws the same qualities and all processes of a distributed run agree."""

    def __init__(self, lambdas: Sequence[float], seed: int = 0) -> None:
        self.lambdas = check_lambdas(lambdas)
        self.seed = seed

    @property
    def rate_points(self) -> int:
        return len(self.lambdas)

    def lmbda(self, quality: float) -> float:
        q = check_quality(quality, self.rate_points)
        k, frac = interpolation(q, self.rate_points)
        if frac == 0:
            return self.lambdas[k]
        return math.exp((1 - frac) * math.log(self.lambdas[k]) + frac * math.log(self.lambdas[k + 1]))

    def quality(self, step: int) -> float:
        return 1.0 + (self.rate_points - 1) * random.Random(f"{self.seed}/{step}").random()

    def reference_lambda(self) -> float:
        """The geometric middle of the λs: where a model trained from scratch starts with gain 1."""
        return math.exp(sum(math.log(v) for v in self.lambdas) / len(self.lambdas))
