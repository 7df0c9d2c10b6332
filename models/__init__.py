"""ICWEM model, its configurations and checkpoint loading."""

import warnings

# compressai 1.2.8 calls torch.jit.script at import time, which current torch flags as deprecated.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from .checkpoint import load_checkpoint, model_from_state_dict, read_checkpoint, split_checkpoint
from .config import PRESETS, config_from_state_dict, get_config
from .icwem import ICWEM, bf16_native

__all__ = [
    "ICWEM", "bf16_native", "PRESETS", "get_config", "config_from_state_dict",
    "load_checkpoint", "model_from_state_dict", "read_checkpoint", "split_checkpoint",
]
