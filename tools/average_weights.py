"""Average the weights of several checkpoints of one run (a tail average, as in SWA) into one weights file.

    python tools/average_weights.py RUN/30_checkpoint.pth.tar RUN/35_checkpoint.pth.tar \
        RUN/checkpoint_latest.pth.tar -o averaged.pth.tar

Why: a held-out objective that jumps between a run's saved checkpoints may be SGD noise around one
minimum, which an average removes, or a drift along the rate-distortion curve, which it does not. Averaging
the last checkpoints and coding the held-out set (``tools/heldout_rd.py``) tells which. Floating-point
tensors are averaged in float64; integer buffers (the entropy coder's tables, rebuilt on loading anyway)
and the model config, arguments and λ come from the last file. The result holds weights only: train from
it with ``--no-continue_train``, evaluate it like any checkpoint.
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


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints of one model, the last one's config is kept")
    p.add_argument("-o", "--output", required=True, type=Path, help="weights file to write")
    args = p.parse_args(argv)
    if len(args.checkpoints) < 2:
        raise UserError("give at least two checkpoints to average")
    objects = [read_checkpoint(path) for path in args.checkpoints]
    state_dicts = [split_checkpoint(obj)[0] for obj in objects]
    averaged = average_state_dicts(state_dicts, args.checkpoints)
    out = {"state_dict": averaged, **{k: objects[-1][k] for k in CARRIED_FIELDS if k in objects[-1]}}
    save_checkpoint(out, args.output)
    print(f"{args.output}: the mean of {len(objects)} checkpoints' weights")
    return 0


if __name__ == "__main__":
    run_cli(main)
