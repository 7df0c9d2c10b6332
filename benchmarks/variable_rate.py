"""Variable rate against fixed-rate models at equal training: which gain (per channel or scalar), and at what cost.

    OMP_NUM_THREADS=1 python benchmarks/variable_rate.py                   # S = 20 steps per rate point, ~5 CPU-min
    OMP_NUM_THREADS=1 python benchmarks/variable_rate.py --steps 300         # the budget the RD criterion needs

From one fixed-rate warm start (default: the shipped icwem-small-q3, λ 0.004) it trains, with the same
data stream, optimiser and step (``utils.training.step.train_step``):

* K fixed-rate fine-tunes, one per λ_k, of S steps each;
* one variable-rate model per gain kind (``channel``, ``scalar``) of K·S steps, each step at a quality
  drawn uniformly from [1, K] with λ log-linear between the rate points (``RateSchedule``), its gains
  starting at sqrt(λ_k / λ_warm).

Then it codes the held-out photos (centre crops) into real .icwem files and decodes them: each fixed-rate
model once, each variable-rate model at Q = 1 … K, and the per-channel one also at every half step. It
prints bpp and PSNR per rate point (means over the photos), the BD-rate of each variable-rate curve
against the fixed-rate set's (negative: fewer bits at equal PSNR), and whether the half-step sweep has
strictly rising rate and PSNR that never falls by more than 0.1 dB. --json writes all of it. Every arm
starts from the same generator state. Results, and why 20 steps per point decide little:
benchmarks/RESULTS.md ("Variable rate against fixed-rate models").
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import ImageFolder  # noqa: E402
from losses import RateDistortionLoss, configure_optimizers  # noqa: E402
from models import load_checkpoint, read_checkpoint, split_checkpoint  # noqa: E402
from models.checkpoint import trained_lambda, variable_rate_from_fixed  # noqa: E402
from models.variable_rate import RateSchedule  # noqa: E402
from utils.coding.codec import decode_bitstream, encode_image  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.evaluation.bd import bd_rate  # noqa: E402
from utils.image_io import find_images, read_image, to_tensor  # noqa: E402
from utils.metrics import psnr  # noqa: E402
from utils.training.state import TrainState  # noqa: E402
from utils.training.step import train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def batches(data: Path, patch: int, batch: int, steps: int, seed: int):
    """The same stream of random crops for every arm: ``steps`` batches of ``batch`` crops."""
    dataset = ImageFolder(data, "train", (patch, patch), random_crop=True, seed=seed, verbose=False, augment=True,
                          colour_augment=True)
    order = np.random.default_rng(seed).integers(0, len(dataset), size=steps * batch)
    for s in range(steps):
        dataset.set_epoch(s)
        yield torch.stack([dataset[int(i)] for i in order[s * batch:(s + 1) * batch]])


def fine_tune(model, data, args, steps, lmbda=None, rates=None):
    """``steps`` steps of train_step at λ ``lmbda`` (fixed rate) or at drawn qualities (``rates``). Every
    arm starts from the same generator state, so arms differ by their rate mechanism and λ only, not by
    their quantisation noise."""
    torch.manual_seed(args.seed)
    model.train()
    optimizer, aux_optimizer = configure_optimizers(model, args.lr, 1e-3)
    state = TrainState(model=model, model_config=model.config, optimizer=optimizer, aux_optimizer=aux_optimizer,
                       scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0),
                       scaler=torch.amp.GradScaler("cpu", enabled=False))
    criterion = RateDistortionLoss(lmbda or 1.0)
    for step, x in enumerate(batches(data, args.patch, args.batch, steps, args.seed)):
        quality = rates.quality(step) if rates else None
        train_step(model, x, criterion, state, decoder_clamp=True, quality=quality,
                   lmbda=rates.lmbda(quality) if rates else None)
    model.eval()
    model.update(force=True)
    return model


def code(model, photos, quality=None):
    """Mean bpp and PSNR over the photos, from real files."""
    bpps, psnrs = [], []
    for rgb in photos:
        bs, stats = encode_image(model, rgb, quality=quality)
        decoded, _ = decode_bitstream(model, bs)
        bpps.append(stats["bpp"])
        psnrs.append(psnr(to_tensor(rgb), to_tensor(decoded)))
    return float(np.mean(bpps)), float(np.mean(psnrs))


def centre_crop(rgb, side):
    h, w = rgb.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(rgb[top:top + side, left:left + side])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warm-start", default="icwem-small-q3", help="fixed-rate checkpoint every arm starts from")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.001, 0.002, 0.004, 0.008])
    p.add_argument("--steps", type=int, default=20, help="S: steps per fixed-rate model (variable rate: K·S)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", type=Path, default=REPO / "runs" / "data", help="training folder (DATA/train)")
    p.add_argument("--heldout", type=Path, default=REPO / "runs" / "data" / "heldout")
    p.add_argument("--crop", type=int, default=192, help="held-out centre crops of this side")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.process_time()
    K = len(args.lambdas)
    rates = RateSchedule(args.lambdas, args.seed)
    photos = [centre_crop(read_image(path)[0], args.crop) for path in find_images(args.heldout)]
    warm_obj = read_checkpoint(args.warm_start)
    warm_sd, warm_cfg = split_checkpoint(warm_obj)
    warm_lambda = trained_lambda(warm_obj) or rates.reference_lambda()
    warm = load_checkpoint(args.warm_start)

    curves = {}
    start = code(warm, photos)
    print(f"warm start, untrained: {start[0]:.4f} bpp {start[1]:.2f} dB", flush=True)
    fixed = []
    for lmbda in args.lambdas:
        model = fine_tune(copy.deepcopy(warm), args.data, args, args.steps, lmbda=lmbda)
        fixed.append(code(model, photos))
        print(f"fixed λ {lmbda:g}: {fixed[-1][0]:.4f} bpp {fixed[-1][1]:.2f} dB", flush=True)
    curves["fixed-rate"] = fixed
    sweep = {}
    for kind in ("channel", "scalar"):
        cfg = dict(warm.config, rate_points=K, rate_gain=kind)
        model = variable_rate_from_fixed(warm_sd, cfg, args.lambdas, warm_lambda)
        model = fine_tune(model, args.data, args, K * args.steps, rates=rates)
        curves[f"variable-{kind}"] = [code(model, photos, float(q)) for q in range(1, K + 1)]
        print(f"variable ({kind}): " + ", ".join(f"{b:.4f} bpp {d:.2f} dB" for b, d in curves[f"variable-{kind}"]),
              flush=True)
        if kind == "channel":
            for q in np.arange(1, K + 0.01, 0.5):
                sweep[float(q)] = code(model, photos, float(q))

    print(f"\nwarm start {args.warm_start} (λ {warm_lambda:g}); λs {args.lambdas}; S = {args.steps} steps of "
          f"{args.batch}×{args.patch}² per fixed-rate model, K·S = {K * args.steps} per variable-rate model; "
          f"{len(photos)} held-out photos, {args.crop}² centre crops, real files")
    print(f"warm start itself (no step): {start[0]:.4f} bpp / {start[1]:.2f} dB")
    print("| curve | " + " | ".join(f"point {k} bpp / PSNR" for k in range(1, K + 1)) + " | BD-rate vs fixed-rate |")
    print("|---|" + "---|" * (K + 1))
    results = {}
    for name, points in curves.items():
        rate, dist = [b for b, _ in points], [d for _, d in points]
        try:
            bd = 0.0 if name == "fixed-rate" else bd_rate(*zip(*fixed), rate, dist)
        except UserError as exc:  # e.g. curves that do not overlap
            bd = float("nan")
            print(f"{name}: no BD-rate ({exc})")
        results[name] = {"points": points, "bd_rate_pct": bd}
        print(f"| {name} | " + " | ".join(f"{b:.4f} / {d:.2f}" for b, d in points) + f" | {bd:+.2f} % |")
    qs = sorted(sweep)
    rising = all(sweep[b][0] > sweep[a][0] for a, b in zip(qs, qs[1:]))
    worst_drop = max(sweep[a][1] - sweep[b][1] for a, b in zip(qs, qs[1:]))
    print("\nper-channel model, Q in steps of 0.5: " + ", ".join(f"Q {q:g}: {sweep[q][0]:.4f} bpp {sweep[q][1]:.2f} dB"
                                                            for q in qs))
    print(f"rate strictly rising: {rising}; largest PSNR fall between neighbours: {max(worst_drop, 0):.3f} dB")
    print(f"CPU time of this process: {(time.process_time() - started) / 60:.1f} min")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "warm_start": start,
                                         "curves": results,
                                         "sweep": {str(q): sweep[q] for q in qs}, "rate_rising": rising,
                                         "largest_psnr_fall_db": worst_drop}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
