"""The training phases as units: ``train_step`` (one optimisation step) and ``TrainState`` (what a
checkpoint saves and a resume restores). The whole loop is exercised end to end in test_train.py."""

from __future__ import annotations

import math

import pytest
import torch

from losses import RateDistortionLoss
from models import ICWEM, get_config
from utils.training import TrainConfig, TrainState, train_step
from utils.training.setup import new_state

pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_state(**overrides) -> TrainState:
    torch.manual_seed(0)
    model = ICWEM(**get_config("tiny"))
    return new_state(TrainConfig(dataset="", **overrides), model, model.config)


def weights(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_a_step_updates_the_weights_and_reports_the_loss_terms(batch):
    state = fresh_state()
    before = weights(state.model)
    result = train_step(state.model, batch, RateDistortionLoss(0.05), state)
    assert not result.skipped and result.flags == []
    assert {"loss", "bpp_loss", "mse_loss", "aux_loss"} <= set(result.terms)
    after = state.model.state_dict()
    assert not torch.equal(before["g_a.0.conv1.weight"], after["g_a.0.conv1.weight"])  # main Adam stepped
    assert not torch.equal(before["entropy_bottleneck.quantiles"], after["entropy_bottleneck.quantiles"])  # aux Adam


def test_a_step_the_ranks_call_nonfinite_is_skipped_and_changes_nothing(batch):
    state = fresh_state()
    before = weights(state.model)
    seen = []

    def agree(flags):
        seen.append(list(flags))
        return [1.0, *flags[1:]]  # as if another rank had a non-finite loss

    result = train_step(state.model, batch, RateDistortionLoss(0.05), state, agree=agree, flags=lambda: [0.0, 1.0])
    assert result.skipped and result.flags == [0.0, 1.0] and "aux_loss" not in result.terms
    assert seen == [[0.0, 0.0, 1.0]]  # this rank's loss was finite; the extra flags follow it
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in state.model.parameters())


def test_state_dict_keeps_the_originals_keys_and_the_position(batch):
    state = fresh_state()
    state.epoch, state.samples_done, state.step, state.skipped_steps = 3, 4, 17, 1
    state.record_test_loss(2.5)
    mid = state.state_dict({"lmbda": 0.05}, ["rng"], batch_size=2, world_size=1, epoch_done=False)
    assert list(mid)[:6] == ["epoch", "state_dict", "loss", "optimizer", "aux_optimizer", "lr_scheduler"]
    assert mid["data_position"] == {"epoch": 3, "samples": 4, "batch_size": 2, "world_size": 1}
    assert (mid["epoch"], mid["loss"], mid["best_loss"], mid["step"], mid["skipped_steps"]) == (3, 2.5, 2.5, 17, 1)
    end = state.state_dict({}, [], batch_size=2, world_size=1, epoch_done=True)
    assert end["data_position"]["epoch"] == 4 and end["data_position"]["samples"] == 0
    assert "scaler" not in end  # only --amp fp16 has a live gradient scaler


def test_load_restores_what_state_dict_saved(batch):
    trained = fresh_state()
    train_step(trained.model, batch, RateDistortionLoss(0.05), trained)
    trained.epoch, trained.samples_done, trained.step = 2, 6, 9
    trained.record_test_loss(1.25)
    checkpoint = trained.state_dict({}, [], batch_size=2, world_size=1, epoch_done=False)

    resumed = fresh_state()
    resumed.load_optimizers(checkpoint)
    notes = resumed.load_counters(checkpoint, batch_size=2, world_size=1, samples_per_epoch=8)
    assert notes == []
    assert (resumed.epoch, resumed.samples_done, resumed.step, resumed.best_loss) == (2, 6, 9, 1.25)
    assert resumed.optimizer.state_dict()["state"].keys() == trained.optimizer.state_dict()["state"].keys()


def test_an_original_checkpoint_resumes_at_the_next_epoch():
    state = fresh_state()
    state.load_counters({"epoch": 4, "loss": 0.5}, batch_size=2, world_size=1, samples_per_epoch=8)
    assert (state.epoch, state.samples_done, state.step, state.best_loss, state.last_test_loss) == (5, 0, 0, math.inf, 0.5)


def test_a_changed_process_count_continues_the_data_order_approximately():
    state = fresh_state()
    checkpoint = {"epoch": 1, "data_position": {"epoch": 1, "samples": 6, "batch_size": 2, "world_size": 2}}
    notes = state.load_counters(checkpoint, batch_size=2, world_size=4, samples_per_epoch=8)
    assert state.samples_done == 3 and len(notes) == 1 and "approximately" in notes[0]
