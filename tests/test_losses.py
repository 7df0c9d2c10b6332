"""The training objective (spec, "Training objective") on hand-made likelihoods, and the optimizer split."""

import math

import pytest
import torch
from pytorch_msssim import ms_ssim

from losses import RateDistortionLoss, bpp_from_likelihoods, configure_optimizers


def hand_made_output(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """y: every likelihood 1/2 (1 bit each); z: every likelihood 1/4 (2 bits each)."""
    b = x.shape[0]
    return {
        "x_hat": x_hat,
        "likelihoods": {"y": torch.full((b, 8, 4, 4), 0.5), "z": torch.full((b, 4, 2, 2), 0.25)},
    }


def expected_bpp(x: torch.Tensor) -> float:
    b, _, h, w = x.shape
    bits = b * 8 * 4 * 4 * 1 + b * 4 * 2 * 2 * 2
    return bits / (b * h * w)


def test_bpp_is_total_bits_over_batch_pixels():
    x = torch.zeros(2, 3, 64, 64)
    out = hand_made_output(x, x)
    assert bpp_from_likelihoods(out["likelihoods"], 2 * 64 * 64).item() == pytest.approx(expected_bpp(x), rel=1e-6)


def test_mse_loss_is_lambda_255_squared_mse_plus_bpp():
    x = torch.rand(2, 3, 64, 64)
    x_hat = x + 0.1
    terms = RateDistortionLoss(lmbda=0.0067, metric="mse")(hand_made_output(x, x_hat), x)
    assert set(terms) == {"loss", "bpp_loss", "mse_loss"}
    assert terms["mse_loss"].item() == pytest.approx(0.01, rel=1e-4)
    assert terms["bpp_loss"].item() == pytest.approx(expected_bpp(x), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.0067 * 255**2 * 0.01 + expected_bpp(x), rel=1e-4)


def test_ms_ssim_loss_is_lambda_one_minus_ms_ssim_plus_bpp():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 192, 192)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    terms = RateDistortionLoss(lmbda=8, metric="ms-ssim")(hand_made_output(x, x_hat), x)
    value = ms_ssim(x_hat, x, data_range=1.0).item()
    assert set(terms) == {"loss", "bpp_loss", "ms_ssim_loss"}
    assert terms["ms_ssim_loss"].item() == pytest.approx(value, rel=1e-6)  # the value, as in the original
    assert terms["loss"].item() == pytest.approx(8 * (1 - value) + expected_bpp(x), rel=1e-5)


def test_perfect_reconstruction_costs_only_the_rate():
    x = torch.rand(1, 3, 192, 192)
    for metric in ("mse", "ms-ssim"):
        terms = RateDistortionLoss(lmbda=3, metric=metric)(hand_made_output(x, x.clone()), x)
        assert terms["loss"].item() == pytest.approx(expected_bpp(x), abs=1e-5)


def test_loss_is_float32_under_half_precision_outputs():
    x = torch.rand(1, 3, 64, 64)
    out = hand_made_output(x, (x + 0.1).to(torch.bfloat16))
    out["likelihoods"] = {k: v.to(torch.bfloat16) for k, v in out["likelihoods"].items()}
    terms = RateDistortionLoss(lmbda=0.05)(out, x)
    assert terms["loss"].dtype == torch.float32
    assert math.isfinite(terms["loss"].item())


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError):
        RateDistortionLoss(metric="psnr")


def test_quantiles_alone_go_to_the_aux_optimizer():
    from models import ICWEM, get_config

    model = ICWEM(**get_config("tiny"))
    optimizer, aux_optimizer = configure_optimizers(model, lr=1e-4, aux_lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    main = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    aux = [names[id(p)] for g in aux_optimizer.param_groups for p in g["params"]]
    assert aux == ["entropy_bottleneck.quantiles"]
    assert not set(main) & set(aux)
    assert set(main) | set(aux) == set(names.values())
    assert optimizer.param_groups[0]["lr"] == 1e-4 and aux_optimizer.param_groups[0]["lr"] == 1e-3


def test_adam_is_fused_on_the_cpu_also_after_loading_an_unfused_checkpoint():
    """PyTorch's CPU default is a Python loop over every tensor; fused computes the same step 4-5x faster.
    A checkpoint written by the plain Adam carries fused=None in its groups: loading it keeps ours fused."""
    from models import ICWEM, get_config
    from utils.training import TrainState

    torch.manual_seed(0)
    model = ICWEM(**get_config("tiny"))
    optimizer, aux_optimizer = configure_optimizers(model, lr=1e-4, aux_lr=1e-3)
    assert optimizer.param_groups[0]["fused"] and aux_optimizer.param_groups[0]["fused"]
    plain = torch.optim.Adam(optimizer.param_groups[0]["params"], lr=1e-4)
    plain_aux = torch.optim.Adam(aux_optimizer.param_groups[0]["params"], lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    plain.step()
    plain_aux.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [10])
    state = TrainState(model=model, model_config={}, optimizer=optimizer, aux_optimizer=aux_optimizer,
                       scheduler=scheduler, scaler=torch.amp.GradScaler("cuda", enabled=False))
    state.load_optimizers({"optimizer": plain.state_dict(), "aux_optimizer": plain_aux.state_dict(),
                           "lr_scheduler": scheduler.state_dict()})
    assert plain.param_groups[0]["fused"] is None
    assert optimizer.param_groups[0]["fused"] and aux_optimizer.param_groups[0]["fused"]
    assert optimizer.state_dict()["state"][0]["step"].item() == 1  # the checkpoint's moments came in
