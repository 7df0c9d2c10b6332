"""Training tier, in the phases ``train`` runs them.

``config`` (TrainConfig, the checks), ``setup`` (device, seeds, data, model, optimizers, DDP), ``state``
(TrainState: what changes, saved and restored), ``step`` (train_step), ``loop`` (train_one_epoch,
validate, train), ``signals`` (clean stops), ``checkpoint`` (atomic files, generator states),
``distributed`` (the few collective operations); ``entropy_stage`` (after training: the entropy model alone on
whole-picture latents, ``tools/entropy_stage.py``).
"""

from .config import TrainConfig, check_config, default_num_workers
from .loop import BEST, LATEST, TrainResult, train, train_one_epoch, validate
from .setup import COSINE_FINAL_FACTOR, make_scheduler
from .state import TrainState
from .step import StepResult, train_step

__all__ = [
    "BEST", "COSINE_FINAL_FACTOR", "LATEST", "StepResult", "TrainConfig", "TrainResult", "TrainState",
    "check_config", "default_num_workers", "make_scheduler", "train", "train_one_epoch", "train_step", "validate",
]
