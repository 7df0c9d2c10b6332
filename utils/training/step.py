"""``train_step``: one optimisation step, in the original's order (spec, "Training objective").

    zero both optimizers' gradients
    main loss (rate + λ·distortion): forward, backward, clip the gradient norm over all parameters, Adam step
    aux loss of the entropy bottleneck: backward (into the quantiles only), aux Adam step

A non-finite loss or gradient skips the step (the weights stay as they were). ``benchmarks/`` times this
same function, so what they measure is what training runs.
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
               flags: Callable[[], List[float]] = list) -> StepResult:
    """One step on the batch ``x``; ``model`` is ``state.model`` or its DDP wrapper.

    ``agree`` is how the ranks agree before backward — DDP's all-reduce needs every rank at backward, and
    a stop must happen at the same step everywhere: it receives ``[non-finite] + flags()`` (``flags`` is
    read after the forward pass, e.g. a stop signal and whether time is up) and returns the maximum over
    ranks. Alone, both default to nothing.
    """
    optimizer, aux_optimizer, scaler = state.optimizer, state.aux_optimizer, state.scaler
    optimizer.zero_grad(set_to_none=True)
    aux_optimizer.zero_grad(set_to_none=True)
    with autocast or nullcontext():
        out = model(x, decoder_clamp=decoder_clamp)
    terms = criterion(out, x)
    loss = terms["loss"]
    nonfinite, *agreed = agree([float(not torch.isfinite(loss).item()), *flags()])
    skipped, aux_unscaled = bool(nonfinite), False
    if not skipped:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if scaler.is_enabled() and _aux_has_gradients(aux_optimizer):
            scaler.unscale_(aux_optimizer)  # the quantiles' (scaled) main-loss gradients
            aux_unscaled = True
        if clip_max_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(state.model.parameters(), clip_max_norm)
            # (gradients are already averaged over ranks, so every rank decides alike; with fp16 the
            # scaler itself skips a step whose gradients are not finite)
            skipped = not scaler.is_enabled() and not torch.isfinite(grad_norm).item()
    if skipped:
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
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
