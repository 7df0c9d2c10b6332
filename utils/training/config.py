"""What a training run depends on: ``TrainConfig``, the one source of ``train.py``'s defaults, and its checks."""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Optional, Sequence

from losses import MS_SSIM_MIN_SIZE
from models import ICWEM
from models.variable_rate import check_lambdas

from ..errors import UserError


# Loader workers per training process at most: each decodes whole images, and a GPU's step at batch 8 of
# 256² wants a few dozen crops per second, not hundreds.
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """The CPU cores available to this process shared among the training processes of this machine
    (torchrun's LOCAL_WORLD_SIZE), at least 1 and at most MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        processes = 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores // processes))


@dataclass
class TrainConfig:
    """Everything a run depends on; the fields are ``train.py``'s flags (see its ``--help``)."""

    dataset: str
    epochs: int = 50
    learning_rate: float = 1e-4
    num_workers: int = field(default_factory=default_num_workers)
    lmbda: float = 3.0
    batch_size: int = 8
    test_batch_size: int = 8
    aux_learning_rate: float = 1e-3
    patch_size: Sequence[int] = (256, 256)
    cuda: bool = False
    save: bool = True
    seed: int = 100
    clip_max_norm: float = 1.0
    checkpoint: Optional[str] = None
    type: str = "mse"
    save_path: str = "train_result"
    N: Optional[int] = None
    lr_epoch: Sequence[int] = (450, 550)
    continue_train: bool = True
    skip_epoch: int = 0
    model_config: str = "icwem"
    device: Optional[str] = None
    amp: str = "none"
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    log_every: int = 100
    save_every_steps: int = 0
    keep_step_checkpoints: bool = False  # keep every save as step<N>_checkpoint.pth.tar (for a tail average)
    augment: bool = False
    colour_augment: bool = False
    repeat: int = 1
    lr_schedule: str = "multistep"
    warmup_steps: int = 0  # the main learning rate rises linearly over a fresh run's first steps (Adam's moments start empty)
    decoder_clamp: bool = False
    lambdas: Optional[Sequence[float]] = None  # a variable-rate model: the λs of its rate points (models/variable_rate.py)
    rate_gain: str = "channel"

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default (``dataset`` has none), so that ``train.py`` writes no default twice."""
        out = {}
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        return out

    def as_args(self) -> dict:
        """The config as the checkpoint's ``args`` stores it (tuples as lists, as torch.load returns them)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def check_config(cfg: TrainConfig) -> None:
    """Reject flag values that cannot work, with one-line messages, before anything heavy starts."""
    positive = {"--epochs": cfg.epochs, "--batch-size": cfg.batch_size, "--test-batch-size": cfg.test_batch_size,
                "--log-every": cfg.log_every}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if cfg.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {cfg.repeat}")
    if cfg.lr_schedule not in ("multistep", "cosine"):
        raise UserError(f"--lr-schedule must be multistep or cosine, got {cfg.lr_schedule!r}")
    nonnegative = {"--num-workers": cfg.num_workers, "--skip_epoch": cfg.skip_epoch,
                   "--save-every-steps": cfg.save_every_steps, "--clip_max_norm": cfg.clip_max_norm,
                   "--warmup-steps": cfg.warmup_steps}
    if cfg.max_steps is not None:
        nonnegative["--max-steps"] = cfg.max_steps
    if cfg.max_minutes is not None:
        nonnegative["--max-minutes"] = cfg.max_minutes
    for flag, value in nonnegative.items():
        if value < 0:
            raise UserError(f"{flag} must not be negative, got {value}")
    if len(cfg.patch_size) != 2 or min(cfg.patch_size) < 1 or any(s % ICWEM.downsampling_factor for s in cfg.patch_size):
        raise UserError(f"--patch-size must be two multiples of {ICWEM.downsampling_factor} "
                        f"(the model's downsampling factor), got {list(cfg.patch_size)}")
    if cfg.type not in ("mse", "ms-ssim"):
        raise UserError(f"--type must be mse or ms-ssim, got {cfg.type!r}")
    if cfg.type == "ms-ssim" and min(cfg.patch_size) < MS_SSIM_MIN_SIZE:
        raise UserError(f"--type ms-ssim needs patches of at least {MS_SSIM_MIN_SIZE}x{MS_SSIM_MIN_SIZE} "
                        f"(5-scale MS-SSIM), got {cfg.patch_size[0]}x{cfg.patch_size[1]}")
    if cfg.lambdas is not None:
        try:
            check_lambdas(cfg.lambdas)
        except ValueError as exc:
            raise UserError(f"--lambdas: {exc}") from None
    if cfg.rate_gain not in ("channel", "scalar"):
        raise UserError(f"--rate-gain must be channel or scalar, got {cfg.rate_gain!r}")
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise UserError(f"--amp must be none, bf16 or fp16, got {cfg.amp!r}")
