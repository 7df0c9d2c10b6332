"""Training ICWEM with the original's objective and schedule, resumable exactly, on one or many devices.

``train(TrainConfig(...))`` is the whole run; ``train.py`` only turns its command line into a TrainConfig.
The loop is one function, read top to bottom: setup (devices, DDP from torchrun's environment, seeds),
data, model, optimizers, optional resume, then epochs of steps with a test pass, a scheduler step and
checkpoints at the end of each.

One step, in the original's order (spec, "Training objective"):
    zero both optimizers' gradients
    main loss (rate + λ·distortion): forward, backward, clip the gradient norm over all parameters, Adam step
    aux loss of the entropy bottleneck: backward (into the quantiles only), aux Adam step

Exact resume: the data order and crops are functions of (seed, epoch, sample index), and the checkpoint
holds the model, both optimizers, the scheduler, every rank's generator states and the position in the
epoch, so a resumed run repeats the uninterrupted run's arithmetic step for step: bit-identical on the CPU
with the same thread count (the number of threads changes the order of floating-point sums), batch size
and number of processes; GPU kernels may add their own non-determinism. ``--checkpoint`` with a file that
holds only weights (``{"state_dict": ...}`` or a bare state dict), or with ``--no-continue_train``, starts
a fresh run (epoch 0, new optimizers) from those weights.

Stopping: SIGINT (Ctrl-C) or SIGTERM finishes the current step, writes ``checkpoint_latest.pth.tar`` and
returns exit code 130 or 143 (128 + the signal number); a second Ctrl-C aborts at once without saving.
``--max-steps`` stops the same way with exit code 0, and so does ``--max-minutes``: the step during which
that much time has passed in the training loop (this invocation's, not the run's total) is the last.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import ImageFolder, ShardedEpochSampler
from losses import MS_SSIM_MIN_SIZE, RateDistortionLoss, configure_optimizers
from models import ICWEM, get_config, model_from_state_dict, read_checkpoint, split_checkpoint

from .checkpoint import copy_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import (
    DistributedContext,
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    destroy_process_group,
    distributed_context,
    init_process_group,
    parameters_in_sync,
    unused_parameters,
    wrap_ddp,
)
from ..errors import UserError

LATEST = "checkpoint_latest.pth.tar"
BEST = "checkpoint_best.pth.tar"
EPOCH_CHECKPOINT_EVERY = 5  # the original keeps "<epoch>_checkpoint.pth.tar" for every fifth epoch


def default_num_workers() -> int:
    """min(4, CPU cores available to this process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


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
    augment: bool = False
    repeat: int = 1
    lr_schedule: str = "multistep"
    decoder_clamp: bool = False


# --lr-schedule cosine ends at this fraction of the initial learning rate.
COSINE_FINAL_FACTOR = 0.01


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The original's MultiStepLR (×0.1 at --lr_epoch), or a cosine decay over --epochs for a fixed budget."""
    if cfg.lr_schedule == "cosine":
        def factor(epoch: int) -> float:
            progress = min(1.0, epoch / max(1, cfg.epochs))
            return COSINE_FINAL_FACTOR + (1 - COSINE_FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))
        return LambdaLR(optimizer, factor)
    return MultiStepLR(optimizer, milestones=list(cfg.lr_epoch), gamma=0.1)


@dataclass
class TrainResult:
    """What a finished (or stopped) run hands back to its caller; ``exit_code`` is the script's."""

    exit_code: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    step: int
    skipped_steps: int
    history: List[dict]


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step (see the module docstring)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum
        # os.write, not print: print is not reentrant if the signal lands inside another print.
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                    f"(Ctrl-C again to abort without saving)\n".encode())


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
                   "--save-every-steps": cfg.save_every_steps, "--clip_max_norm": cfg.clip_max_norm}
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
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise UserError(f"--amp must be none, bf16 or fp16, got {cfg.amp!r}")


def select_device(cfg: TrainConfig, ctx: DistributedContext) -> torch.device:
    """``--device`` if given, else CUDA with ``--cuda`` (the CPU, with a warning, if there is none)."""
    if cfg.device:
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise UserError(f"--device: not a device: {cfg.device!r} (try cpu, cuda, cuda:1)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {cfg.device}: CUDA is not available on this machine")
    elif cfg.cuda and torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        if cfg.cuda and ctx.master:
            print("warning: --cuda given but CUDA is not available; training on the CPU", file=sys.stderr)
        device = torch.device("cpu")
    if device.type == "cuda":
        # One GPU per process: torchrun's LOCAL_RANK picks it.
        device = torch.device("cuda", ctx.local_rank if ctx.ddp else (device.index or 0))
    if cfg.amp != "none":
        if device.type != "cuda":
            raise UserError(f"--amp {cfg.amp} needs a CUDA device (use --cuda or --device cuda)")
        if cfg.amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the model's initialisation draws from torch's generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(dataset: ImageFolder, sampler: ShardedEpochSampler, batch_size: int, num_workers: int,
                device: torch.device, seed: int) -> DataLoader:
    # The loader's own generator (only used for worker seeds) keeps it from drawing from the global torch
    # generator whenever an epoch's iterator is created, which would shift the quantisation noise after a
    # resume. Workers are not persistent so that each epoch's workers see the dataset's current epoch.
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=device.type == "cuda", drop_last=False, worker_init_fn=_ignore_sigint,
        generator=torch.Generator().manual_seed(seed),
    )


def build_model(cfg: TrainConfig, checkpoint: Optional[dict], ctx: DistributedContext) -> tuple:
    """The model (with the checkpoint's weights, if any) and the config it was built from.

    A checkpoint that stores its ``model_config`` (ours do) is rebuilt from it; published weight files
    carry none and use ``--model-config`` (and ``--N``).
    """
    model_config = get_config(cfg.model_config)
    if cfg.N is not None:
        model_config["N"] = cfg.N
    if checkpoint is None:
        return ICWEM(**model_config), model_config
    state_dict, stored_config = split_checkpoint(checkpoint)
    if stored_config is not None:
        if stored_config != model_config and ctx.master:
            print(f"note: using the model config stored in {cfg.checkpoint}, not the one from --model-config/--N")
        model_config = dict(stored_config)
    try:
        model = model_from_state_dict(state_dict, model_config)
    except UserError as exc:
        raise UserError(f"{cfg.checkpoint}: {exc}") from None
    return model, model_config


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, criterion: RateDistortionLoss, device: torch.device,
             ctx: DistributedContext, decoder_clamp: bool = False) -> Dict[str, object]:
    """Mean test loss, bpp, distortion and PSNR over the whole test split (all ranks' shares).

    PSNR is measured on the reconstruction clamped to [0, 1], as a decoder would output it; the loss terms
    use it unclamped, like training. Also returns the first test image next to its reconstruction.
    """
    model.eval()
    distortion = "mse_loss" if criterion.metric == "mse" else "ms_ssim_loss"
    totals = [0.0, 0.0, 0.0, 0.0, 0.0]  # images, loss, bpp, distortion, PSNR (each summed over images)
    image = None
    for x in loader:
        x = x.to(device, non_blocking=True)
        out = model(x, decoder_clamp=decoder_clamp)
        terms = criterion(out, x)
        n = x.shape[0]
        x_hat = out["x_hat"].float().clamp(0, 1)
        mse = (x_hat - x).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
        totals[0] += n
        totals[1] += terms["loss"].item() * n
        totals[2] += terms["bpp_loss"].item() * n
        totals[3] += terms[distortion].item() * n
        totals[4] += (-10 * torch.log10(mse)).sum().item()
        if image is None:
            image = torch.cat([x[0], x_hat[0]], dim=2).cpu()
    count, loss, bpp, dist, psnr = all_reduce_sum(totals, ctx, device)
    model.train()
    return {"loss": loss / count, "bpp": bpp / count, distortion: dist / count, "psnr": psnr / count, "image": image}


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring for what is saved and when."""
    check_config(cfg)
    ctx = distributed_context()
    device = select_device(cfg, ctx)
    seed_everything(cfg.seed)
    master = ctx.master
    save_dir = Path(cfg.save_path) / str(cfg.lmbda)  # the original's layout: SAVE_PATH/<lambda>/

    # ---- data: random crops for training, centre crops for testing (the original's transforms)
    train_set = ImageFolder(cfg.dataset, "train", cfg.patch_size, random_crop=True, seed=cfg.seed, verbose=master,
                            augment=cfg.augment, repeat=cfg.repeat)
    test_set = ImageFolder(cfg.dataset, "test", cfg.patch_size, random_crop=False, seed=cfg.seed, verbose=master)
    train_sampler = ShardedEpochSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=ctx.rank,
                                        world_size=ctx.world_size, pad=True)
    test_sampler = ShardedEpochSampler(len(test_set), shuffle=False, rank=ctx.rank, world_size=ctx.world_size, pad=False)
    train_loader = make_loader(train_set, train_sampler, cfg.batch_size, cfg.num_workers, device, cfg.seed)
    test_loader = make_loader(test_set, test_sampler, cfg.test_batch_size, cfg.num_workers, device, cfg.seed)
    samples_per_epoch = train_sampler.shard_size()
    batches_per_epoch = math.ceil(samples_per_epoch / cfg.batch_size)

    # ---- model, loss, optimizers, schedule
    checkpoint = read_checkpoint(cfg.checkpoint, map_location="cpu") if cfg.checkpoint else None
    model, model_config = build_model(cfg, checkpoint, ctx)
    model = model.to(device)
    criterion = RateDistortionLoss(cfg.lmbda, cfg.type)
    optimizer, aux_optimizer = configure_optimizers(model, cfg.learning_rate, cfg.aux_learning_rate)
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)
                if cfg.amp != "none" else nullcontext())

    # ---- where to start: fresh, fine-tuning from weights, or continuing a run
    epoch, samples_done, step, skipped_steps = 0, 0, 0, 0
    best_loss, last_test_loss = float("inf"), None
    restored_rng = None
    continuing = checkpoint is not None and cfg.continue_train and "optimizer" in checkpoint
    if checkpoint is not None and not continuing and master:
        why = "--no-continue_train" if not cfg.continue_train else "it holds weights only"
        print(f"fine-tuning from the weights in {cfg.checkpoint} with fresh optimizers ({why})")
    if continuing:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
            aux_optimizer.load_state_dict(checkpoint["aux_optimizer"])
            scheduler.load_state_dict(checkpoint["lr_scheduler"])
            if scaler is not None and "scaler" in checkpoint:
                scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError) as exc:
            raise UserError(f"{cfg.checkpoint}: its optimizer state does not fit this model ({exc}); "
                            f"use --no-continue_train to start from its weights only") from None
        if isinstance(scheduler, MultiStepLR) and Counter(cfg.lr_epoch) != scheduler.milestones:
            if master:
                print(f"note: learning-rate milestones now {list(cfg.lr_epoch)} (--lr_epoch), "
                      f"checkpoint had {sorted(scheduler.milestones.elements())}")
            scheduler.milestones = Counter(cfg.lr_epoch)
        position = checkpoint.get("data_position")
        if position is not None:  # ours: possibly mid-epoch
            epoch, samples_done = position["epoch"], position["samples"]
            if position.get("world_size", 1) != ctx.world_size or position.get("batch_size") != cfg.batch_size:
                if master:
                    print("note: batch size or process count changed since the checkpoint; "
                          "the data order is continued approximately")
                samples_done = min(samples_done * position.get("world_size", 1) // ctx.world_size, samples_per_epoch)
        else:  # the original's checkpoints: always taken at the end of an epoch
            epoch = checkpoint["epoch"] + 1
        step = checkpoint.get("step", 0)
        skipped_steps = checkpoint.get("skipped_steps", 0)
        best_loss = checkpoint.get("best_loss", float("inf"))
        last_test_loss = checkpoint.get("loss")
        rngs = checkpoint.get("rng")
        if rngs is not None and len(rngs) == ctx.world_size:
            restored_rng = rngs[ctx.rank]
    if epoch < cfg.skip_epoch:
        # --skip_epoch: start later in the schedule, as if the skipped epochs had run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" is intended here
            while scheduler.last_epoch < cfg.skip_epoch:
                scheduler.step()
        epoch, samples_done = cfg.skip_epoch, 0
    del checkpoint

    # ---- distributed: one process per device, gradients averaged by DDP
    init_process_group(ctx, device)
    raw_model = model  # the module itself: aux_loss, state_dict and evaluation go through it
    if ctx.ddp:
        unused = unused_parameters(model, criterion, torch.rand(
            1, 3, *cfg.patch_size, generator=torch.Generator().manual_seed(0)).to(device))
        if unused and master:
            print(f"note: {len(unused)} parameters get no gradient (e.g. {unused[0]}); DDP will look for them each step")
        model = wrap_ddp(model, ctx, device, find_unused=bool(unused))
    # Every rank has its own quantisation-noise stream (rank 0 keeps the single-process one).
    torch.manual_seed(cfg.seed + ctx.rank)
    if restored_rng is not None:
        set_rng_state(restored_rng, device)

    writer = None
    if master:
        from torch.utils.tensorboard import SummaryWriter  # slow import; only the master logs

        save_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(log_dir=str(save_dir / "tensorboard"))

    def save(kind: str, epoch_done: bool) -> None:
        """Write the checkpoint (every rank must call this: the ranks' generator states are gathered)."""
        rngs = all_gather_object(rng_state(device), ctx)
        if not (cfg.save and master):
            return
        state = {
            "epoch": epoch,
            "state_dict": raw_model.state_dict(),
            "loss": last_test_loss,
            "optimizer": optimizer.state_dict(),
            "aux_optimizer": aux_optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "model_config": model_config,
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "rng": rngs,
            "step": step,
            "best_loss": best_loss,
            "skipped_steps": skipped_steps,
            "data_position": {"epoch": epoch + 1 if epoch_done else epoch, "samples": 0 if epoch_done else samples_done,
                              "batch_size": cfg.batch_size, "world_size": ctx.world_size},
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        save_checkpoint(state, save_dir / LATEST)
        if kind == "epoch":
            if is_best:
                copy_checkpoint(save_dir / LATEST, save_dir / BEST)
            if epoch % EPOCH_CHECKPOINT_EVERY == 0:
                copy_checkpoint(save_dir / LATEST, save_dir / f"{epoch}_checkpoint.pth.tar")

    def stopped(signum: int, reason: str = "") -> TrainResult:
        """Report a stop by signal (exit code 128 + its number), --max-steps or --max-minutes (exit code 0)."""
        if master:
            reason = signal.Signals(signum).name if signum else reason or f"--max-steps {cfg.max_steps}"
            resume = f"; resume with --checkpoint {save_dir / LATEST}" if cfg.save else ""
            print(f"stopped at epoch {epoch} step {step} ({reason}){resume}", flush=True)
        return finish(128 + signum if signum else 0)

    def finish(exit_code: int) -> TrainResult:
        if writer is not None:
            writer.close()
        destroy_process_group(ctx)
        return TrainResult(exit_code, raw_model, optimizer, aux_optimizer, step, skipped_steps, history)

    distortion = "mse_loss" if cfg.type == "mse" else "ms_ssim_loss"
    short = {"loss": "loss", "bpp_loss": "bpp", "mse_loss": "mse", "ms_ssim_loss": "ms-ssim"}
    history: List[dict] = []
    is_best = False
    # The time limit is read at every step and agreed on by all ranks with the stop signals, so that every
    # rank stops at the same step whatever its clock says.
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes is not None else math.inf
    out_of_time = 0.0
    time_reason = f"--max-minutes {cfg.max_minutes:g}" if cfg.max_minutes is not None else ""
    model.train()
    with StopSignals() as signals:
        if master:
            print("arguments: " + " ".join(f"{k}={v}" for k, v in asdict(cfg).items()))
            print(f"training {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M parameters on {device}"
                  f"{f' x{ctx.world_size} processes' if ctx.ddp else ''}: {len(train_set)} train / {len(test_set)} "
                  f"test images, {batches_per_epoch} steps per epoch, starting at epoch {epoch} step {step}", flush=True)
        for epoch in range(epoch, cfg.epochs):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                return finish(0)
            if out_of_time:  # the time ran out in the last step of the previous epoch
                return stopped(0, time_reason)
            train_set.set_epoch(epoch)
            train_sampler.set_epoch(epoch, start=samples_done)
            sums: Dict[str, float] = {}
            counted, started = 0, time.time()
            bar = tqdm(total=batches_per_epoch, initial=math.ceil(samples_done / cfg.batch_size),
                       desc=f"epoch {epoch}", disable=not master, dynamic_ncols=True, leave=False)
            for x in train_loader:
                x = x.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                aux_optimizer.zero_grad(set_to_none=True)
                with autocast:
                    out = model(x, decoder_clamp=cfg.decoder_clamp)
                terms = criterion(out, x)
                loss = terms["loss"]
                # All ranks must agree before backward: DDP's all-reduce needs every rank, and a stop
                # request must be honoured by all of them at the same step.
                time_up = float(time.monotonic() >= deadline)
                nonfinite, stop_signum, out_of_time = all_reduce_max(
                    [float(not torch.isfinite(loss).item()), float(signals.signum or 0), time_up], ctx, device)
                skipped, aux_unscaled = bool(nonfinite), False
                if not skipped:
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                        if any(p.grad is not None for group in aux_optimizer.param_groups for p in group["params"]):
                            scaler.unscale_(aux_optimizer)  # the quantiles' (scaled) main-loss gradients
                            aux_unscaled = True
                    else:
                        loss.backward()
                    if cfg.clip_max_norm > 0:
                        grad_norm = nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.clip_max_norm)
                        # (gradients are already averaged over ranks, so every rank decides alike)
                        skipped = scaler is None and not torch.isfinite(grad_norm).item()
                if skipped:
                    skipped_steps += 1
                    optimizer.zero_grad(set_to_none=True)
                    aux_optimizer.zero_grad(set_to_none=True)
                    if master:
                        tqdm.write(f"warning: step {step}: non-finite loss or gradient, step skipped "
                                   f"({skipped_steps} so far)", file=sys.stderr)
                else:
                    if scaler is not None:
                        scaler.step(optimizer)
                    else:
                        optimizer.step()
                    aux_loss = raw_model.aux_loss()
                    aux_loss.backward()
                    if aux_unscaled:
                        scaler.step(aux_optimizer)  # skips the step if the unscaled gradients were not finite
                    else:
                        aux_optimizer.step()
                    if scaler is not None:
                        scaler.update()
                    terms["aux_loss"] = aux_loss
                step += 1
                samples_done += x.shape[0]

                if master:
                    values = {k: v.item() for k, v in terms.items()}
                    if not skipped:
                        counted += 1
                        for k, v in values.items():
                            sums[k] = sums.get(k, 0.0) + v
                    lr = optimizer.param_groups[0]["lr"]
                    bar.set_postfix({short[k]: f"{values[k]:.4g}" for k in ("loss", "bpp_loss", distortion)} | {"lr": f"{lr:.1e}"},
                                    refresh=False)
                    bar.update(1)
                    if step % cfg.log_every == 0:
                        for k, v in values.items():
                            writer.add_scalar(f"train/{k}", v, step)
                        writer.add_scalar("train/lr", lr, step)
                        writer.add_scalar("train/skipped_steps", skipped_steps, step)

                epoch_trained = samples_done >= samples_per_epoch
                # A step that ends the epoch lets the epoch's test pass and checkpoints happen first.
                steps_done = cfg.max_steps is not None and step >= cfg.max_steps
                if stop_signum or ((steps_done or out_of_time) and not epoch_trained):
                    bar.close()
                    save("step", epoch_done=False)
                    return stopped(int(stop_signum), "" if steps_done else time_reason)
                if cfg.save_every_steps and step % cfg.save_every_steps == 0 and not epoch_trained:
                    save("step", epoch_done=False)
            bar.close()

            # ---- end of epoch: test, schedule, checkpoints, one summary line
            test = evaluate(raw_model, test_loader, criterion, device, ctx, cfg.decoder_clamp)
            last_test_loss = test["loss"]
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            is_best = test["loss"] < best_loss
            best_loss = min(best_loss, test["loss"])
            drifted = [name for name, same in parameters_in_sync(raw_model, ctx, device).items() if not same]
            if drifted and master:
                print(f"warning: {len(drifted)} parameters differ between processes (e.g. {drifted[0]})", file=sys.stderr)
            train_means = {k: v / max(1, counted) for k, v in sums.items()}
            history.append({"epoch": epoch, "train": train_means, "test": {k: v for k, v in test.items() if k != "image"}})
            save("epoch", epoch_done=True)
            if master:
                for k in ("loss", "bpp", "psnr", distortion):
                    writer.add_scalar(f"test/{k}", test[k], epoch)
                writer.add_scalar("test/lr", lr, epoch)
                writer.add_image("test/original_vs_reconstruction", test["image"], epoch)
                writer.flush()
                train_part = " ".join(f"{short.get(k, k)} {train_means[k]:.4g}" for k in ("loss", "bpp_loss", distortion)
                                      if k in train_means)
                print(f"epoch {epoch}: train {train_part or '-'} | test loss {test['loss']:.4f} bpp {test['bpp']:.4f} "
                      f"{short[distortion]} {test[distortion]:.4g} psnr {test['psnr']:.2f} dB | lr {lr:.1e} | "
                      f"{time.time() - started:.0f} s | skipped {skipped_steps}{' | best' if is_best else ''}", flush=True)
            samples_done = 0
            stop_signum = all_reduce_max([float(signals.signum or 0)], ctx, device)[0]
            if stop_signum:
                return stopped(int(stop_signum))
    if master and not history:
        print(f"nothing to do: the run is already at epoch {epoch} of --epochs {cfg.epochs}")
    return finish(0)
