"""Bjøntegaard delta metrics: average rate and quality difference between two rate-distortion curves.

G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", VCEG-M33, 2001.

Each curve is fitted as a function over the axis the average is taken along, both fits are integrated
over the interval the two curves share, and the difference of the integrals divided by the interval
length is the average gap:

* BD-rate: log-rate as a function of distortion, averaged over the common distortion range, reported
  as a percentage rate change (negative: the test codec needs fewer bits for the same quality).
* BD-PSNR: distortion as a function of log-rate, averaged over the common log-rate range, in the
  distortion's unit (positive: the test codec has higher quality at the same rate).

Two fits: ``"cubic"`` is the original least-squares cubic polynomial through all points;
``"pchip"`` is the piecewise cubic Hermite interpolant (Fritsch-Carlson), which passes through every
point and cannot overshoot between them, as used by later JVET/AOM reporting.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError

METHODS = ("cubic", "pchip")
MIN_POINTS = 4


def bd_rate(
    rate_anchor: Sequence[float],
    dist_anchor: Sequence[float],
    rate_test: Sequence[float],
    dist_test: Sequence[float],
    method: str = "cubic",
) -> float:
    """Average bitrate change of the test curve at equal quality, in percent (negative is better)."""
    log_rate_a, dist_a = _curve(rate_anchor, dist_anchor, "anchor")
    log_rate_t, dist_t = _curve(rate_test, dist_test, "test")
    mean_log_ratio = _mean_gap(dist_a, log_rate_a, dist_t, log_rate_t, method, "quality")
    return (float(np.exp(mean_log_ratio)) - 1.0) * 100.0


def bd_psnr(
    rate_anchor: Sequence[float],
    dist_anchor: Sequence[float],
    rate_test: Sequence[float],
    dist_test: Sequence[float],
    method: str = "cubic",
) -> float:
    """Average quality change of the test curve at equal rate, in the distortion's unit (e.g. dB)."""
    log_rate_a, dist_a = _curve(rate_anchor, dist_anchor, "anchor")
    log_rate_t, dist_t = _curve(rate_test, dist_test, "test")
    return _mean_gap(log_rate_a, dist_a, log_rate_t, dist_t, method, "rate")


def _curve(rate: Sequence[float], dist: Sequence[float], which: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one RD curve and return (log rate, distortion) as float arrays."""
    rate = np.asarray(rate, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    if rate.ndim != 1 or rate.shape != dist.shape:
        raise UserError(f"{which} curve: rates and distortions must be two lists of the same length")
    if len(rate) < MIN_POINTS:
        raise UserError(f"{which} curve: Bjøntegaard metrics need at least {MIN_POINTS} points, got {len(rate)}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(dist))):
        raise UserError(f"{which} curve: rates and distortions must be finite (lossless points give infinite PSNR)")
    if np.any(rate <= 0):
        raise UserError(f"{which} curve: rates must be positive")
    return np.log(rate), dist


def _mean_gap(
    x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, method: str, axis: str
) -> float:
    """Mean of (test fit - anchor fit) over the x interval both curves cover."""
    if method not in METHODS:
        raise ValueError(f"unknown Bjøntegaard method {method!r}; expected one of {METHODS}")
    low = max(x_anchor.min(), x_test.min())
    high = min(x_anchor.max(), x_test.max())
    if not high > low:
        raise UserError(f"the two curves do not overlap in {axis}, so their Bjøntegaard delta is undefined")
    integrate = _integral_cubic if method == "cubic" else _integral_pchip
    area_test = integrate(x_test, y_test, low, high)
    area_anchor = integrate(x_anchor, y_anchor, low, high)
    return float((area_test - area_anchor) / (high - low))


def _integral_cubic(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Integral over [low, high] of the least-squares cubic through (x, y)."""
    antiderivative = np.polyint(np.polyfit(x, y, 3))
    return float(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))


def _integral_pchip(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Integral over [low, high] (inside the data range) of the monotone cubic Hermite interpolant."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    h = np.diff(x)
    if np.any(h <= 0):
        raise UserError("two points of a curve share the same value on the fitted axis; pchip needs distinct values")
    slopes = _pchip_slopes(h, np.diff(y) / h)
    total = 0.0
    for k in range(len(h)):
        start, end = max(low, x[k]), min(high, x[k + 1])
        if end <= start:
            continue
        # On this interval the interpolant is y[k] + d0 t + c2 t^2 + c3 t^3 with t = x - x[k].
        d0, d1 = slopes[k], slopes[k + 1]
        secant = (y[k + 1] - y[k]) / h[k]
        c2 = (3 * secant - 2 * d0 - d1) / h[k]
        c3 = (d0 + d1 - 2 * secant) / h[k] ** 2
        coefficients = np.array([c3 / 4, c2 / 3, d0 / 2, y[k], 0.0])  # antiderivative, highest power first
        total += np.polyval(coefficients, end - x[k]) - np.polyval(coefficients, start - x[k])
    return float(total)


def _pchip_slopes(h: np.ndarray, secants: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson derivatives at the knots: zero at local extrema, weighted harmonic mean elsewhere."""
    slopes = np.zeros(len(h) + 1)
    for k in range(1, len(h)):
        if secants[k - 1] * secants[k] > 0:
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            slopes[k] = (w1 + w2) / (w1 / secants[k - 1] + w2 / secants[k])
    slopes[0] = _pchip_end_slope(h[0], h[1], secants[0], secants[1])
    slopes[-1] = _pchip_end_slope(h[-1], h[-2], secants[-1], secants[-2])
    return slopes


def _pchip_end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """Three-point end derivative, limited so the end interval stays shape-preserving."""
    slope = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(slope) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(slope) > 3 * abs(m0):
        return 3 * m0
    return slope
