"""Training objectives."""

from .rate_distortion import MS_SSIM_MIN_SIZE, RateDistortionLoss, bpp_from_likelihoods, configure_optimizers

__all__ = ["MS_SSIM_MIN_SIZE", "RateDistortionLoss", "bpp_from_likelihoods", "configure_optimizers"]
