"""Training ICWEM with the original's objective and schedule, resumable exactly, on one or many devices.

``train(TrainConfig(...))`` is the whole run; ``train.py`` only turns its command line into a TrainConfig.
``train`` reads top to bottom: setup (device, DDP from torchrun's environment, seeds), data, model,
optimizers, optional resume, then epochs of ``train_one_epoch`` (``train_step`` per batch), ``validate``,
a scheduler step and checkpoints.

Exact resume: the data order and crops are functions of (seed, epoch, sample index), and the checkpoint
holds the model, both optimizers, the scheduler, every rank's generator states and the position in the
epoch (``TrainState``), so a resumed run repeats the uninterrupted run's arithmetic step for step:
bit-identical on the CPU with the same thread count (the number of threads changes the order of
floating-point sums), batch size and number of processes; GPU kernels may add their own non-determinism.
``--checkpoint`` with a file that holds only weights (``{"state_dict": ...}`` or a bare state dict), or
with ``--no-continue_train``, starts a fresh run (epoch 0, new optimizers) from those weights.

Stopping: SIGINT (Ctrl-C) or SIGTERM finishes the current step, writes ``checkpoint_latest.pth.tar`` and
returns exit code 130 or 143 (128 + the signal number); a second Ctrl-C aborts at once without saving.
``--max-steps`` stops the same way with exit code 0, and so does ``--max-minutes``: the step during which
that much time has passed in the training loop (this invocation's, not the run's total) is the last.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ContextManager, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from losses import RateDistortionLoss
from models import read_checkpoint
from models.variable_rate import RateSchedule

from ..errors import UserError
from .checkpoint import copy_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, check_config
from .distributed import (
    DistributedContext,
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    destroy_process_group,
    distributed_context,
    parameters_in_sync,
)
from .setup import (
    Data,
    autocast_for,
    build_data,
    build_model,
    distribute,
    new_state,
    rate_schedule,
    resume_schedule,
    seed_everything,
    to_device,
    training_device,
    variable_rate_warm_start,
    warmup,
)
from .signals import StopSignals
from .state import TrainState
from .step import train_step

LATEST = "checkpoint_latest.pth.tar"
BEST = "checkpoint_best.pth.tar"
EPOCH_CHECKPOINT_EVERY = 5  # the original keeps "<epoch>_checkpoint.pth.tar" for every fifth epoch
SHORT = {"loss": "loss", "bpp_loss": "bpp", "mse_loss": "mse", "ms_ssim_loss": "ms-ssim"}


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


@dataclass
class Run:
    """What stays fixed while a run trains: its config, place, data, (possibly DDP-wrapped) model and logs."""

    cfg: TrainConfig
    ctx: DistributedContext
    device: torch.device
    data: Data
    model: nn.Module
    criterion: RateDistortionLoss
    autocast: ContextManager
    save_dir: Path
    writer: Optional[object] = None  # TensorBoard's SummaryWriter, on the master only
    history: List[dict] = field(default_factory=list)
    rates: Optional[RateSchedule] = None  # a variable-rate model's qualities and λs (--lambdas)

    @property
    def distortion(self) -> str:
        return "mse_loss" if self.cfg.type == "mse" else "ms_ssim_loss"


@dataclass
class Stop:
    """Why a run stops early: a signal (exit code 128 + its number) or a limit (exit code 0)."""

    signum: int = 0
    reason: str = ""


class TimeBudget:
    """--max-minutes, read at every step and agreed on by all ranks with the stop signals, so that every
    rank stops at the same step whatever its clock says."""

    def __init__(self, max_minutes: Optional[float]) -> None:
        self.deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else math.inf
        self.reason = f"--max-minutes {max_minutes:g}" if max_minutes is not None else ""
        self.ran_out = False

    def up(self) -> float:
        return float(time.monotonic() >= self.deadline)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, criterion: RateDistortionLoss, device: torch.device,
             ctx: DistributedContext, decoder_clamp: bool = False, quality: Optional[float] = None,
             lmbda: Optional[float] = None) -> Dict[str, object]:
    """Mean test loss, bpp, distortion and PSNR over the whole test split (all ranks' shares).

    PSNR is measured on the reconstruction clamped to [0, 1], as a decoder would output it; the loss terms
    use it unclamped, like training. Also returns the first test image next to its reconstruction.
    A variable-rate model is tested at ``quality`` with λ ``lmbda``.
    """
    model.eval()
    distortion = "mse_loss" if criterion.metric == "mse" else "ms_ssim_loss"
    images = 0
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, bpp, distortion, PSNR, summed over images
    image = None
    for x in loader:
        x = to_device(x, device)
        out = model(x, decoder_clamp=decoder_clamp, quality=quality)
        terms = criterion(out, x, lmbda)
        n = x.shape[0]
        x_hat = out["x_hat"].float().clamp(0, 1)
        mse = (x_hat - x).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
        images += n
        totals += torch.stack([*(terms[k].double() * n for k in ("loss", "bpp_loss", distortion)),
                               (-10 * torch.log10(mse)).sum().double()])
        if image is None:
            image = torch.cat([x[0], x_hat[0]], dim=2).cpu()
    count, loss, bpp, dist, psnr = all_reduce_sum([images, *totals.tolist()], ctx, device)  # one read
    model.train()
    return {"loss": loss / count, "bpp": bpp / count, distortion: dist / count, "psnr": psnr / count, "image": image}


def validate_rates(run: Run, model: nn.Module) -> Dict[str, object]:
    """``validate`` at every rate point of a variable-rate model, each with its λ: the means over the
    rate points (the loss that picks the best checkpoint), with each point's under ``rates``."""
    per_rate = [validate(model, run.data.test_loader, run.criterion, run.device, run.ctx, run.cfg.decoder_clamp,
                         float(k), lmbda) for k, lmbda in enumerate(run.rates.lambdas, start=1)]
    keys = [k for k in per_rate[0] if k != "image"]
    mean = {k: sum(r[k] for r in per_rate) / len(per_rate) for k in keys}
    return {**mean, "image": per_rate[len(per_rate) // 2]["image"],
            "rates": [{k: r[k] for k in keys} for r in per_rate]}


def resume(state: TrainState, checkpoint: Optional[dict], cfg: TrainConfig, ctx: DistributedContext,
           samples_per_epoch: int) -> Optional[dict]:
    """Continue a run from its checkpoint (or start from the checkpoint's weights); returns this rank's
    saved generator states, if the checkpoint has them for this number of processes."""
    warm_start = variable_rate_warm_start(cfg, checkpoint)
    continuing = checkpoint is not None and cfg.continue_train and "optimizer" in checkpoint and not warm_start
    if checkpoint is not None and not continuing and ctx.master:
        why = ("--no-continue_train" if not cfg.continue_train else "a variable-rate model from a fixed-rate one"
               if warm_start else "it holds weights only")
        print(f"fine-tuning from the weights in {cfg.checkpoint} with fresh optimizers ({why})")
    restored_rng = None
    if continuing:
        try:
            state.load_optimizers(checkpoint)
        except (KeyError, ValueError) as exc:
            raise UserError(f"{cfg.checkpoint}: its optimizer state does not fit this model ({exc}); "
                            f"use --no-continue_train to start from its weights only") from None
        scheduler = state.scheduler
        if isinstance(scheduler, MultiStepLR) and Counter(cfg.lr_epoch) != scheduler.milestones and ctx.master:
            print(f"note: learning-rate milestones now {list(cfg.lr_epoch)} (--lr_epoch), "
                  f"checkpoint had {sorted(scheduler.milestones.elements())}")
        rate = resume_schedule(scheduler, cfg)
        if rate is not None and ctx.master:
            print(f"note: learning rate now {rate:.2e} (the schedule of --epochs/--lr_epoch as given now)")
        notes = state.load_counters(checkpoint, cfg.batch_size, ctx.world_size, samples_per_epoch)
        if ctx.master:
            for note in notes:
                print(note)
        rngs = checkpoint.get("rng")
        if rngs is not None and len(rngs) == ctx.world_size:
            restored_rng = rngs[ctx.rank]
    if state.epoch < cfg.skip_epoch:
        # --skip_epoch: start later in the schedule, as if the skipped epochs had run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" is intended here
            while state.scheduler.last_epoch < cfg.skip_epoch:
                state.scheduler.step()
        state.epoch, state.samples_done = cfg.skip_epoch, 0
    return restored_rng


def save(run: Run, state: TrainState, epoch_done: bool, is_best: bool = False) -> None:
    """Write the checkpoint (every rank must call this: the ranks' generator states are gathered).

    At an epoch's end (``epoch_done``) also copy it to the best and the every-fifth-epoch files; with
    ``--keep-step-checkpoints`` every save is kept as ``step<N>_checkpoint.pth.tar`` (a hard link: no copy).
    """
    rngs = all_gather_object(rng_state(run.device), run.ctx)
    if not (run.cfg.save and run.ctx.master):
        return
    checkpoint = state.state_dict(run.cfg.as_args(), rngs, run.cfg.batch_size, run.ctx.world_size, epoch_done)
    save_checkpoint(checkpoint, run.save_dir / LATEST)
    if run.cfg.keep_step_checkpoints:
        copy_checkpoint(run.save_dir / LATEST, run.save_dir / f"step{state.step}_checkpoint.pth.tar")
    if epoch_done:
        if is_best:
            copy_checkpoint(run.save_dir / LATEST, run.save_dir / BEST)
        if state.epoch % EPOCH_CHECKPOINT_EVERY == 0:
            copy_checkpoint(run.save_dir / LATEST, run.save_dir / f"{state.epoch}_checkpoint.pth.tar")


def log_step(run: Run, state: TrainState, terms: Dict[str, torch.Tensor], bar: tqdm) -> None:
    """The progress bar advances every step; every --log-every steps the step's loss terms are read from
    the device (in one go: the only read of the loop) for the bar's postfix and TensorBoard."""
    if state.step % run.cfg.log_every == 0:
        values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
        bar.set_postfix({SHORT[k]: f"{values[k]:.4g}" for k in ("loss", "bpp_loss", run.distortion)}
                        | {"lr": f"{state.lr:.1e}"}, refresh=False)
        for k, v in values.items():
            run.writer.add_scalar(f"train/{k}", v, state.step)
        run.writer.add_scalar("train/lr", state.lr, state.step)
        run.writer.add_scalar("train/skipped_steps", state.skipped_steps, state.step)
    bar.update(1)


def train_one_epoch(run: Run, state: TrainState, signals: StopSignals, budget: TimeBudget
                    ) -> Tuple[Dict[str, float], Optional[Stop]]:
    """Train from ``state.samples_done`` to the end of ``state.epoch``, saving every --save-every-steps.

    Returns the mean loss terms of the steps taken and, if the run must stop before the epoch's end
    (signal, --max-steps, --max-minutes), why. A limit reached at the epoch's last step lets the epoch's
    test pass and checkpoints happen first.
    """
    cfg, master = run.cfg, run.ctx.master
    run.data.train_set.set_epoch(state.epoch)
    run.data.train_sampler.set_epoch(state.epoch, start=state.samples_done)
    sums: Optional[torch.Tensor] = None  # the loss terms of the steps taken, summed on the device
    names: List[str] = []
    counted = 0
    bar = tqdm(total=math.ceil(run.data.samples_per_epoch / cfg.batch_size),
               initial=math.ceil(state.samples_done / cfg.batch_size),
               desc=f"epoch {state.epoch}", disable=not master, dynamic_ncols=True, leave=False)
    for x in run.data.train_loader:
        x = to_device(x, run.device)
        # A variable-rate model: this step's quality and its λ, drawn from (seed, step) (models/variable_rate.py).
        quality = run.rates.quality(state.step) if run.rates is not None else None
        lmbda = run.rates.lmbda(quality) if run.rates is not None else None
        with warmup(state.optimizer, state.step, cfg.warmup_steps):
            result = train_step(run.model, x, run.criterion, state, clip_max_norm=cfg.clip_max_norm,
                                decoder_clamp=cfg.decoder_clamp, autocast=run.autocast,
                                agree=lambda flags: all_reduce_max(flags, run.ctx, run.device),
                                flags=lambda: [float(signals.signum or 0), budget.up()], quality=quality,
                                lmbda=lmbda)
        if quality is not None:  # logged with the loss terms: the loss of each step is that of its own λ
            result.terms.update(quality=torch.tensor(quality, device=x.device), lmbda=torch.tensor(lmbda, device=x.device))
        stop_signum, out_of_time = result.flags
        budget.ran_out = bool(out_of_time)
        if result.skipped:
            state.skipped_steps += 1
            if master:
                tqdm.write(f"warning: step {state.step}: non-finite loss or gradient, step skipped "
                           f"({state.skipped_steps} so far)", file=sys.stderr)
        state.step += 1
        state.samples_done += x.shape[0]
        if master:
            if not result.skipped:  # summed in float64, as Python floats were
                counted += 1
                names = list(result.terms)
                terms = torch.stack([result.terms[k].detach().double() for k in names])
                sums = terms if sums is None else sums + terms
            log_step(run, state, result.terms, bar)

        epoch_trained = state.samples_done >= run.data.samples_per_epoch
        steps_done = cfg.max_steps is not None and state.step >= cfg.max_steps
        if stop_signum or ((steps_done or out_of_time) and not epoch_trained):
            bar.close()
            return {}, Stop(int(stop_signum), "" if steps_done else budget.reason)
        if cfg.save_every_steps and state.step % cfg.save_every_steps == 0 and not epoch_trained:
            save(run, state, epoch_done=False)
    bar.close()
    return ({} if sums is None else dict(zip(names, (sums / counted).tolist()))), None


def end_epoch(run: Run, state: TrainState, train_means: Dict[str, float], started: float) -> None:
    """Test, schedule, checkpoints and one summary line (TensorBoard too) at the end of an epoch."""
    if run.rates is None:
        test = validate(state.model, run.data.test_loader, run.criterion, run.device, run.ctx, run.cfg.decoder_clamp)
    else:
        test = validate_rates(run, state.model)
    lr = state.lr
    state.scheduler.step()
    is_best = state.record_test_loss(test["loss"])
    drifted = [name for name, same in parameters_in_sync(state.model, run.ctx, run.device).items() if not same]
    if drifted and run.ctx.master:
        print(f"warning: {len(drifted)} parameters differ between processes (e.g. {drifted[0]})", file=sys.stderr)
    run.history.append({"epoch": state.epoch, "train": train_means,
                        "test": {k: v for k, v in test.items() if k != "image"}})
    save(run, state, epoch_done=True, is_best=is_best)
    if not run.ctx.master:
        return
    d = run.distortion
    for k in ("loss", "bpp", "psnr", d):
        run.writer.add_scalar(f"test/{k}", test[k], state.epoch)
    for k, point in enumerate(test.get("rates", []), start=1):
        for key in ("loss", "bpp", "psnr"):
            run.writer.add_scalar(f"test/{key}_q{k}", point[key], state.epoch)
    run.writer.add_scalar("test/lr", lr, state.epoch)
    run.writer.add_image("test/original_vs_reconstruction", test["image"], state.epoch)
    run.writer.flush()
    train_part = " ".join(f"{SHORT.get(k, k)} {train_means[k]:.4g}" for k in ("loss", "bpp_loss", d) if k in train_means)
    print(f"epoch {state.epoch}: train {train_part or '-'} | test loss {test['loss']:.4f} bpp {test['bpp']:.4f} "
          f"{SHORT[d]} {test[d]:.4g} psnr {test['psnr']:.2f} dB | lr {lr:.1e} | "
          f"{time.time() - started:.0f} s | skipped {state.skipped_steps}{' | best' if is_best else ''}", flush=True)
    if "rates" in test:
        print("  per rate point: " + " | ".join(f"q{k} bpp {p['bpp']:.4f} psnr {p['psnr']:.2f} dB"
                                                for k, p in enumerate(test["rates"], start=1)), flush=True)


def finish(run: Run, state: TrainState, stop: Optional[Stop] = None) -> TrainResult:
    """Close the logs and the process group; report a stop (signal, --max-steps or --max-minutes) first.

    The exit code is 0, or 128 + the signal's number after a signal.
    """
    exit_code = 128 + stop.signum if stop is not None and stop.signum else 0
    if stop is not None and run.ctx.master:
        reason = signal.Signals(stop.signum).name if stop.signum else stop.reason or f"--max-steps {run.cfg.max_steps}"
        resume_hint = f"; resume with --checkpoint {run.save_dir / LATEST}" if run.cfg.save else ""
        print(f"stopped at epoch {state.epoch} step {state.step} ({reason}){resume_hint}", flush=True)
    if run.writer is not None:
        run.writer.close()
    destroy_process_group(run.ctx)
    return TrainResult(exit_code, state.model, state.optimizer, state.aux_optimizer, state.step,
                       state.skipped_steps, run.history)


def open_writer(save_dir: Path, ctx: DistributedContext):
    """TensorBoard's writer in SAVE_PATH/<lambda>/tensorboard, on the master only (None elsewhere)."""
    if not ctx.master:
        return None
    from torch.utils.tensorboard import SummaryWriter  # slow import; only the master logs

    save_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(save_dir / "tensorboard"))


def announce(run: Run, state: TrainState) -> None:
    """The run's arguments and shape, once, from the master."""
    if not run.ctx.master:
        return
    ctx, data = run.ctx, run.data
    print("arguments: " + " ".join(f"{k}={v}" for k, v in asdict(run.cfg).items()))
    print(f"training {sum(p.numel() for p in state.model.parameters()) / 1e6:.2f}M parameters on {run.device}"
          f"{f' x{ctx.world_size} processes' if ctx.ddp else ''}: {len(data.train_set)} train / {len(data.test_set)} "
          f"test images, {math.ceil(data.samples_per_epoch / run.cfg.batch_size)} steps per epoch, "
          f"starting at epoch {state.epoch} step {state.step}", flush=True)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring for what is saved and when."""
    # ---- setup: checks, processes, device, seeds
    check_config(cfg)
    ctx = distributed_context()
    device = training_device(cfg, ctx)
    seed_everything(cfg.seed)
    data = build_data(cfg, ctx, device)

    # ---- model, loss, optimizers, schedule; then where to start: fresh, fine-tuning, or continuing
    checkpoint = read_checkpoint(cfg.checkpoint, map_location="cpu") if cfg.checkpoint else None
    model, model_config = build_model(cfg, checkpoint, ctx)
    state = new_state(cfg, model.to(device), model_config)
    criterion = RateDistortionLoss(cfg.lmbda, cfg.type)
    restored_rng = resume(state, checkpoint, cfg, ctx, data.samples_per_epoch)
    del checkpoint

    # ---- distributed: one process per device; every rank its own quantisation-noise stream
    # (rank 0 keeps the single-process one), or the one the checkpoint saved for it
    wrapped = distribute(state.model, criterion, cfg, ctx, device)
    torch.manual_seed(cfg.seed + ctx.rank)
    if restored_rng is not None:
        set_rng_state(restored_rng, device)
    rates = rate_schedule(cfg)
    # The original's layout: SAVE_PATH/<lambda>/; a variable-rate model's: SAVE_PATH/<lowest λ>-<highest λ>/
    save_dir = Path(cfg.save_path) / (str(cfg.lmbda) if rates is None else f"{rates.lambdas[0]}-{rates.lambdas[-1]}")
    run = Run(cfg, ctx, device, data, wrapped, criterion, autocast_for(cfg, device), save_dir, open_writer(save_dir, ctx),
              rates=rates)

    # ---- epochs: train, test, schedule, checkpoints
    budget = TimeBudget(cfg.max_minutes)
    start_epoch = state.epoch
    wrapped.train()
    with StopSignals() as signals:
        announce(run, state)
        for epoch in range(start_epoch, cfg.epochs):
            state.epoch = epoch
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                return finish(run, state)
            if budget.ran_out:  # the time ran out in the last step of the previous epoch
                return finish(run, state, Stop(0, budget.reason))
            started = time.time()
            train_means, stop = train_one_epoch(run, state, signals, budget)
            if stop is not None:
                save(run, state, epoch_done=False)
                return finish(run, state, stop)
            end_epoch(run, state, train_means, started)
            state.samples_done = 0
            stop_signum = all_reduce_max([float(signals.signum or 0)], ctx, device)[0]
            if stop_signum:
                return finish(run, state, Stop(int(stop_signum)))
    if ctx.master and not run.history:
        print(f"nothing to do: the run is already at epoch {state.epoch} of --epochs {cfg.epochs}")
    return finish(run, state)

