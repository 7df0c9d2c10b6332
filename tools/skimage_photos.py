"""Write the photographs shipped with scikit-image into a dataset folder (DATA/train, DATA/test) for train.py.

    python tools/skimage_photos.py --out data/skimage              # train: all but the held-out photos

The held-out photos (chelsea and coffee, as in the demo) are never written to train/; test/ gets the same
training photos (train.py picks its best checkpoint on their centre crops), so the held-out photos stay
unseen by training and by checkpoint selection alike. Nothing is downloaded: the photos ship with
scikit-image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import run_cli  # noqa: E402
from tools.demo_steps import DEFAULT_TEST_PHOTOS, write_training_photos  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="dataset folder to create (train/ and test/ inside)")
    p.add_argument("--held-out", nargs="*", default=list(DEFAULT_TEST_PHOTOS), help="photos never written to train/")
    args = p.parse_args(argv)
    out = Path(args.out)
    names = write_training_photos(out, args.held_out, max_side=None)
    print(f"{len(names)} photos in {out / 'train'} (held out: {', '.join(args.held_out)})")
    return 0


if __name__ == "__main__":
    run_cli(main)
