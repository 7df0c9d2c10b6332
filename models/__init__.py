"""ICWEM model, its configurations and checkpoint loading."""

import utils  # noqa: F401  (first: it silences CompressAI's import-time torch.jit warning)

from .checkpoint import load_checkpoint, model_from_state_dict, read_checkpoint, split_checkpoint
from .config import PRESETS, config_from_state_dict, get_config
from .icwem import ICWEM, bf16_native
from .entropy import ForeignStrings

__all__ = [
    "ICWEM", "bf16_native", "ForeignStrings", "PRESETS", "get_config", "config_from_state_dict",
    "load_checkpoint", "model_from_state_dict", "read_checkpoint", "split_checkpoint",
]
