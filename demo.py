"""Show the shipped ICWEM models against JPEG, WebP and AVIF on photos they never saw, then train a little.

    python demo.py                      # about 4 minutes on 2 CPU cores
    python demo.py --minutes 10         # a longer training step (fine-tuning the middle shipped model)

The held-out photos: scikit-image's chelsea and coffee, and two wallpaper photos that tools/training_data.py
keeps out of training (Debian's plasma-workspace-wallpapers, fetched with apt-get once into runs/debs;
without apt-get or --no-wallpapers, the scikit-image photos alone). The models are those in models/weights/.
Writes everything under --out (default demo_output/, which a new run replaces) and ends with a table,
BD-rates against JPEG, an RD plot, a visual comparison sheet and the list of files written.
Exit codes: 0 done, 1 user error (or a failed step), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from tools.demo_steps import DEFAULT_TEST_PHOTOS, PHOTOS, DemoConfig, run_demo
from utils.cli import run_cli


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = DemoConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", dest="out_dir", type=Path, default=defaults.out_dir, help="folder for everything the demo writes")
    p.add_argument("--minutes", type=float, default=defaults.minutes, help="training step: time budget")
    p.add_argument("--steps", type=int, default=None, help="training step: this many steps instead of --minutes")
    p.add_argument("--test-photos", nargs="+", choices=PHOTOS, default=list(DEFAULT_TEST_PHOTOS), metavar="PHOTO",
                   help=f"photos held out from training and coded, from: {', '.join(PHOTOS)}")
    p.add_argument("--max-side", type=int, default=None, help="shrink every photo to this longer side (quick runs)")
    p.add_argument("--cuda", action="store_true", help="train and code on CUDA")
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="CPU threads of each script (more only pay off on cores nothing else uses)")
    p.add_argument("--no-wallpapers", dest="wallpapers", action="store_false",
                   help="judge on scikit-image's held-out photos only (the wallpaper photos need apt-get)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="training seed")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the scripts' output
    return run_demo(DemoConfig(**vars(args)))


if __name__ == "__main__":
    run_cli(main)
