"""Evaluate ICWEM checkpoints on a folder of images: one rate-distortion point per checkpoint.

    python eval.py --checkpoint CK --data DIR [--cuda]                      # likelihood estimate
    python eval.py --checkpoint CK --data DIR --real                        # real .icwem bitstreams
    python eval.py --checkpoint q1.pth.tar q2.pth.tar ... --data DIR --real --output icwem.json
    python eval.py --checkpoint vr.pth.tar --quality 1 1.5 2 2.5 3 3.5 4 4.5 5 --data DIR --real --output vr.json

For every image under DIR (recursive): PSNR, MS-SSIM (linear and dB), bpp and encode/decode seconds,
averaged over the images. Without --real, bpp is estimated from the forward pass's likelihoods; with
--real it is the size of the real .icwem file, header included, and the estimate and the overhead are
shown beside it. --output writes the points as CompressAI eval_model JSON. --tile N: rows per band of
the streamed transforms (default: bands of about 0.75 megapixels; 0: whole images). --real --refine N
refines each image's latents for N iterations before coding (docs/refinement.md), for RD curves of
refined files. A variable-rate checkpoint (models/variable_rate.py) gives one point per --quality
(default: its rate points 1 … K), so one checkpoint sweeps a whole RD curve. Exit codes: 0 done, 1 user error (missing data, no images, unreadable checkpoint, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from models.zoo import expand_shipped
from utils.cli import add_max_pixels_argument, add_refine_arguments, add_tile_argument, positive_number, run_cli
from utils.coding.bitstream import DEFAULT_MAX_PIXELS
from models.refine import RefineOptions
from utils.device import select_device
from utils.evaluation.measure import RATE_ESTIMATE, RATE_REAL, evaluate_checkpoints, format_table, rd_results
from utils.evaluation.results import write_results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint(s) or shipped model names (icwem-small-q3; 'shipped' = all); each gives one RD point")
    p.add_argument("--data", required=True, help="folder of images (searched recursively) or one image")
    p.add_argument("--cuda", action="store_true", help="run on CUDA (the CPU, with a warning, if there is none)")
    p.add_argument("--real", action="store_true", help="code real bitstreams instead of estimating the rate")
    p.add_argument("--output", type=Path, help="write the RD points to this JSON file (CompressAI eval_model layout)")
    p.add_argument("--name", default="ICWEM", help="curve name in the JSON file")
    add_tile_argument(p)
    add_max_pixels_argument(p, DEFAULT_MAX_PIXELS)
    p.add_argument("--quality", type=positive_number("quality"), nargs="+", default=None, metavar="Q",
                   help="qualities to sweep a variable-rate checkpoint over, each in [1, K] (default: 1, 2, ..., K)")
    add_refine_arguments(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = select_device(args.cuda)
    args.checkpoint = expand_shipped(args.checkpoint)
    refine = RefineOptions(args.refine, args.refine_lambda, args.refine_minutes, progress=True)
    labelled = evaluate_checkpoints(args.checkpoint, args.data, args.real, device, tile=args.tile,
                                    max_pixels=args.max_pixels, refine=refine, qualities=args.quality)
    points = [point for _, point in labelled]

    rate = RATE_REAL if args.real else RATE_ESTIMATE
    print(f"{args.data} on {device}")
    print(f"rate: {rate}")
    if args.refine:
        print(f"latents refined for {args.refine} iterations per image before coding (encode times include it)")
    print("every column is a mean over the images; times in seconds per image")
    print("\n".join(format_table("checkpoint", labelled)))
    if args.output is not None:
        description = f"{rate}; images: {args.data}; points: {', '.join(label for label, _ in labelled)}"
        write_results(args.output, args.name, description, rd_results(points))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
