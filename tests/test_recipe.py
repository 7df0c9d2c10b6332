"""The small-data training recipe: multi-scale crops and flips, repeats, the cosine schedule, and training
on the decoder's picture (``--decoder-clamp``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo, photo_tensor
from datasets import ImageFolder
from datasets.images import _random_rescale_and_flip
from losses import RateDistortionLoss
from utils.training import COSINE_FINAL_FACTOR, TrainConfig, make_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "test"):
        (root / split).mkdir()
        Image.fromarray(photo("astronaut")[:256, :320]).save(root / split / "astronaut.png")
    return root


def test_augmented_crops_are_seeded_and_differ(photos):
    augmented = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=3, augment=True, repeat=40)
    again = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=3, augment=True, repeat=40)
    assert len(augmented) == 40 and len(ImageFolder(photos, "train", (64, 64), random_crop=True)) == 1
    crops = [augmented[i] for i in range(40)]
    assert all(torch.equal(c, again[i]) for i, c in enumerate(crops))  # a function of (seed, epoch, index)
    assert all(c.shape == (3, 64, 64) for c in crops)
    assert len({c.sum().item() for c in crops}) == 40  # each repeat is a different crop


def test_rescaling_spans_the_scales_and_flips_half_the_time():
    img = photo("astronaut")[:256, :320]
    scales, flips = [], 0
    for seed in range(200):
        out = _random_rescale_and_flip(img, 64, 64, np.random.default_rng(seed))
        scales.append(out.shape[0] / img.shape[0])
        if out.shape == img.shape:  # not shrunk: either the image itself or its mirror
            flips += not np.array_equal(out, img)
            assert np.array_equal(out, img) or np.array_equal(out, img[:, ::-1])
    assert min(scales) >= 64 / 256 - 1e-9 and max(scales) <= 1
    assert min(scales) < 0.35 and sum(s < 0.6 for s in scales) > 50  # log-uniform down to the floor
    img_small = photo("astronaut")[:64, :64]
    mirrored = sum(not np.array_equal(_random_rescale_and_flip(img_small, 64, 64, np.random.default_rng(s)), img_small)
                   for s in range(200))
    assert 70 < mirrored < 130  # a patch-sized image is never shrunk, only flipped, about half the time


def test_without_augment_the_crops_are_unchanged(photos):
    a = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=5)
    b = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=5, augment=False, repeat=3)
    assert torch.equal(a[0], b[0])


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
