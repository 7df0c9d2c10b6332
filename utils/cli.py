"""Entry-point wrapper shared by the top-level scripts."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from .errors import UserError


def tile_rows(text: str) -> int:
    """``--tile`` value: a whole number of rows, 0 or more."""
    try:
        rows = int(text)
    except ValueError:
        rows = -1
    if rows < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows (0 or more)")
    return rows


def add_tile_argument(parser: argparse.ArgumentParser) -> None:
    """``--tile N``: rows per band of the model's streamed inference (``ICWEM.tile``), 0 = whole image."""
    parser.add_argument(
        "--tile", type=tile_rows, default=None, metavar="N",
        help="run the transforms in full-width bands of N image rows, so memory grows with the width only "
             "(default: bands of about 0.75 megapixels); 0: the whole image at once. Bitstreams do not depend on it",
    )


def pixel_count(text: str) -> int:
    """``--max-pixels`` value: a whole number of pixels, 1 or more."""
    try:
        pixels = int(text)
    except ValueError:
        pixels = 0
    if pixels < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels (1 or more)")
    return pixels


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels N``: the largest image a decode accepts (Pillow's convention and default)."""
    from .bitstream import DEFAULT_MAX_PIXELS

    parser.add_argument(
        "--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
        help=f"refuse to decode images of more than N pixels (default {DEFAULT_MAX_PIXELS}, Pillow's limit); "
             "checked from the file's header before any work",
    )


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
