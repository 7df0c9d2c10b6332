"""Plot rate-distortion curves from results JSONs and print their Bjøntegaard deltas.

    python tools/plot_rd.py results/kodak/*.json -o results/kodak/rd --anchor JPEG

Writes PREFIX.png and PREFIX.pdf, each with two panels (PSNR and MS-SSIM in dB against bpp), and
prints BD-rate (PSNR), BD-PSNR and BD-rate (MS-SSIM dB) of every curve against the anchor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.evaluation.bd import METHODS  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.evaluation.plots import bd_table, find_curve, format_bd_table, plot_rd  # noqa: E402
from utils.evaluation.results import read_results  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results JSON files (CompressAI eval_model layout)")
    parser.add_argument("-o", "--out", type=Path, default=Path("rd"), help="output prefix (default: rd)")
    parser.add_argument("--anchor", help="curve name or JSON path to compare against (default: the first curve)")
    parser.add_argument("--method", choices=METHODS, default="cubic", help="Bjøntegaard fit (default: cubic)")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)

    paths = list(args.results)
    anchor = 0
    if args.anchor is not None and Path(args.anchor).is_file():
        anchor_path = Path(args.anchor).resolve()
        resolved = [p.resolve() for p in paths]
        if anchor_path not in resolved:
            paths.append(anchor_path)
            resolved.append(anchor_path)
        anchor = resolved.index(anchor_path)
    curves = [read_results(p) for p in paths]
    if args.anchor is not None and not Path(args.anchor).is_file():
        anchor = find_curve(curves, args.anchor)

    for path in plot_rd(curves, args.out, args.title):
        print(f"wrote {path}")
    print(format_bd_table(bd_table(curves, anchor, args.method), curves[anchor]["name"]))
    return 0


if __name__ == "__main__":
    run_cli(main)
