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
