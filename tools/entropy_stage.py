"""Train a checkpoint's entropy model on latents of whole pictures, its transforms frozen (the entropy stage).

    python tools/entropy_stage.py runs/q3/checkpoint_latest.pth.tar --data runs/data512 -o q3_entropy.pth.tar
    python tools/entropy_stage.py icwem-small-q3 --data runs/data512 -o q3_entropy.pth.tar --steps 3000

Why: ``train.py`` on small crops leaves the entropy model fitted to tiny latents, every position at a
border; on a whole photo it predicts the latent far worse than on the same photo cut into crops
(``utils/training/entropy_stage.py``; numbers in ``benchmarks/RESULTS.md``). This stage computes the
latent of every picture in DATA/train (or DATA) once, in six channel orders, and trains the hyper-prior
and the channel-wise entropy model on random crops of those latents for the rate alone. The analysis
and synthesis transforms, the LRP networks and a variable-rate model's gains do not change, so the
decoded picture of an image moves only where μ moves the rounding grid. Ctrl-C or SIGTERM ends the stage
early and still writes the file. The file is a weights file (the input's config, arguments and λ carried
over), to evaluate, ship or fine-tune further with ``train.py --no-continue_train``; run this stage last.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import List

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import model_from_state_dict, read_checkpoint  # noqa: E402
from models.checkpoint import CARRIED_FIELDS, split_checkpoint  # noqa: E402
from models.zoo import resolve_checkpoint  # noqa: E402
from utils.cli import positive_number, run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.image_io import find_images  # noqa: E402
from utils.training.checkpoint import save_checkpoint  # noqa: E402
from utils.training.entropy_stage import (  # noqa: E402
    LATENT_STRIDE, EntropyStageConfig, picture_latents, train_entropy_model,
)
from utils.training.signals import StopSignals  # noqa: E402


def parse_args(argv: List[str] | None) -> argparse.Namespace:
    d = EntropyStageConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint or a shipped model's name")
    p.add_argument("--data", required=True, type=Path, help="training pictures: DATA/train if present, else DATA")
    p.add_argument("-o", "--output", required=True, type=Path, help="weights file to write")
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps")
    p.add_argument("-lr", "--learning-rate", type=positive_number, default=d.learning_rate, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="latent crops per step")
    p.add_argument("--crop", type=int, default=d.crop, help="side of a crop in image pixels (a multiple of 16)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the crops (and of the likelihoods' noise)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.crop < LATENT_STRIDE or args.crop % LATENT_STRIDE:
        p.error(f"--steps and --batch-size must be positive and --crop a positive multiple of {LATENT_STRIDE}")
    return args


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = EntropyStageConfig(steps=args.steps, learning_rate=args.learning_rate, batch_size=args.batch_size,
                             crop=args.crop, seed=args.seed)
    source = resolve_checkpoint(args.checkpoint)
    obj = read_checkpoint(source)
    sd, model_config = split_checkpoint(obj)
    try:
        model = model_from_state_dict(sd, model_config).float()
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    folder = args.data / "train" if (args.data / "train").is_dir() else args.data
    paths = find_images(folder)

    start = time.perf_counter()
    with tqdm(total=len(paths), desc="latents", unit="picture") as bar:
        latents = picture_latents(model, paths, bar.update)
    side = cfg.crop // LATENT_STRIDE
    kept = [y for y in latents if min(y.shape[-2:]) >= side]
    if not kept:
        raise UserError(f"no picture in {folder} is {cfg.crop} pixels or more on both sides: lower --crop")
    if len(kept) < len(latents):
        print(f"{(len(latents) - len(kept)) // 6} pictures smaller than {cfg.crop} px left out")
    print(f"{len(kept)} latents of {len(kept) // 6} pictures in {time.perf_counter() - start:.0f} s")

    def report(step: int, bpp: float) -> None:
        print(f"step {step}: {bpp:.4f} bpp on training crops ({time.perf_counter() - start:.0f} s)", flush=True)

    with StopSignals() as signals:
        steps = train_entropy_model(model, kept, cfg, report, stop=lambda: signals.signum is not None)
    stage = {**asdict(cfg), "steps": steps, "pictures": len(kept) // 6, "source": str(source)}
    # Integer tensors are the coder's tables, rebuilt whenever a model loads: the source's are kept, so the
    # file is no larger than its source (the tables built here would add 0.8 MB to a small model's file).
    state = {k: sd[k] if not v.is_floating_point() and k in sd else v for k, v in model.state_dict().items()}
    out = {"state_dict": state, **{k: obj[k] for k in CARRIED_FIELDS if k in obj},
           "entropy_stage": stage}
    save_checkpoint(out, args.output)
    print(f"{args.output}: the entropy model after {steps} steps on {stage['pictures']} pictures")
    return 0


if __name__ == "__main__":
    run_cli(main)
