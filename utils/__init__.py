"""The library under the scripts, in tiers (see the README's layout table).

The floor — ``errors``, ``cli``, ``device``, ``image_io``, ``padding``, ``metrics`` — imports nothing of this
repository's packages except itself, so ``models``, ``datasets`` and ``losses`` may use it. Above those
sit the pipeline's subpackages: ``coding`` (the .icwem format, image <-> file), ``training`` (config,
setup, state, step, loop, checkpoints, distributed) and ``evaluation`` (measurement, results, BD-rate,
plots, anchors). ``tests/test_layers.py`` enforces the order.

Importing the package also silences, once for every entry point, the FutureWarning that CompressAI
1.2.8 triggers by calling ``torch.jit.script`` at import time: user-facing output should be our own
lines only. Every script and ``models`` import ``utils`` before CompressAI.
"""

import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from .errors import UserError  # noqa: E402

__all__ = ["UserError"]
