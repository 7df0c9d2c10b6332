"""Training and test data."""

from .images import EpochIndices, ImageFolder, ShardedEpochSampler

__all__ = ["EpochIndices", "ImageFolder", "ShardedEpochSampler"]
