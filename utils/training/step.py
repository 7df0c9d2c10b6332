"""``train_step``: one optimisation step, in the original's order (spec, "Training objective").

    zero both optimizers' gradients
    main loss (rate + λ·distortion): forward, backward, clip the gradient norm over all parameters, Adam step
    aux loss of the entropy bottleneck: backward (into the quantiles only), aux Adam step

A non-finite loss or gradient skips the step (the weights stay as they were). ``benchmarks/`` times this
same function, so what they measure is what training runs.

The step reads one value back from the device: whether to skip it (with the ranks' stop flags, all
agreed on in one go after the backward pass); a GPU runs ahead of the host otherwise. The loss terms
stay on the device (the loop reads them every --log-every steps). With fp16 the gradient scaler reads
its own overflow flag besides.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Optional

import torch
import torch.nn as nn

from losses import RateDistortionLoss

from .state import TrainState

Agree = Callable[[List[float]], List[float]]


def _alone(flags: List[float]) -> List[float]:
    return flags


@dataclass
class StepResult:
    """The step's loss terms (``aux_loss`` added when the step was taken), whether it was skipped, and
    the flags the ranks agreed on besides (``agree``'s output after the non-finite flag)."""

    terms: Dict[str, torch.Tensor]
    skipped: bool
    flags: List[float]


def _aux_has_gradients(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


def train_step(model: nn.Module, x: torch.Tensor, criterion: RateDistortionLoss, state: TrainState, *,
               clip_max_norm: float = 1.0, decoder_clamp: bool = False,
               autocast: Optional[ContextManager] = None, agree: Agree = _alone,
               flags: Callable[[], List[float]] = list, quality: Optional[float] = None,
               lmbda: Optional[float] = None) -> StepResult:
    """One step on the batch ``x``; ``model`` is ``state.model`` or its DDP wrapper.

    A variable-rate model trains at ``quality`` with the loss's λ replaced by ``lmbda`` (λ(Q)); both
    None for a fixed-rate model.

    ``agree`` is how the ranks agree, after the backward pass (which every rank runs, so DDP's all-reduce
    always meets every rank), on skipping the step and on stopping, which must happen at the same step
    everywhere: it receives ``[non-finite] + flags()`` (``flags`` is read after the backward pass, e.g. a
    stop signal and whether time is up) and returns the maximum over ranks. Alone, both default to nothing.
    """
    optimizer, aux_optimizer, scaler = state.optimizer, state.aux_optimizer, state.scaler
    optimizer.zero_grad(set_to_none=True)
    aux_optimizer.zero_grad(set_to_none=True)
    with autocast or nullcontext():
        out = model(x, decoder_clamp=decoder_clamp, quality=quality)
    terms = criterion(out, x, lmbda)
    loss = terms["loss"]
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    aux_unscaled = scaler.is_enabled() and _aux_has_gradients(aux_optimizer)
    if aux_unscaled:
        scaler.unscale_(aux_optimizer)  # the quantiles' (scaled) main-loss gradients
    nonfinite = ~torch.isfinite(loss)
    if clip_max_norm > 0:
        grad_norm = nn.utils.clip_grad_norm_(state.model.parameters(), clip_max_norm)
        # Gradients are already averaged over ranks, so every rank decides alike. Clipping scales every
        # gradient by max_norm / norm, so one non-finite gradient spoils them all, the quantiles' too
        # (after the scaler checked them for fp16): the whole step is skipped, aux step included.
        nonfinite |= ~torch.isfinite(grad_norm)
    skipped, *agreed = agree([float(nonfinite), *flags()])  # the step's one read from the device
    if skipped:
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update()  # closes the step's unscale_; lowers the scale if the gradients were not finite
        return StepResult(terms, True, agreed)
    scaler.step(optimizer)
    aux_loss = state.model.aux_loss()
    aux_loss.backward()
    if aux_unscaled:
        scaler.step(aux_optimizer)  # skips the step if the unscaled gradients were not finite
    else:
        aux_optimizer.step()
    scaler.update()
    terms["aux_loss"] = aux_loss
    return StepResult(terms, False, agreed)
