"""Encode-time refinement: better latents for one image, with every network and the decoder unchanged.

The analysis transform is amortised: one network guesses the latents of every image. For one image the
latents themselves can be optimised against the model's own objective, rate + λ·255²·MSE, with all
weights fixed (Campos et al. 2019; Yang, Bamler & Mandt, NeurIPS 2020). The file stays an ordinary
file: only which symbols are coded changes, so any decoder of this project reads it.

* **Rounding surrogate.** The coder rounds y − μ and z − median, which has no useful gradient. Two
  surrogates are here. ``ste`` (the default) rounds as the coder does in the forward pass and lets
  the gradient through as if it did not (straight-through). ``sga`` is stochastic Gumbel annealing
  (Yang et al.): a random choice between ⌊u⌋ and ⌈u⌉, the nearer one the likelier, relaxed by a
  Gumbel-softmax of temperature τ that falls from ``TAU_START`` to ``TAU_END`` over the run, so it
  anneals to hard rounding (:func:`sga_round`). Measured on a held-out crop with a shipped model,
  straight-through lowers the objective more at every budget: 15 / 19 / 19 % at 25 / 100 / 500
  iterations against SGA's 7 / 13 / 16 % (docs/refinement.md). The run's progress is the larger of its
  iteration and time fractions, so a run stopped by its time budget has annealed (and slowed) too.
* **Scored as coded.** Every iterate that straight-through visits is scored by its own forward pass
  (hard rounding, the model's rate estimate); SGA's iterates are scored with hard rounding every
  ``check_every`` iterations. The best scored iterate, the encoder's own latents included, is
  returned: refinement never makes that objective worse.
* **Coded exactly.** The returned latents are the quantised values themselves (ŷ before LRP, and ẑ),
  each a whole number of steps from its μ or median. ``ICWEM.compress_latents`` recomputes μ in float64
  (models/entropy/parameters.py); a value that is a whole number of steps from μ rounds to the same symbol
  however μ moves in its last bits, so the file codes the symbols that were scored.
* **Memory.** Gradients flow through the whole model at once (the row bands of models/tiling.py stream
  ``inference=True`` only), so memory grows with the pixels: images above ``max_pixels`` are refused with one
  line before any work (``check_size``; the limit comes from measurements, see ``GIB_PER_MEGAPIXEL``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from compressai.ops import quantize_ste
from torch import Tensor, nn
from tqdm import tqdm

from utils.errors import UserError

from .config import PRESETS
from .variable_rate import RateSchedule, coder_domain, dequantize

# Adam on the latents at LEARNING_RATE, decayed along a half cosine: Adam moves every latent by about the
# learning rate whatever the size of its gradient, so the last steps must be small for a run to settle
# (for SGA, where τ is cold). SGA's τ falls from TAU_START to TAU_END geometrically. All chosen by
# measurement (docs/refinement.md).
LEARNING_RATE = 0.02
TAU_START = 0.5
TAU_END = 0.05
SURROGATES = ("ste", "sga")
SURROGATE = "ste"
# Refinement's memory grows with the pixels: every activation of the whole model is kept for the backward
# pass. Growth of the peak resident memory while refining, GiB per megapixel of the padded image, measured
# per preset (benchmarks/refine.py --memory, CPU, 1 thread); a configuration that is no preset is taken to
# need as much as the widest. An image whose estimate is above MEMORY_BUDGET_GIB is refused: for the
# shipped models (small) that is 1.1 MP, a 1024x1024 image.
GIB_PER_MEGAPIXEL = {"tiny": 13.2, "small": 8.1, "icwem": 24.5}
MEMORY_BUDGET_GIB = 9.0


@dataclass(frozen=True)
class RefineOptions:
    """What ``--refine`` asks of an encode (``utils.coding.codec.encode_image``)."""

    iterations: int
    lmbda: Optional[float] = None  # None: the λ the model was trained for (``ICWEM.lmbda``)
    max_minutes: Optional[float] = None  # time budget of each image's refinement
    seed: int = 0
    progress: bool = False
    surrogate: str = SURROGATE


@dataclass
class Refinement:
    """The refined latents and what refinement measured on the way (objectives in bits per pixel)."""

    y: Tensor  # the latent to code (ŷ before LRP); the encoder's own y when nothing beat it
    z: Tensor  # the hyper-latent to code (ẑ); the encoder's own z when nothing beat it
    initial: float  # objective of the encoder's latents, rounded as coded
    objective: float  # objective of the returned latents, rounded as coded (≤ initial)
    bpp: float  # its rate estimate, bits per pixel of the image (padding excluded)
    mse: float  # its mean squared error on [0, 1], padding excluded
    iterations: int  # iterations run (fewer than asked when the time budget ran out)
    best_iteration: int  # the iterate returned; 0: the encoder's own latents
    seconds: float


def gib_per_megapixel(model: nn.Module) -> float:
    """The measured memory growth of refinement per megapixel for this model's preset (GIB_PER_MEGAPIXEL)."""
    config = {k: v for k, v in model.config.items() if k != "drop_path_rate"}
    for name, gib in GIB_PER_MEGAPIXEL.items():
        if PRESETS.get(name) == config:
            return gib
    return max(GIB_PER_MEGAPIXEL.values())


def max_pixels(model: nn.Module) -> int:
    """The most (padded) pixels this model refines within MEMORY_BUDGET_GIB."""
    return int(MEMORY_BUDGET_GIB / gib_per_megapixel(model) * 1e6)


def check_size(model: nn.Module, height: int, width: int, limit: Optional[int] = None) -> None:
    """Refuse, with one line, an image too large to refine in bounded memory (default limit: max_pixels)."""
    limit = max_pixels(model) if limit is None else limit
    if height * width > limit:
        raise UserError(
            f"--refine: {width}x{height} pixels (padded) is above refinement's limit of {limit} pixels for this "
            f"model (it keeps every activation for the gradients, about {gib_per_megapixel(model):g} GiB per "
            f"megapixel, within {MEMORY_BUDGET_GIB:g} GiB); encode it without --refine, or crop it"
        )


def sga_round(u: Tensor, tau: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """A differentiable, random rounding of ``u`` that becomes ``round(u)`` as ``tau`` → 0 (SGA).

    With r = u − ⌊u⌋, rounding down has logit −atanh(r)/τ and up −atanh(1 − r)/τ; a Gumbel-softmax
    sample of temperature τ between the two gives the weight w of ⌈u⌉, and the result is ⌊u⌋ + w.
    For two classes that sample is a sigmoid of the logit difference plus one logistic variable (the
    difference of two Gumbel variables), so one uniform draw per element suffices.
    """
    eps = 1e-6
    floor = torch.floor(u.detach())
    r = (u - floor).clamp(eps, 1 - eps)
    uniform = torch.rand(u.shape, generator=generator, device=u.device, dtype=u.dtype).clamp(eps, 1 - eps)
    logistic = torch.log(uniform) - torch.log1p(-uniform)
    weight_up = torch.sigmoid(((torch.atanh(r) - torch.atanh(1 - r)) / tau + logistic) / tau)
    return floor + weight_up


def hard_round(u: Tensor) -> Tensor:
    """The coder's rounding (``torch.round``: halves to even, as CompressAI's ``quantize``)."""
    return torch.round(u)


def _bottleneck_likelihood(model: nn.Module, z_hat: Tensor) -> Tensor:
    """The entropy bottleneck's likelihood of ẑ as given (its own forward would round ẑ again)."""
    eb = model.entropy_bottleneck
    channels = z_hat.shape[1]
    values = z_hat.transpose(0, 1).reshape(channels, 1, -1)  # the C×1×N layout its density expects
    likelihood, _, _ = eb._likelihood(values)
    if eb.use_likelihood_bound:
        likelihood = eb.likelihood_lower_bound(likelihood)
    return likelihood.reshape(channels, z_hat.shape[0], *z_hat.shape[2:]).transpose(0, 1)


def objective(
    model: nn.Module, x: Tensor, y: Tensor, z: Tensor, lmbda: float, region: Tuple[int, int],
    rounding: Callable[[Tensor], Tensor] = hard_round, quality: Optional[float] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rate + λ·255²·MSE of coding ``y`` and ``z`` with ``rounding``, as the model trains and codes.

    ``rounding`` acts on y − μ (slice by slice, through the model's own slice loop; a variable-rate model's
    on (y − μ)·g at ``quality``, its coder's domain) and on z − median.
    Rate is the likelihood estimate in bits per pixel of the image (``region``: its height and width at
    the top left of the padded ``x``); MSE is that of the decoder's (clamped) picture over the region.
    Returns (objective, bpp, mse, ŷ before LRP, ẑ).
    """
    medians = model.entropy_bottleneck._get_medians()
    z_hat = rounding(z - medians) + medians
    bits = -torch.log2(_bottleneck_likelihood(model, z_hat)).sum()
    latent_means, latent_scales = model.hyper_synthesis(z_hat)
    gc = model.gaussian_conditional
    y_slices = y.chunk(model.num_slices, dim=1)
    gains = model._slice_gains(quality, y_slices[0])
    quantised: List[Tensor] = []
    slice_bits: List[Tensor] = []

    def quantise(i: int, mu: Tensor, sigma: Tensor) -> Tensor:
        y_c, mu_c, sigma_c = coder_domain(gains[i], y_slices[i], mu, sigma)
        symbols = rounding(y_c - mu_c)
        y_q = dequantize(gains[i], symbols, mu)
        likelihood = gc._likelihood(symbols + mu_c, sigma_c, mu_c)
        if gc.use_likelihood_bound:
            likelihood = gc.likelihood_lower_bound(likelihood)
        slice_bits.append(-torch.log2(likelihood).sum())
        quantised.append(y_q)
        return y_q

    y_hat, _, _ = model._code_slices(latent_means, latent_scales, y.shape[-2:], quantise, keep_parameters=False)
    x_hat = model.synthesis(y_hat, clamp=True, inference=False)  # the decoder's picture, its two clamps included
    h, w = region
    mse = (x_hat[..., :h, :w] - x[..., :h, :w]).square().mean()
    bpp = (bits + sum(slice_bits)) / (x.shape[0] * h * w)
    return bpp + lmbda * 255**2 * mse, bpp, mse, torch.cat(quantised, dim=1), z_hat


@contextlib.contextmanager
def _weights_frozen(model: nn.Module) -> Iterator[None]:
    """No gradients for the weights (only the latents learn): backward skips every weight gradient."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def temperature(progress: float) -> float:
    """τ at ``progress`` ∈ [0, 1] of the run: geometric from TAU_START to TAU_END."""
    return TAU_START * (TAU_END / TAU_START) ** min(max(progress, 0.0), 1.0)


def learning_rate_factor(progress: float) -> float:
    """The learning rate's fraction at ``progress`` ∈ [0, 1]: a half cosine from 1 to 0."""
    return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def refine_latents(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    z: Tensor,
    lmbda: float,
    iterations: int,
    region: Optional[Tuple[int, int]] = None,
    max_seconds: Optional[float] = None,
    lr: float = LEARNING_RATE,
    seed: int = 0,
    check_every: Optional[int] = None,
    progress: bool = False,
    pixel_limit: Optional[int] = None,
    surrogate: str = SURROGATE,
    quality: Optional[float] = None,
) -> Refinement:
    """Optimise the latents ``y`` (and ``z``) of the padded image ``x`` (1×3×H×W, [0, 1]) for
    rate + ``lmbda``·255²·MSE with every weight fixed; see the module docstring.

    Args:
        model: an ICWEM in eval mode (its weights are left as they were).
        y, z: the encoder's latents, ``model.analysis(x)`` and ``model.h_a(y)``.
        lmbda: the trade-off; the model's own (``model.lmbda``) makes the files it was trained to make.
        iterations: Adam steps; 0 returns ``y`` and ``z`` themselves.
        region: the image's height and width at the top left of ``x`` (default: all of ``x``).
        max_seconds: time budget; the run anneals by its time fraction when that is ahead and stops at 1.
        seed: of SGA's random rounding, so that a run can be repeated exactly.
        check_every: SGA's iterations between hard-rounded scorings (default: a tenth of the run; STE
            scores every iterate in its own forward pass).
        progress: show a progress bar on stderr.
        pixel_limit: refuse images above this many pixels (default: ``max_pixels(model)``).
        surrogate: the rounding that gradients pass through, ``ste`` or ``sga`` (see the module docstring).
        quality: a variable-rate model's, the one the file is coded at.
    """
    if x.shape[0] != 1:
        raise ValueError("refine_latents refines one image at a time")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, not {surrogate!r}")
    check_size(model, *x.shape[-2:], pixel_limit)
    region = tuple(x.shape[-2:]) if region is None else region
    check_every = check_every or max(1, iterations // 10)
    start = time.perf_counter()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    y0, z0 = y.detach(), z.detach()

    with _weights_frozen(model):
        def score(y_: Tensor, z_: Tensor) -> Tuple[float, float, float, Tensor, Tensor]:
            with torch.no_grad():
                value, bpp, mse, y_q, z_q = objective(model, x, y_, z_, lmbda, region, quality=quality)
            return float(value), float(bpp), float(mse), y_q, z_q

        initial, bpp, mse, _, _ = score(y0, z0)
        best = Refinement(y0, z0, initial, initial, bpp, mse, 0, 0, 0.0)
        y_var = y0.clone().requires_grad_(True)
        z_var = z0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([y_var, z_var], lr=lr)
        bar = tqdm(total=iterations, desc="refine", unit="it", file=sys.stderr, leave=False, dynamic_ncols=True,
                   disable=not progress or iterations == 0)
        done = scored = 0
        while done < iterations:
            elapsed = time.perf_counter() - start
            fraction = max(done / iterations, elapsed / max_seconds if max_seconds else 0.0)
            if fraction >= 1.0:
                break  # the time budget is spent
            tau = temperature(fraction)
            for group in optimizer.param_groups:  # Adam steps ~lr whatever the gradient's size: let them shrink
                group["lr"] = lr * learning_rate_factor(fraction)
            rounding = quantize_ste if surrogate == "ste" else lambda u: sga_round(u, tau, generator)
            loss, bpp, mse, y_q, z_q = objective(model, x, y_var, z_var, lmbda, region, rounding, quality)
            if surrogate == "ste":  # its forward pass rounds as the coder does: the loss scores this iterate
                values = tuple(float(t.detach()) for t in (loss, bpp, mse))
                best, scored = _keep_better(best, (*values, y_q.detach(), z_q.detach()), done), done
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            bar.update()
            if surrogate == "sga" and (done % check_every == 0 or done == iterations):
                best, scored = _keep_better(best, score(y_var, z_var), done), done
            bar.set_postfix(objective=f"{best.objective:.4f}", initial=f"{initial:.4f}", refresh=False)
        if scored != done:  # the last step's latents (or, stopped by the budget, those since the last scoring)
            best = _keep_better(best, score(y_var, z_var), done)
        bar.close()
    best.iterations = done
    best.seconds = time.perf_counter() - start
    return best


def _keep_better(best: Refinement, scored: Tuple[float, float, float, Tensor, Tensor], iteration: int) -> Refinement:
    value, bpp, mse, y_q, z_q = scored
    if not value < best.objective:  # a NaN never wins
        return best
    return Refinement(y_q, z_q, best.initial, value, bpp, mse, best.iterations, iteration, best.seconds)


def trained_lambda_at(model: nn.Module, quality: Optional[float]) -> Optional[float]:
    """The λ the model was trained for at ``quality``: a fixed-rate model's own, a variable-rate model's
    λ(Q) between the λs of its rate points (None where the checkpoint records none)."""
    if quality is None:
        return getattr(model, "lmbda", None)
    lambdas = getattr(model, "lambdas", None)
    return RateSchedule(lambdas).lmbda(quality) if lambdas else None


def compress_refined(
    model: nn.Module, x: Tensor, options: RefineOptions, region: Optional[Tuple[int, int]] = None,
    quality: Optional[float] = None,
) -> Tuple[dict, Refinement]:
    """``model.compress(x)`` (at a variable-rate model's ``quality``) with the latents refined first: the
    same output, other symbols.

    The size is checked before the analysis runs; λ is ``options.lmbda`` or the one the model was trained
    for at that rate (``trained_lambda_at``).
    """
    check_size(model, *x.shape[-2:])
    lmbda = options.lmbda if options.lmbda is not None else trained_lambda_at(model, quality)
    if lmbda is None:
        raise UserError("--refine needs the λ the model was trained for, and this checkpoint does not record one; "
                        "pass it as --refine-lambda")
    with torch.no_grad():  # the analysis as compress runs it (streamed, same values)
        y = model.analysis(x, inference=True)
        z = model.h_a(y)
    max_seconds = None if options.max_minutes is None else 60.0 * options.max_minutes
    refined = refine_latents(model, x, y, z, lmbda, options.iterations, region, max_seconds,
                             seed=options.seed, progress=options.progress, surrogate=options.surrogate,
                             quality=quality)
    del y, z
    with torch.inference_mode():
        out = model.compress_latents(refined.y, refined.z, quality=quality)
    return out, refined
