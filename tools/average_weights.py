"""Average the weights of several checkpoints of one run (a tail average, as in SWA) into one weights file.

    python tools/average_weights.py RUN/30_checkpoint.pth.tar RUN/35_checkpoint.pth.tar \
        RUN/checkpoint_latest.pth.tar -o averaged.pth.tar
    python tools/average_weights.py RUN/step*_checkpoint.pth.tar --last 6 -o averaged.pth.tar

Why: a held-out objective that jumps between a run's saved checkpoints may be SGD noise around one
minimum, which an average removes, or a drift along the rate-distortion curve, which it does not. Averaging
the last checkpoints and coding the held-out set (``tools/heldout_rd.py``) tells which. Floating-point
tensors are averaged in float64; integer buffers (the entropy coder's tables, rebuilt on loading anyway)
and the model config, arguments and λ come from the last file. The result holds weights only: train from
it with ``--no-continue_train``, evaluate it like any checkpoint. ``--last K`` keeps the K files of the highest
training step (``train.py --keep-step-checkpoints`` keeps every save of a run as ``step<N>_checkpoint.pth.tar``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import read_checkpoint  # noqa: E402
from models.checkpoint import CARRIED_FIELDS, split_checkpoint  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.training.checkpoint import save_checkpoint  # noqa: E402


def average_state_dicts(state_dicts: Sequence[Dict[str, Tensor]], names: Sequence[str]) -> Dict[str, Tensor]:
    """The element-wise mean of the floating-point tensors, the last state dict's other tensors."""
    last = state_dicts[-1]
    for sd, name in zip(state_dicts, names):
        if set(sd) != set(last):
            raise UserError(f"{name} has other keys than {names[-1]}: not checkpoints of one model")
        for key, value in last.items():
            if value.is_floating_point() and sd[key].shape != value.shape:
                raise UserError(f"{name}: {key} is {tuple(sd[key].shape)}, {names[-1]} has {tuple(value.shape)}")
    return {key: (torch.stack([sd[key].double() for sd in state_dicts]).mean(0).to(value.dtype)
                  if value.is_floating_point() else value.clone())
            for key, value in last.items()}


def last_by_step(paths: Sequence[str], k: int) -> List[str]:
    """The ``k`` paths whose checkpoints record the highest ``step``, in training order (read one at a time)."""
    if k < 2:
        raise UserError(f"--last must be at least 2, got {k}")
    steps = {}
    for path in paths:
        step = read_checkpoint(path).get("step")
        if not isinstance(step, int):
            raise UserError(f"{path} records no training step: --last needs train.py's checkpoints")
        steps[path] = step
    return sorted(paths, key=steps.__getitem__)[-k:]


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints of one model, the last one's config is kept")
    p.add_argument("-o", "--output", required=True, type=Path, help="weights file to write")
    p.add_argument("--last", type=int, metavar="K", help="average only the K checkpoints of the highest training step")
    args = p.parse_args(argv)
    paths = args.checkpoints if args.last is None else last_by_step(args.checkpoints, args.last)
    if len(paths) < 2:
        raise UserError("give at least two checkpoints to average")
    objects = [read_checkpoint(path) for path in paths]
    state_dicts = [split_checkpoint(obj)[0] for obj in objects]
    averaged = average_state_dicts(state_dicts, paths)
    out = {"state_dict": averaged, **{k: objects[-1][k] for k in CARRIED_FIELDS if k in objects[-1]}}
    save_checkpoint(out, args.output)
    steps = [obj.get("step") for obj in objects]
    at = f" (steps {', '.join(map(str, steps))})" if all(isinstance(step, int) for step in steps) else ""
    print(f"{args.output}: the mean of {len(objects)} checkpoints' weights{at}")
    return 0


if __name__ == "__main__":
    run_cli(main)
