"""Entry-point wrapper shared by the top-level scripts."""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from .errors import UserError


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
