"""Measure what each way of padding images to a multiple of 64 costs in real bytes, with one checkpoint.

    python tools/padding_study.py --checkpoint demo_output/train/0.01/checkpoint_latest.pth.tar
    python tools/padding_study.py --checkpoint CK /data/kodak --json padding.json

Without images, uses crops of scikit-image's photographs whose sides are not multiples of 64. Prints the
bytes and PSNR of every image with every variant (zeros centred, the original's choice; zeros, replicate
and reflect at the bottom/right; replicate centred), the totals, and the cheapest variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)  # from CompressAI

from models import load_checkpoint  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.image_io import find_images, read_image  # noqa: E402
from utils.padding_study import default_images, format_report, study, totals  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="ICWEM checkpoint")
    parser.add_argument("images", nargs="*", type=Path,
                        help="images or folders (default: crops of scikit-image's photos, sides not multiples of 64)")
    parser.add_argument("--json", type=Path, help="also write every measurement and the totals to this file")
    args = parser.parse_args(argv)

    if args.images:
        images = []
        for path in (p for root in args.images for p in find_images(root)):
            rgb, notices = read_image(path)
            for notice in notices:
                print(f"{path}: {notice}", file=sys.stderr)
            images.append((f"{path.name} {rgb.shape[0]}x{rgb.shape[1]}", rgb))
    else:
        images = default_images()
    model = load_checkpoint(args.checkpoint)
    print(f"{len(images)} images, {args.checkpoint}; bytes: model.compress strings (no file header), "
          f"PSNR of the cropped 8-bit reconstruction")
    measurements = study(model, images, log=lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(format_report(measurements)))
    if args.json is not None:
        document = {"checkpoint": str(args.checkpoint), "totals": totals(measurements),
                    "measurements": [dataclasses.asdict(m) for m in measurements]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
