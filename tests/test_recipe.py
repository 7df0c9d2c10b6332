"""The small-data training recipe: multi-scale crops and flips, repeats, the cosine schedule, and training
on the decoder's picture (``--decoder-clamp``); the crops and flips themselves are in test_datasets.py."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import photo_tensor
from losses import RateDistortionLoss
from utils.training import COSINE_FINAL_FACTOR, TrainConfig, make_scheduler
from utils.training.setup import resume_schedule

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


def _scheduler_after(epochs_run: int, **flags):
    optimizer = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    scheduler = make_scheduler(optimizer, TrainConfig(dataset="x", **flags))
    for _ in range(epochs_run):
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


@pytest.mark.parametrize("before, after, epoch_rate", [
    ({"epochs": 4, "lr_schedule": "cosine"}, {"epochs": 8, "lr_schedule": "cosine"},
     1e-3 * (COSINE_FINAL_FACTOR + (1 - COSINE_FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi * 3 / 8)))),
    ({"epochs": 9, "lr_epoch": [2]}, {"epochs": 9, "lr_epoch": [5]}, 1e-3),
])
def test_a_continued_run_takes_the_changed_schedule_from_its_first_epoch(before, after, epoch_rate):
    """Continuing with a longer --epochs (a warm cosine restart) or new milestones: the resumed epoch already
    runs at the new schedule's rate, not at the rate the checkpoint's last epoch ended with."""
    old_optimizer, old_scheduler = _scheduler_after(3, **before)
    optimizer, scheduler = _scheduler_after(0, **after)
    optimizer.load_state_dict(old_optimizer.state_dict())
    scheduler.load_state_dict(old_scheduler.state_dict())
    assert optimizer.param_groups[0]["lr"] != pytest.approx(epoch_rate)
    assert resume_schedule(scheduler, TrainConfig(dataset="x", **after)) == pytest.approx(epoch_rate)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(epoch_rate)
    assert scheduler.get_last_lr()[0] == pytest.approx(epoch_rate)


@pytest.mark.parametrize("flags", [{"epochs": 4, "lr_schedule": "cosine"}, {"epochs": 9, "lr_epoch": [1, 2]}])
def test_an_unchanged_schedule_resumes_with_its_rate_bit_for_bit(flags):
    optimizer, scheduler = _scheduler_after(3, **flags)
    rate = optimizer.param_groups[0]["lr"]
    assert resume_schedule(scheduler, TrainConfig(dataset="x", **flags)) is None
    assert optimizer.param_groups[0]["lr"] == rate


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
    assert (clamped["x_hat"] - decoded).abs().max() < 1e-5  # 5.4e-7 measured
    assert (plain - decoded).abs().max() > 0.1
    assert clamped["range_loss"] > 0


def test_range_loss_is_added_with_the_distortion_weight(fresh_model):
    x = photo_tensor("astronaut", 64, 64, top=200, left=200)
    out = fresh_model(x, decoder_clamp=True)
    terms = RateDistortionLoss(0.01, "mse")(out, x)
    expected = 0.01 * 255**2 * (terms["mse_loss"] + terms["range_loss"]) + terms["bpp_loss"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert "range_loss" not in RateDistortionLoss(0.01, "mse")(fresh_model(x), x)


def test_averaged_weights_are_the_mean_and_load_as_a_model(tiny_checkpoint, tmp_path):
    """tools/average_weights.py: float tensors averaged, integer coder tables kept, the result loads."""
    from models import load_checkpoint, read_checkpoint
    from tools.average_weights import main

    original = read_checkpoint(tiny_checkpoint)
    shifted = {k: v + 1 if v.is_floating_point() else v for k, v in original["state_dict"].items()}
    second = tmp_path / "shifted.pth.tar"
    torch.save({**original, "state_dict": shifted}, second)
    out = tmp_path / "mean.pth.tar"
    assert main([str(tiny_checkpoint), str(second), "-o", str(out)]) == 0
    averaged = read_checkpoint(out)["state_dict"]
    for key, value in original["state_dict"].items():
        expected = ((value.double() + shifted[key].double()) / 2).to(value.dtype) if value.is_floating_point() else value
        assert torch.allclose(averaged[key], expected), key
    load_checkpoint(out)


def test_averaging_checkpoints_of_two_models_is_refused(tiny_checkpoint, tmp_path):
    from models import read_checkpoint
    from tools.average_weights import main
    from utils.errors import UserError

    original = read_checkpoint(tiny_checkpoint)
    fewer = dict(original["state_dict"])
    fewer.pop(next(iter(fewer)))
    other = tmp_path / "other.pth.tar"
    torch.save({"state_dict": fewer}, other)
    with pytest.raises(UserError, match="other keys"):
        main([str(tiny_checkpoint), str(other), "-o", str(tmp_path / "x.pth.tar")])
    assert not (tmp_path / "x.pth.tar").exists()
