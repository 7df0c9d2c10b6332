"""The small-data training recipe: multi-scale crops and flips, repeats, the cosine schedule, and training
on the decoder's picture (``--decoder-clamp``); the crops and flips themselves are in test_datasets.py."""

from __future__ import annotations

import pytest
import torch

from conftest import photo_tensor
from losses import RateDistortionLoss
from utils.training import COSINE_FINAL_FACTOR, TrainConfig, make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cosine_schedule_decays_over_the_epochs_to_its_floor():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = make_scheduler(optimizer, TrainConfig(dataset="x", epochs=4, lr_schedule="cosine"))
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[2] == pytest.approx(1e-3 * (1 + COSINE_FINAL_FACTOR) / 2)
    assert rates[4] == pytest.approx(1e-3 * COSINE_FINAL_FACTOR)


@pytest.fixture(scope="module")
def fresh_model():
    from models import ICWEM, get_config

    torch.manual_seed(1)
    model = ICWEM(**get_config("tiny")).eval()
    model.update(force=True)
    return model


def test_decoder_clamp_trains_on_the_picture_the_decoder_produces(fresh_model):
    """A fresh INN maps photos outside [0, 1], where the decoder's clamp cuts them: the plain forward pass
    then promises a picture the decoder never gives, the clamped one gives exactly the decoded picture."""
    x = photo_tensor("coffee", 64, 128, top=100, left=200)
    with torch.no_grad():
        plain = fresh_model(x)["x_hat"]
        clamped = fresh_model(x, decoder_clamp=True)
        coded = fresh_model.compress(x)
        decoded = fresh_model.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert (clamped["x_hat"] - decoded).abs().max() < 1e-4
    assert (plain - decoded).abs().max() > 0.1
    assert clamped["range_loss"] > 0


def test_range_loss_is_added_with_the_distortion_weight(fresh_model):
    x = photo_tensor("astronaut", 64, 64, top=200, left=200)
    out = fresh_model(x, decoder_clamp=True)
    terms = RateDistortionLoss(0.01, "mse")(out, x)
    expected = 0.01 * 255**2 * (terms["mse_loss"] + terms["range_loss"]) + terms["bpp_loss"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert "range_loss" not in RateDistortionLoss(0.01, "mse")(fresh_model(x), x)
