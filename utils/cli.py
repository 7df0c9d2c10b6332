"""Entry-point wrapper shared by the top-level scripts."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from .errors import UserError


def whole_number(minimum: int, unit: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of ``unit`` of at least ``minimum``, else a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit} ({minimum} or more)")
        return value

    return parse


def add_tile_argument(parser: argparse.ArgumentParser) -> None:
    """``--tile N``: rows per band of the model's streamed inference (``ICWEM.tile``), 0 = whole image."""
    parser.add_argument(
        "--tile", type=whole_number(0, "rows"), default=None, metavar="N",
        help="run the transforms in full-width bands of N image rows, so memory grows with the width only "
             "(default: bands of about 0.75 megapixels); 0: the whole image at once. Bitstreams do not depend on it",
    )


def add_max_pixels_argument(parser: argparse.ArgumentParser, default: int) -> None:
    """``--max-pixels N``: the largest image a decode accepts (``default``: the bitstream format's, Pillow's).

    The default is passed in so that this bottom-tier module need not import the coding tier.
    """
    parser.add_argument(
        "--max-pixels", type=whole_number(1, "pixels"), default=default, metavar="N",
        help=f"refuse to decode images of more than N pixels (default {default}, Pillow's limit); "
             "checked from the file's header before any work",
    )


def add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--refine N`` (encode-time refinement, models/refine.py), its time budget and its λ."""
    parser.add_argument(
        "--refine", type=whole_number(0, "iterations"), default=0, metavar="N",
        help="refine each image's latents for N iterations before coding them: smaller files at the same "
             "quality, read by the same decoder (docs/refinement.md). Each iteration costs about 20 s of one CPU "
             "core per megapixel with the shipped models. Default 0: plain encoding",
    )
    parser.add_argument(
        "--refine-minutes", type=positive_number("minutes"), default=None, metavar="M",
        help="time budget of each image's refinement: it anneals by the time spent when that is ahead and "
             "stops after M minutes with the best latents so far",
    )
    parser.add_argument(
        "--refine-lambda", type=positive_number("λ"), default=None, metavar="λ",
        help="rate-distortion trade-off to refine for (rate + λ·255²·MSE; default: the λ the checkpoint was "
             "trained for, which shipped models and our training checkpoints record)",
    )


def positive_number(unit: str) -> Callable[[str], float]:
    """An argparse ``type``: a finite number of ``unit`` above 0, else a one-line error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of {unit}")
        return value

    return parse


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> None:
    """Run ``main(argv)`` and turn user errors into one line on stderr and a non-zero exit code.

    Exit codes: 0 success, 1 user error (bad input, missing file, mismatched checkpoint), 130 Ctrl-C.
    Programming errors are not caught: their traceback is what a developer needs.
    """
    prog = sys.argv[0].rsplit("/", 1)[-1]
    try:
        code = main(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
