"""Crops of scikit-image's photographs whose sides are not multiples of 64 (so the model pads them), for
the benchmarks that need real pictures of awkward sizes: one table per benchmark, one loader."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Crop(NamedTuple):
    """``photo[top:top + height, left:left + width]`` of the scikit-image photograph ``photo``."""

    photo: str
    top: int
    left: int
    height: int
    width: int

    @property
    def label(self) -> str:
        return f"{self.photo} {self.height}x{self.width}"

    def pixels(self) -> np.ndarray:
        """The crop as HxWx3 uint8 RGB."""
        from tools.demo_steps import load_photo  # scikit-image is only needed here

        rgb = load_photo(self.photo)[self.top:self.top + self.height, self.left:self.left + self.width]
        assert rgb.shape[:2] == (self.height, self.width), f"{self.photo} is smaller than its crop"
        return np.ascontiguousarray(rgb)


# benchmarks/portability.py: small (every crop is coded under eight CPU setups), odd sizes up to 512x384.
PORTABILITY_CROPS: Sequence[Crop] = (
    Crop("camera", 64, 64, 64, 64),
    Crop("chelsea", 0, 0, 128, 192),
    Crop("rocket", 100, 50, 150, 200),
    Crop("hubble_deep_field", 20, 20, 200, 300),
    Crop("astronaut", 0, 0, 256, 384),
    Crop("coffee", 8, 40, 300, 451),
    Crop("immunohistochemistry", 0, 0, 512, 384),
)

# tools/padding_study.py: from a few pixels over a multiple of 64 (most of the padding is added) to a few
# under (almost none is).
PADDING_CROPS: Sequence[Crop] = (
    Crop("chelsea", 0, 0, 300, 451),
    Crop("coffee", 0, 0, 400, 600),
    Crop("rocket", 0, 0, 427, 636),
    Crop("astronaut", 40, 60, 333, 450),
    Crop("camera", 100, 80, 200, 333),
    Crop("motorcycle_left", 10, 20, 449, 705),
    Crop("immunohistochemistry", 0, 0, 257, 385),
    Crop("hubble_deep_field", 100, 100, 321, 511),
)
