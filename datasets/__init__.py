"""Training and test data."""

from .images import ImageFolder, ShardedEpochSampler

__all__ = ["ImageFolder", "ShardedEpochSampler"]
