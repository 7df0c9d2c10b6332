"""``TrainState``: everything that changes during a run, and how it becomes a checkpoint and comes back.

The checkpoint is a plain dict, as in nanoGPT. It keeps the original's keys (``epoch``, ``state_dict``,
``loss``, ``optimizer``, ``aux_optimizer``, ``lr_scheduler``) and adds the model config, the run's
arguments, every rank's generator states, the step counters and the position in the epoch, so that a
resumed run repeats the uninterrupted run's arithmetic step for step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn


# Adam settings that say how a step is computed, not what it computes.
IMPLEMENTATION_KEYS = ("fused", "foreach")


@dataclass
class TrainState:
    """The model (never its DDP wrapper), both optimizers, the schedule, the scaler and the counters.

    ``samples_done`` counts this rank's samples of the current epoch; ``epoch`` is the epoch being
    trained. ``scaler`` is a ``GradScaler`` that is enabled only for --amp fp16 (disabled, it passes
    every call through), so the step has no branch for it.
    """

    model: nn.Module
    model_config: dict
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0
    samples_done: int = 0
    step: int = 0
    skipped_steps: int = 0
    best_loss: float = math.inf
    last_test_loss: Optional[float] = None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def record_test_loss(self, loss: float) -> bool:
        """Keep an epoch's test loss; True if it is the best so far (lower is better)."""
        self.last_test_loss = loss
        is_best = loss < self.best_loss
        self.best_loss = min(self.best_loss, loss)
        return is_best

    def state_dict(self, args: dict, rngs: list, batch_size: int, world_size: int, epoch_done: bool) -> dict:
        """The checkpoint: the original's keys first, then ours (see the module docstring).

        ``epoch_done``: written at the end of the epoch, so a resume starts the next one.
        """
        state = {
            "epoch": self.epoch,
            "state_dict": self.model.state_dict(),
            "loss": self.last_test_loss,
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "model_config": self.model_config,
            "args": args,
            "rng": rngs,
            "step": self.step,
            "best_loss": self.best_loss,
            "skipped_steps": self.skipped_steps,
            "data_position": {"epoch": self.epoch + 1 if epoch_done else self.epoch,
                              "samples": 0 if epoch_done else self.samples_done,
                              "batch_size": batch_size, "world_size": world_size},
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_optimizers(self, checkpoint: dict) -> None:
        """Both optimizers, the schedule and the scaler; KeyError or ValueError if they do not fit.

        A saved param group also carries how its step was computed (fused/foreach); that stays this run's
        choice (``losses.adam_implementation``), so a checkpoint from before it or from another device
        does not switch the fast path off."""
        for optimizer, key in ((self.optimizer, "optimizer"), (self.aux_optimizer, "aux_optimizer")):
            chosen = [{k: group[k] for k in IMPLEMENTATION_KEYS} for group in optimizer.param_groups]
            optimizer.load_state_dict(checkpoint[key])
            for group, keep in zip(optimizer.param_groups, chosen):
                group.update(keep)
        self.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler.is_enabled() and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])

    def load_counters(self, checkpoint: dict, batch_size: int, world_size: int, samples_per_epoch: int) -> List[str]:
        """Where the checkpoint stopped; returns notes for the user (the data order may only be approximate)."""
        notes = []
        position = checkpoint.get("data_position")
        if position is not None:  # ours: possibly mid-epoch
            self.epoch, self.samples_done = position["epoch"], position["samples"]
            if position.get("world_size", 1) != world_size or position.get("batch_size") != batch_size:
                notes.append("note: batch size or process count changed since the checkpoint; "
                             "the data order is continued approximately")
                self.samples_done = min(self.samples_done * position.get("world_size", 1) // world_size,
                                        samples_per_epoch)
        else:  # the original's checkpoints: always taken at the end of an epoch
            self.epoch = checkpoint["epoch"] + 1
        self.step = checkpoint.get("step", 0)
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
        self.best_loss = checkpoint.get("best_loss", math.inf)
        self.last_test_loss = checkpoint.get("loss")
        return notes
