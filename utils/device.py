"""Choosing the device from the scripts' ``--cuda`` / ``--device`` flags: one rule for every script."""

from __future__ import annotations

import sys
from typing import Optional

import torch

from .errors import UserError


def select_device(cuda: bool, device: Optional[str] = None, *, doing: str = "running", warn: bool = True) -> torch.device:
    """``device`` if given, else CUDA with ``cuda`` (the CPU, with a warning, if there is none).

    ``doing`` completes the warning ("... CUDA is not available; <doing> on the CPU") so that each
    script's message stays what its users know; ``warn=False`` keeps the other ranks of a run quiet.
    """
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise UserError(f"--device: not a device: {device!r} (try cpu, cuda, cuda:1)") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        return chosen
    if cuda and torch.cuda.is_available():
        return torch.device("cuda")
    if cuda and warn:
        print(f"warning: --cuda given but CUDA is not available; {doing} on the CPU", file=sys.stderr)
    return torch.device("cpu")
