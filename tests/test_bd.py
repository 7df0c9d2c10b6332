"""Bjøntegaard metrics give the known answers for shifted curves and refuse unusable input."""

import numpy as np
import pytest

from utils.evaluation.bd import bd_psnr, bd_rate
from utils.errors import UserError

RATES = [0.12, 0.25, 0.48, 0.80, 1.30, 1.95]
PSNRS = [27.4, 29.6, 31.9, 33.8, 35.9, 37.6]


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_ten_percent_fewer_bits_is_minus_ten_percent(method):
    faster = [r * 0.9 for r in RATES]
    assert bd_rate(RATES, PSNRS, faster, PSNRS, method=method) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(faster, PSNRS, RATES, PSNRS, method=method) == pytest.approx(100 / 0.9 - 100, abs=1e-6)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_half_a_db_better_is_plus_half_a_db(method):
    better = [p + 0.5 for p in PSNRS]
    assert bd_psnr(RATES, PSNRS, RATES, better, method=method) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(RATES, better, RATES, PSNRS, method=method) == pytest.approx(-0.5, abs=1e-9)


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_identical_curves_have_zero_delta(method):
    assert bd_rate(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)


def test_point_order_does_not_matter():
    order = [3, 0, 5, 1, 4, 2]
    test_rates = [r * 0.8 for r in RATES]
    test_psnrs = [p + 0.1 for p in PSNRS]
    for method in ("cubic", "pchip"):
        sorted_result = bd_rate(RATES, PSNRS, test_rates, test_psnrs, method=method)
        shuffled = bd_rate(
            [RATES[i] for i in order],
            [PSNRS[i] for i in order],
            [test_rates[i] for i in order],
            [test_psnrs[i] for i in order],
            method=method,
        )
        assert shuffled == pytest.approx(sorted_result)


def test_pchip_integral_matches_scipy():
    scipy_interpolate = pytest.importorskip("scipy.interpolate")
    from utils.evaluation.bd import _integral_pchip

    x = np.log(RATES)
    wobbly = np.array([1.0, 3.0, 2.0, 2.5, 7.0, 6.9])  # extrema exercise the slope limiter
    for y in (np.array(PSNRS), wobbly):
        expected = scipy_interpolate.PchipInterpolator(x, y).integrate(x[0] + 0.1, x[-1] - 0.2)
        assert _integral_pchip(x, y, x[0] + 0.1, x[-1] - 0.2) == pytest.approx(expected, rel=1e-12)


def test_too_few_points_is_a_user_error():
    with pytest.raises(UserError, match="at least 4 points"):
        bd_rate(RATES[:3], PSNRS[:3], RATES, PSNRS)
    with pytest.raises(UserError, match="at least 4 points"):
        bd_psnr(RATES, PSNRS, RATES[:3], PSNRS[:3])


def test_curves_that_do_not_overlap_are_a_user_error():
    with pytest.raises(UserError, match="overlap"):
        bd_psnr(RATES, PSNRS, [r * 100 for r in RATES], PSNRS)


def test_invalid_values_are_user_errors():
    with pytest.raises(UserError, match="finite"):
        bd_rate(RATES, PSNRS[:-1] + [float("inf")], RATES, PSNRS)
    with pytest.raises(UserError, match="positive"):
        bd_rate([0.0] + RATES[1:], PSNRS, RATES, PSNRS)
    with pytest.raises(UserError, match="same length"):
        bd_rate(RATES, PSNRS[:-1], RATES, PSNRS)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError):
        bd_rate(RATES, PSNRS, RATES, PSNRS, method="linear")
