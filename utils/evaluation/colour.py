"""Held-out RD in every channel order: does a model care which colour channel is which?

A codec should code a photo and the same photo with its channels reordered at about the same rate and
quality: nothing in the world makes green rarer than red. A model trained on a few photos learns their
palette instead (green leaves decoded as grey), which a test set with that same palette never shows.
So each held-out photo is coded in all six channel orders, and two numbers are reported per model:

* the spread: per photo, the largest minus the smallest PSNR over its six orders (then the worst photo);
* the rate against an anchor codec (JPEG) at equal quality, per coded image (averaged as a geometric mean): the anchor's quality sweep on
  the same image, interpolated (piecewise linear in log-rate) at the model's PSNR. One number per RD point,
  so a single fine-tuned checkpoint can be ranked without a whole curve; ``utils/evaluation/bd.py`` gives
  the BD-rate once there are four or more points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


from ..metrics import bpp_from_bytes, psnr
from ..image_io import CHANNEL_ORDERS, to_tensor
from .anchors import code_image

ORDER_NAMES = tuple("".join("RGB"[c] for c in order) for order in CHANNEL_ORDERS)


def reorder(rgb: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """``rgb`` (HxWx3) with its channels taken in ``order`` (``(1, 0, 2)``: green first)."""
    return np.ascontiguousarray(rgb[..., list(order)])


@dataclass(frozen=True)
class AnchorCurve:
    """An anchor codec's RD curve on one image: bpp and PSNR per quality, rate rising."""

    bpp: np.ndarray
    psnr: np.ndarray

    @classmethod
    def sweep(cls, codec: str, rgb: np.ndarray, qualities: Sequence[int]) -> "AnchorCurve":
        original = to_tensor(rgb)
        points = []
        for quality in qualities:
            coded = code_image(codec, rgb, quality)
            points.append((bpp_from_bytes(coded.num_bytes, *rgb.shape[:2]), psnr(original, to_tensor(coded.rgb))))
        points.sort()
        return cls(np.array([p[0] for p in points]), np.array([p[1] for p in points]))

    def rate_at(self, quality_db: float) -> float:
        """The anchor's bpp at this PSNR (log-rate interpolated; NaN outside the swept range)."""
        best = np.maximum.accumulate(self.psnr)  # a non-monotone sweep: keep its upper envelope
        keep = np.concatenate([[True], best[1:] > best[:-1]])
        db, log_rate = best[keep], np.log(self.bpp[keep])
        if not db[0] <= quality_db <= db[-1]:
            return float("nan")
        return float(np.exp(np.interp(quality_db, db, log_rate)))

    def psnr_at(self, bpp: float) -> float:
        """The anchor's PSNR at this rate (NaN outside the swept range)."""
        if not self.bpp[0] <= bpp <= self.bpp[-1]:
            return float("nan")
        return float(np.interp(np.log(bpp), np.log(self.bpp), self.psnr))


@dataclass
class ColourRow:
    """One photo in one channel order, coded by one model, beside the anchor on the same image."""

    photo: str
    order: str
    bpp: float
    psnr: float
    anchor_bpp: float  # the anchor's rate at this PSNR (NaN: outside its sweep)
    anchor_psnr: float  # the anchor's PSNR at this rate

    def rd_loss(self, lmbda: float) -> float:
        """The training objective on this image: bpp + λ·255²·MSE (MSE of 8-bit values scaled to [0, 1])."""
        return self.bpp + lmbda * 255**2 * 10 ** (-self.psnr / 10)

    @property
    def rate_vs_anchor_pct(self) -> float:
        return 100.0 * (self.bpp / self.anchor_bpp - 1.0)


def colour_rows(
    code: Callable[[np.ndarray], tuple[float, np.ndarray]],
    photos: dict[str, np.ndarray],
    anchors: dict[tuple[str, str], AnchorCurve],
    orders: Sequence[str] = ORDER_NAMES,
) -> list[ColourRow]:
    """Code every photo in every order with ``code`` (rgb -> (bpp, decoded rgb)); one row each."""
    rows = []
    for name, rgb in photos.items():
        for order_name in orders:
            image = reorder(rgb, CHANNEL_ORDERS[ORDER_NAMES.index(order_name)])
            bpp, decoded = code(image)
            quality = psnr(to_tensor(image), to_tensor(decoded))
            curve = anchors[(name, order_name)]
            rows.append(ColourRow(name, order_name, bpp, quality, curve.rate_at(quality), curve.psnr_at(bpp)))
    return rows


def spread_db(rows: Sequence[ColourRow]) -> dict[str, float]:
    """Per photo: the largest minus the smallest PSNR over its channel orders."""
    by_photo: dict[str, list[float]] = {}
    for row in rows:
        by_photo.setdefault(row.photo, []).append(row.psnr)
    return {photo: max(values) - min(values) for photo, values in by_photo.items()}


def summarise(rows: Sequence[ColourRow], lmbda: float | None = None) -> dict[str, float]:
    """Means over every row (photos x orders) and the worst photo's spread; with the model's λ, also the
    mean training objective: what ranks two runs at the same λ, whichever way each moved along the curve."""
    # geometric mean of the rate ratios, as a BD-rate averages log-rates
    finite = [np.log(r.bpp / r.anchor_bpp) for r in rows if np.isfinite(r.anchor_bpp)]
    gaps = [r.psnr - r.anchor_psnr for r in rows if np.isfinite(r.anchor_psnr)]  # none: no anchor in range
    return dict(
        bpp=float(np.mean([r.bpp for r in rows])),
        psnr=float(np.mean([r.psnr for r in rows])),
        delta_psnr_vs_anchor=float(np.mean(gaps)) if gaps else float("nan"),
        rate_vs_anchor_pct=float(100.0 * np.expm1(np.mean(finite))) if finite else float("nan"),
        rows_in_anchor_range=len(finite),
        worst_spread_db=max(spread_db(rows).values()),
        rd_loss=float(np.mean([r.rd_loss(lmbda) for r in rows])) if lmbda else float("nan"),
    )
