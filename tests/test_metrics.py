"""Metrics match their textbook definitions and the reference MS-SSIM implementation."""

import math

import numpy as np
import pytest
import pytorch_msssim
import torch
from skimage import data

from utils.image_io import to_tensor
from utils.metrics import (
    MS_SSIM_WEIGHTS,
    _ms_ssim,
    bpp_from_bytes,
    ms_ssim,
    ms_ssim_db,
    ms_ssim_levels,
    psnr,
)


def _photo_pair(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A real photo crop and a noisy, re-quantised copy of it."""
    rgb = np.ascontiguousarray(data.coffee()[100 : 100 + size, 200 : 200 + size])
    noise = np.random.default_rng(seed).normal(0, 8, rgb.shape)
    noisy = np.clip(np.round(rgb + noise), 0, 255).astype(np.uint8)
    return to_tensor(rgb), to_tensor(noisy)


def test_psnr_of_a_constant_offset():
    a = torch.full((1, 3, 8, 8), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # 10 log10(1 / 0.01)


def test_psnr_respects_data_range():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a + 25.5, data_range=255.0) == pytest.approx(20.0)


def test_psnr_of_identical_images_is_infinite():
    a = torch.rand(1, 3, 5, 5)
    assert psnr(a, a.clone()) == float("inf")


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_ms_ssim_of_identical_images_is_one():
    a, _ = _photo_pair(192)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_full_size_ms_ssim_is_pytorch_msssim():
    a, b = _photo_pair(192)
    expected = pytorch_msssim.ms_ssim(a, b, data_range=1.0).item()
    assert ms_ssim(a, b) == pytest.approx(expected, abs=1e-7)
    assert 0.5 < ms_ssim(a, b) < 1.0


def test_own_multiscale_loop_matches_pytorch_msssim_at_five_scales():
    a, b = _photo_pair(176)
    expected = pytorch_msssim.ms_ssim(a, b, data_range=1.0).item()
    assert _ms_ssim(a, b, torch.tensor(MS_SSIM_WEIGHTS)).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "short_side, levels", [(161, 5), (160, 4), (81, 4), (80, 3), (41, 3), (40, 2), (21, 2), (20, 1), (11, 1), (10, 0)]
)
def test_number_of_scales_follows_the_window_rule(short_side, levels):
    assert ms_ssim_levels(short_side, 1000) == levels
    assert ms_ssim_levels(1000, short_side) == levels


def test_small_images_use_renormalised_leading_weights():
    a, b = _photo_pair(100)  # 4 scales fit
    weights = torch.tensor(MS_SSIM_WEIGHTS[:4])
    assert ms_ssim(a, b) == pytest.approx(_ms_ssim(a, b, weights / weights.sum()).item())
    assert 0.0 < ms_ssim(a, b) < 1.0


def test_one_scale_is_plain_ssim():
    a, b = _photo_pair(16)
    expected = pytorch_msssim.ssim(a, b, data_range=1.0).item()
    assert ms_ssim(a, b) == pytest.approx(expected, abs=1e-6)


def test_images_smaller_than_the_window_give_nan():
    a, b = _photo_pair(10)
    assert math.isnan(ms_ssim(a, b))


def test_ms_ssim_db():
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(1.0) == float("inf")


def test_bpp_from_bytes():
    assert bpp_from_bytes(1000, 100, 80) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bpp_from_bytes(10, 0, 5)
