"""Rate-distortion curves of classical codecs on a folder of images, for comparison with ICWEM.

    python tools/anchors.py /data/kodak -o results/kodak/anchors
    python tools/anchors.py /data/kodak -o out --codecs jpeg webp --qualities 20 50 80

Writes OUT_DIR/<codec>.json (CompressAI eval_model layout, one point per quality) and prints a table.
Codecs whose package is missing are skipped with a notice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.evaluation.anchors import CODECS, codec_unavailable, describe, evaluate_codecs  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.image_io import find_images  # noqa: E402
from utils.metrics import ms_ssim_db  # noqa: E402
from utils.evaluation.results import write_results  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", type=Path, help="folder of images (searched recursively) or one image")
    parser.add_argument("-o", "--out-dir", type=Path, required=True, help="folder for the <codec>.json files")
    parser.add_argument(
        "--codecs", nargs="+", choices=list(CODECS), default=list(CODECS), help="codecs to run (default: all)"
    )
    parser.add_argument(
        "--qualities",
        nargs="+",
        type=int,
        help="quality values for every codec (default: each codec's own sweep; JPEG 2000's is a target PSNR in dB)",
    )
    args = parser.parse_args(argv)

    paths = find_images(args.images)
    codecs = []
    for name in args.codecs:
        reason = codec_unavailable(name)
        if reason is None:
            codecs.append(name)
        else:
            print(reason, file=sys.stderr)
    if not codecs:
        print("no codec available; nothing to do", file=sys.stderr)
        return 1

    results = evaluate_codecs(paths, codecs, args.qualities, log=lambda line: print(line, file=sys.stderr))
    for name, points in results.items():
        write_results(args.out_dir / f"{name}.json", CODECS[name].label, describe(name), points)

    print(f"{len(paths)} images; results in {args.out_dir}/")
    print(f"{'codec':<12} {'quality':>7} {'bpp':>8} {'PSNR':>7} {'MS-SSIM':>8} {'(dB)':>6} {'enc ms':>8} {'dec ms':>8}")
    for name, points in results.items():
        for i, quality in enumerate(points["quality"]):
            print(
                f"{name:<12} {quality:>7g} {points['bpp'][i]:>8.4f} {points['psnr-rgb'][i]:>7.2f} "
                f"{points['ms-ssim-rgb'][i]:>8.5f} {ms_ssim_db(points['ms-ssim-rgb'][i]):>6.2f} "
                f"{1000 * points['encoding_time'][i]:>8.1f} {1000 * points['decoding_time'][i]:>8.1f}"
            )
    return 0


if __name__ == "__main__":
    run_cli(main)
