"""Code every image of a folder with one checkpoint and keep the files: bitstreams, decodings, a table.

    python test.py --checkpoint CK --data DIR --real --save-dir OUT [--cuda]
    python test.py --checkpoint VR --quality 1 2 3 4 5 --data DIR --real --save-dir OUT   # a variable-rate one

Per image (named after its path under DIR, folders joined by "__"): OUT/<name>.icwem, the bitstream
file, and OUT/<name>.png, the image decoded from that file after reading it back. OUT/results.csv and
OUT/results.json hold one row per image (name, H, W, bytes, bpp, estimated bpp, overhead %, PSNR,
MS-SSIM, MS-SSIM dB, encode s, decode s); the rows and their mean are printed.

Without --real nothing is entropy-coded: bpp is the likelihood estimate of the forward pass, the table
has no bytes, estimate or overhead columns, and no .icwem or .png file is written (they need --real).
Without --save-dir only the table is printed. Large images are coded in row bands of about 0.75
megapixels, in memory that grows with the width only; --tile N sets the rows per band, --tile 0 codes
each image whole (same bitstreams either way). --real --refine N refines each image's latents for N
iterations before coding (docs/refinement.md). A variable-rate checkpoint (models/variable_rate.py) codes
at each --quality (default: the middle of its range): with several, each quality's files and tables go
to OUT/q<Q>/, a table of the means per quality follows, and OUT/rd.json holds those means as one RD curve
(eval.py --output's layout, plus the qualities). Exit codes: 0 done, 1 user error.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from pathlib import Path

from utils.cli import add_max_pixels_argument, add_refine_arguments, add_tile_argument, positive_number, run_cli
from utils.coding.bitstream import DEFAULT_MAX_PIXELS
from models.refine import RefineOptions
from utils.device import select_device
from utils.evaluation.measure import RATE_ESTIMATE, RATE_REAL, code_images, format_table, load_model, rd_results
from utils.evaluation.results import write_results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint to code with")
    p.add_argument("--data", required=True, help="folder of images (searched recursively) or one image")
    p.add_argument("--cuda", action="store_true", help="run on CUDA (the CPU, with a warning, if there is none)")
    p.add_argument("--real", action="store_true", help="entropy-code real bitstreams (needed for .icwem/.png files)")
    p.add_argument("--save-dir", help="folder for the .icwem/.png files and results.csv/results.json")
    add_tile_argument(p)
    add_max_pixels_argument(p, DEFAULT_MAX_PIXELS)
    p.add_argument("--quality", type=positive_number("quality"), nargs="+", default=None, metavar="Q",
                   help="a variable-rate checkpoint's qualities, each in [1, K] (default: the middle)")
    add_refine_arguments(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = select_device(args.cuda)
    print(f"{args.data} with {args.checkpoint} on {device}")
    print(f"rate: {RATE_REAL if args.real else RATE_ESTIMATE}; times in seconds")
    if args.save_dir is not None and not args.real:
        print("no --real: writing only results.csv and results.json (.icwem and .png files need --real)")
    refine = RefineOptions(args.refine, args.refine_lambda, args.refine_minutes, progress=True)
    qualities = args.quality or [None]
    model = load_model(args.checkpoint, device, args.tile)
    means = []
    for quality in qualities:
        save_dir = args.save_dir
        if quality is not None and len(qualities) > 1:
            print(f"quality {quality:g}")
            save_dir = None if save_dir is None else str(Path(save_dir) / f"q{quality:g}")
        means.append(code_images(args.checkpoint, args.data, args.real, device, save_dir, tile=args.tile,
                                 max_pixels=args.max_pixels, refine=refine, quality=quality, model=model)[1])
    if len(qualities) > 1:
        print("\n".join(format_table("quality", [(f"{q:g}", mean) for q, mean in zip(qualities, means)])))
        if args.save_dir is not None:  # the sweep as one RD curve, as eval.py --output writes it
            rate = RATE_REAL if args.real else RATE_ESTIMATE
            write_results(Path(args.save_dir) / "rd.json", Path(args.checkpoint).name,
                          f"{rate}; images: {args.data}; qualities: {', '.join(f'{q:g}' for q in qualities)}",
                          rd_results(means) | {"quality": list(qualities)})
    if args.save_dir is not None:
        print(f"wrote {args.save_dir}/")
    return 0


if __name__ == "__main__":
    run_cli(main)
