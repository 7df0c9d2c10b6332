"""Helpers shared by the scripts: padding, image I/O, metrics, bitstream files, checkpoints."""

from .errors import UserError

__all__ = ["UserError"]
