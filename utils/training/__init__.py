"""Training tier (split into its phases in the next commit)."""

from .loop import LATEST, TrainConfig, default_num_workers, train

__all__ = ["LATEST", "TrainConfig", "default_num_workers", "train"]
