"""Setting a run up: the device, the seeds, the data, the model and its optimizers, DDP.

Each function is one phase of ``train``'s setup, in the order ``train`` calls them; the order matters for
exact resume only through the global torch generator, which the model's initialisation draws from (after
``seed_everything``) and which ``train`` reseeds per rank once the model is built and wrapped.
"""

from __future__ import annotations

import bisect
import math
import random
import sys
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import ContextManager, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR
from torch.utils.data import DataLoader

from datasets import EpochIndices, ImageFolder, ShardedEpochSampler
from losses import RateDistortionLoss, configure_optimizers
from models import ICWEM, config_from_state_dict, get_config, model_from_state_dict, split_checkpoint
from models.checkpoint import trained_lambda, variable_rate_from_fixed
from models.variable_rate import RateSchedule

from ..device import cpu_computes_natively, select_device, set_tf32
from ..errors import UserError
from .config import TrainConfig
from .distributed import DistributedContext, init_process_group, unused_parameters, wrap_ddp
from .signals import ignore_sigint
from .state import TrainState

# --lr-schedule cosine ends at this fraction of the initial learning rate.
COSINE_FINAL_FACTOR = 0.01
# --amp fp16's first loss scale. GradScaler's 2^16 suits losses of order 1; ours weighs the MSE by
# λ·255², and at initialisation the fp16 gradients of the INN's and g_s's biases (sums over all pixels)
# reach thousands: 2^16 down to 2^5 overflow, 2^4 just fits (tiny preset, one 64×64 crop), i.e. 12
# skipped steps before the first update; 2^3 leaves a factor 2. The scaler still halves on overflow and
# doubles after 2000 clean steps.
FP16_INIT_SCALE = 2.0**3


def training_device(cfg: TrainConfig, ctx: DistributedContext) -> torch.device:
    """``--device``/``--cuda`` as every script reads them, then one GPU per process, the TF32 policy and
    the --amp checks.

    Training lets CUDA's float32 matmuls and convolutions use TF32 (``docs/cuda.md``: coding and
    evaluation do not), and cuDNN pick its convolution algorithms by timing them. --amp runs on the CPU
    too (so the tests cover both types), with a warning where the CPU only emulates the type: it is then
    slower than float32, not faster.
    """
    device = select_device(cfg.cuda, cfg.device, doing="training", warn=ctx.master)
    if device.type == "cuda":
        # One GPU per process: torchrun's LOCAL_RANK picks it.
        device = torch.device("cuda", ctx.local_rank if ctx.ddp else (device.index or 0))
        set_tf32(True)
        torch.backends.cudnn.benchmark = True  # crops have one size: cuDNN times its algorithms once, keeps the fastest
    if cfg.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
    if cfg.amp != "none" and device.type == "cpu" and not cpu_computes_natively(cfg.amp) and ctx.master:
        print(f"warning: --amp {cfg.amp}: this CPU emulates {cfg.amp} (it lacks "
              f"{'AVX512-BF16 and AMX' if cfg.amp == 'bf16' else 'AVX512-FP16 and AMX-FP16'}), "
              "so training is slower than without --amp", file=sys.stderr)
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the model's initialisation draws from torch's generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Data:
    """Both splits with their samplers and loaders; ``train`` sets the epoch on the train set and sampler."""

    train_set: ImageFolder
    test_set: ImageFolder
    train_sampler: ShardedEpochSampler
    train_loader: DataLoader
    test_loader: DataLoader

    @property
    def samples_per_epoch(self) -> int:
        """This rank's share of an epoch, in samples."""
        return self.train_sampler.shard_size()


def make_loader(dataset: ImageFolder, sampler: ShardedEpochSampler, batch_size: int, num_workers: int,
                device: torch.device, seed: int) -> DataLoader:
    """A loader of uint8 batches (``to_device`` scales them) that never draws from the global torch
    generator, with workers that live as long as the run (see the comments inside)."""
    # The loader's own generator (only used for worker seeds) keeps it from drawing from the global torch
    # generator whenever an epoch's iterator is created, which would shift the quantisation noise after a
    # resume. Persistent workers keep a copy of the dataset from the first epoch, so the sampler hands
    # each of them the epoch with every index (``EpochIndices``): crops follow the current epoch.
    return DataLoader(
        dataset, batch_size=batch_size, sampler=EpochIndices(sampler), num_workers=num_workers,
        pin_memory=device.type == "cuda", drop_last=False, worker_init_fn=ignore_sigint,
        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0,
    )


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader's uint8 batch as float32 in [0, 1] on ``device``: a quarter of the bytes cross from the
    workers and to the GPU, and the division on the device gives the dataset's own float values."""
    return batch.to(device, non_blocking=True).float().div_(255.0)


def build_data(cfg: TrainConfig, ctx: DistributedContext, device: torch.device) -> Data:
    """Random crops for training, centre crops for testing (the original's transforms), sharded per rank."""
    train_set = ImageFolder(cfg.dataset, "train", cfg.patch_size, random_crop=True, seed=cfg.seed, verbose=ctx.master,
                            augment=cfg.augment, repeat=cfg.repeat, colour_augment=cfg.colour_augment, uint8=True)
    test_set = ImageFolder(cfg.dataset, "test", cfg.patch_size, random_crop=False, seed=cfg.seed, verbose=ctx.master,
                           uint8=True)
    train_sampler = ShardedEpochSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=ctx.rank,
                                        world_size=ctx.world_size, pad=True)
    test_sampler = ShardedEpochSampler(len(test_set), shuffle=False, rank=ctx.rank, world_size=ctx.world_size, pad=False)
    return Data(
        train_set, test_set, train_sampler,
        make_loader(train_set, train_sampler, cfg.batch_size, cfg.num_workers, device, cfg.seed),
        make_loader(test_set, test_sampler, cfg.test_batch_size, cfg.num_workers, device, cfg.seed),
    )


def rate_schedule(cfg: TrainConfig) -> Optional[RateSchedule]:
    """--lambdas: the qualities and λs a variable-rate model trains on (None: a fixed-rate model)."""
    return RateSchedule(cfg.lambdas, cfg.seed) if cfg.lambdas else None


def variable_rate_warm_start(cfg: TrainConfig, checkpoint: Optional[dict]) -> bool:
    """Whether --lambdas starts a variable-rate model from a fixed-rate checkpoint's weights (with fresh
    optimizers: the checkpoint's have no state for the gains)."""
    return bool(cfg.lambdas) and checkpoint is not None and "rate_gain.log_steps" not in split_checkpoint(checkpoint)[0]


def build_model(cfg: TrainConfig, checkpoint: Optional[dict], ctx: DistributedContext) -> Tuple[nn.Module, dict]:
    """The model (with the checkpoint's weights, if any) and the config it was built from.

    A checkpoint that stores its ``model_config`` (ours do) is rebuilt from it; published weight files
    carry none and use ``--model-config`` (and ``--N``). With --lambdas the model is variable-rate, with
    one rate point per λ: a fresh one has gain 1 at the λs' geometric middle, one started from a
    fixed-rate checkpoint has gain 1 at the λ that checkpoint was trained for (or that middle, where
    the file does not say).
    """
    model_config = get_config(cfg.model_config)
    if cfg.N is not None:
        model_config["N"] = cfg.N
    rates = rate_schedule(cfg)
    if rates is not None:
        model_config.update(rate_points=rates.rate_points, rate_gain=cfg.rate_gain)
    if checkpoint is None:
        model = ICWEM(**model_config)
        if rates is not None:
            model.rate_gain.init_from_lambdas(rates.lambdas, rates.reference_lambda())
        return model, model_config
    state_dict, stored_config = split_checkpoint(checkpoint)
    if variable_rate_warm_start(cfg, checkpoint):
        base = dict(stored_config) if stored_config is not None else config_from_state_dict(state_dict)
        base.update(rate_points=rates.rate_points, rate_gain=cfg.rate_gain)
        reference = trained_lambda(checkpoint) or rates.reference_lambda()
        if ctx.master:
            print(f"variable rate: {rates.rate_points} rate points from the fixed-rate weights in {cfg.checkpoint}, "
                  f"gain 1 at λ = {reference:g}")
        try:
            model = variable_rate_from_fixed(state_dict, base, rates.lambdas, reference)
        except UserError as exc:
            raise UserError(f"{cfg.checkpoint}: {exc}") from None
        return model, model.config
    if "rate_gain.log_steps" in state_dict and rates is None:
        raise UserError(f"{cfg.checkpoint} is a variable-rate model: pass --lambdas with the λs of its rate points")
    if stored_config is not None:
        if stored_config != model_config and ctx.master:
            print(f"note: using the model config stored in {cfg.checkpoint}, not the one from --model-config/--N")
        model_config = dict(stored_config)
    try:
        model = model_from_state_dict(state_dict, model_config)
    except UserError as exc:
        raise UserError(f"{cfg.checkpoint}: {exc}") from None
    if rates is not None and model.rate_points != rates.rate_points:
        raise UserError(f"{cfg.checkpoint} has {model.rate_points} rate points, --lambdas gives {rates.rate_points}")
    return model, model_config


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The original's MultiStepLR (×0.1 at --lr_epoch), or a cosine decay over --epochs for a fixed budget."""
    if cfg.lr_schedule == "cosine":
        def factor(epoch: int) -> float:
            progress = min(1.0, epoch / max(1, cfg.epochs))
            return COSINE_FINAL_FACTOR + (1 - COSINE_FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))
        return LambdaLR(optimizer, factor)
    return MultiStepLR(optimizer, milestones=list(cfg.lr_epoch), gamma=0.1)


@contextmanager
def warmup(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> Iterator[None]:
    """Within it, the optimizer's rates are the schedule's times (step + 1) / ``warmup_steps`` while ``step`` <
    ``warmup_steps`` (--warmup-steps, counted from a run's first step, so a resumed run keeps its place).

    Adam's first steps move every weight by about the learning rate whatever its gradient, which throws a
    trained model off before its moment estimates settle. The rates are restored on leaving, so that the
    schedulers, which read them, see only their own.
    """
    if step >= warmup_steps:
        yield
        return
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, scheduled):
        group["lr"] = lr * (step + 1) / warmup_steps
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr


def resume_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig) -> Optional[float]:
    """Give a restored scheduler the schedule the flags now define, from the resumed epoch on.

    A restored scheduler holds its checkpoint's milestones and the rate its last step set; after a changed
    --epochs (cosine) or --lr_epoch that stale rate would otherwise last one more epoch. Returns the new main
    rate if it changed, else None (an unchanged schedule keeps its rates bit for bit: exact resume).
    """
    epoch = scheduler.last_epoch
    if isinstance(scheduler, LambdaLR):  # its factor is built from cfg, never stored in the checkpoint
        rates = [base * factor(epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    elif isinstance(scheduler, MultiStepLR):
        scheduler.milestones = Counter(cfg.lr_epoch)
        passed = bisect.bisect_right(sorted(scheduler.milestones.elements()), epoch)
        rates = [base * scheduler.gamma ** passed for base in scheduler.base_lrs]
    else:
        return None
    groups = scheduler.optimizer.param_groups
    if all(math.isclose(g["lr"], r, rel_tol=1e-9) for g, r in zip(groups, rates)):
        return None
    for group, rate in zip(groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports
    return rates[0]


def new_state(cfg: TrainConfig, model: nn.Module, model_config: dict) -> TrainState:
    """A fresh run's state: both Adams, the schedule, and a gradient scaler (on the model's device) that
    is live only for --amp fp16."""
    optimizer, aux_optimizer = configure_optimizers(model, cfg.learning_rate, cfg.aux_learning_rate)
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE, enabled=cfg.amp == "fp16")
    return TrainState(
        model=model, model_config=model_config, optimizer=optimizer, aux_optimizer=aux_optimizer,
        scheduler=make_scheduler(optimizer, cfg), scaler=scaler,
    )


def autocast_for(cfg: TrainConfig, device: torch.device) -> ContextManager:
    """Mixed precision chosen once: autocast on ``device`` for --amp bf16/fp16 (the model keeps the
    entropy models and the loss in float32 inside it), a context that does nothing otherwise."""
    if cfg.amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def distribute(model: nn.Module, criterion: RateDistortionLoss, cfg: TrainConfig, ctx: DistributedContext,
               device: torch.device) -> nn.Module:
    """Join the process group and wrap the model in DDP (one process per device); the model itself otherwise."""
    init_process_group(ctx, device)
    if not ctx.ddp:
        return model
    example = torch.rand(1, 3, *cfg.patch_size, generator=torch.Generator().manual_seed(0)).to(device)
    unused = unused_parameters(model, criterion, example)
    if unused and ctx.master:
        print(f"note: {len(unused)} parameters get no gradient (e.g. {unused[0]}); DDP will look for them each step")
    return wrap_ddp(model, ctx, device, find_unused=bool(unused))
