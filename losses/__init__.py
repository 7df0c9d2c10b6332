"""Training objectives."""

from .rate_distortion import MS_SSIM_MIN_SIZE, RateDistortionLoss, bits_per_pixel, configure_optimizers

__all__ = ["MS_SSIM_MIN_SIZE", "RateDistortionLoss", "bits_per_pixel", "configure_optimizers"]
