"""How good is the channel-order search's proxy? The order it picks against the best order at full size.

    python tools/channel_order_study.py shipped --max-side 512

For each checkpoint and held-out photo (tools/heldout_rd.py's set) it scores the six channel orders with
the model's objective bpp + λ·255²·MSE (likelihood rate) on the photo itself and on the search's proxy
(utils/coding/channel_order.py), and prints how much worse at full size the proxy's pick is than the best
order, and how much worse the average order is: what the search gains, and what the proxy gives away.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_checkpoint  # noqa: E402
from models.refine import trained_lambda_at  # noqa: E402
from models.zoo import expand_shipped  # noqa: E402
from tools.heldout_rd import add_photo_arguments, load_photos  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.coding import channel_order  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints that record their λ, or 'shipped'")
    add_photo_arguments(p)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    photos = load_photos(args.data, args.max_side)
    print(f"{'checkpoint':<24} {'photo':<22} {'best':>5} {'proxy':>5} {'proxy pick':>10} {'mean order':>10}")
    picks, means = [], []
    for checkpoint in expand_shipped(list(args.checkpoints)):
        model = load_checkpoint(checkpoint)
        quality = model.default_quality  # None for a fixed-rate model
        lmbda = trained_lambda_at(model, quality)
        if lmbda is None:
            print(f"{checkpoint}: records no λ, skipped")
            continue
        for name, rgb in photos.items():
            full = channel_order.scores(model, rgb, lmbda, quality, max_pixels=rgb.shape[0] * rgb.shape[1])
            pick = int(np.argmin(channel_order.scores(model, rgb, lmbda, quality)))
            best = min(full)
            picks.append(full[pick] / best - 1)
            means.append(np.mean(full) / best - 1)
            print(f"{str(checkpoint)[-24:]:<24} {name[-22:]:<22} {channel_order.name(int(np.argmin(full))):>5} "
                  f"{channel_order.name(pick):>5} {100 * picks[-1]:>+9.1f}% {100 * means[-1]:>+9.1f}%")
    if picks:
        print(f"objective above the best order at full size, mean over {len(picks)}: proxy's pick "
              f"{100 * np.mean(picks):+.1f} % (worst {100 * max(picks):+.1f} %), an order at random {100 * np.mean(means):+.1f} %")
    return 0


if __name__ == "__main__":
    run_cli(main)
