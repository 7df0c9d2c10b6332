"""Train a small ICWEM from scratch on the CPU, code photos it never saw into real files, compare with JPEG and WebP.

    python demo.py                         # about 6 minutes on 2 CPU cores: 5 of training, the rest coding
    python demo.py --minutes 30            # train longer (the model improves for hours)
    python demo.py --resume --minutes 10   # keep demo_output/ and train 10 more minutes from its checkpoint
    python demo.py --preset icwem --cuda --minutes 60 --batch-size 8 --patch-size 256 256

Needs no download: the data are the photographs shipped with scikit-image. Writes everything under --out
(default demo_output/, which a new run replaces) and ends with a table and the list of files written.
Exit codes: 0 done, 1 user error (or a failed step), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)  # from CompressAI

from models import PRESETS  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.demo import DEFAULT_TEST_PHOTOS, PHOTOS, DemoConfig, run_demo  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = DemoConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", dest="out_dir", type=Path, default=defaults.out_dir, help="folder for everything the demo writes")
    p.add_argument("--minutes", type=float, default=defaults.minutes, help="training time budget")
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead of --minutes")
    p.add_argument("--preset", choices=list(PRESETS), default=defaults.preset, help="model configuration")
    p.add_argument("--lambda", dest="lmbda", type=float, default=defaults.lmbda,
                   help="rate-distortion trade-off λ (loss = λ·255²·MSE + bpp; larger: more bits, higher quality)")
    p.add_argument("-lr", "--learning-rate", type=float, default=defaults.learning_rate, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="training batch size")
    p.add_argument("--patch-size", type=int, nargs=2, default=defaults.patch_size, metavar=("H", "W"),
                   help="training crop size, multiples of 64")
    p.add_argument("--test-photos", nargs="+", choices=PHOTOS, default=list(DEFAULT_TEST_PHOTOS), metavar="PHOTO",
                   help=f"photos held out from training and coded, from: {', '.join(PHOTOS)}")
    p.add_argument("--max-side", type=int, default=None, help="shrink every photo to this longer side (quick runs)")
    p.add_argument("--cuda", action="store_true", help="train and code on CUDA")
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="CPU threads of each script (more only pay off on cores nothing else uses)")
    p.add_argument("--resume", action="store_true",
                   help="keep --out and continue training from its checkpoint (the budget is added)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="training seed")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the scripts' output
    return run_demo(DemoConfig(**vars(args)))


if __name__ == "__main__":
    run_cli(main)
