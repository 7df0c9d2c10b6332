"""Datasets: image folders in CompressAI's layout, crops that are functions of (seed, epoch, index), the
augmentation of the small-data recipe, unreadable files, and the sharded sampler of exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo, write_photo
from datasets import ImageFolder, ShardedEpochSampler
from datasets.images import CHANNEL_ORDERS, _random_rescale_and_orient
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_crops_are_a_function_of_seed_epoch_and_index(data):
    dataset = ImageFolder(data, "train", (64, 64), random_crop=True, seed=7)
    again = ImageFolder(data, "train", (64, 64), random_crop=True, seed=7)
    assert [p.name for p in dataset.files] == ["astronaut.png", "chelsea.png", "coffee.PNG", "small.png"]
    dataset.set_epoch(3)
    again.set_epoch(3)
    assert torch.equal(dataset[0], again[0])
    again.set_epoch(4)
    assert not torch.equal(dataset[0], again[0])
    assert dataset[0].shape == (3, 64, 64) and dataset[0].dtype == torch.float32


def test_images_smaller_than_the_patch_are_padded_not_dropped(data):
    dataset = ImageFolder(data, "train", (64, 64), random_crop=True)
    small = dataset[[p.name for p in dataset.files].index("small.png")]
    assert small.shape == (3, 64, 64)
    original = torch.from_numpy(photo("rocket")[200:248, 300:340]).permute(2, 0, 1).float() / 255
    assert torch.equal(small[:, 8:56, 12:52], original)  # centred, reflected around


def test_test_split_is_centre_cropped(data):
    dataset = ImageFolder(data, "test", (64, 64), random_crop=False)
    expected = torch.from_numpy(photo("astronaut")[168:232, 188:252]).permute(2, 0, 1).float() / 255
    assert torch.equal(dataset[0], expected)


def test_unreadable_images_are_reported_once_and_skipped(tmp_path, capsys):
    write_photo(tmp_path / "train" / "good.png", "coffee", 0, 0, 64, 64)
    (tmp_path / "train" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "train" / "empty.png").write_bytes(b"")
    dataset = ImageFolder(tmp_path, "train", (64, 64), random_crop=True)
    assert [p.name for p in dataset.files] == ["good.png"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and any("broken.jpg" in w for w in warnings)


def test_image_with_corrupt_pixels_is_replaced_by_the_next_one(tmp_path, capsys):
    write_photo(tmp_path / "train" / "a_good.png", "coffee", 0, 0, 64, 64)
    write_photo(tmp_path / "train" / "b_truncated.png", "chelsea", 0, 0, 64, 64)
    truncated = tmp_path / "train" / "b_truncated.png"
    truncated.write_bytes(truncated.read_bytes()[:200])  # the header parses, the pixels do not
    dataset = ImageFolder(tmp_path, "train", (64, 64), random_crop=False)
    assert len(dataset) == 2
    assert torch.equal(dataset[1], dataset[0]) and torch.equal(dataset[1], dataset[0])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "b_truncated.png" in warnings[0]


def test_missing_split_names_the_folder(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "test")):
        ImageFolder(tmp_path, "test", (64, 64), random_crop=False)


def test_sampler_shards_cover_the_epoch_and_resume_mid_epoch():
    shards = [ShardedEpochSampler(10, shuffle=True, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(5)
    orders = [list(s) for s in shards]
    assert all(len(o) == 4 for o in orders)  # padded to the same length on every rank
    assert set(sum(orders, [])) == set(range(10))
    resumed = ShardedEpochSampler(10, shuffle=True, seed=1, rank=1, world_size=3)
    resumed.set_epoch(5, start=2)
    assert list(resumed) == orders[1][2:] and len(resumed) == 2
    test_shards = [list(ShardedEpochSampler(10, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(sum(test_shards, [])) == list(range(10))  # every test image exactly once


# ------------------------------------------------------------------------------------- augmentation


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


def test_rescaling_spans_the_scales_and_keeps_the_patch_in_either_orientation():
    img = photo("astronaut")[:256, :320]
    scales = []
    for seed in range(200):
        out = _random_rescale_and_orient(img, 64, 64, np.random.default_rng(seed))
        scales.append(min(out.shape[:2]) / 256)
        assert abs(max(out.shape[:2]) - 320 * scales[-1]) < 1.5  # shrunk as a whole, perhaps turned
    assert min(scales) >= 64 / 256 - 1e-9 and max(scales) <= 1
    assert min(scales) < 0.35 and sum(s < 0.6 for s in scales) > 50  # log-uniform down to the floor
    for seed in range(40):  # a tall patch still fits once the picture is turned on its side
        out = _random_rescale_and_orient(img, 96, 32, np.random.default_rng(seed))
        assert min(out.shape[:2]) >= 96


def test_a_patch_sized_image_takes_each_of_its_eight_orientations_about_equally():
    img = photo("astronaut")[:64, :64]
    orientations = [np.rot90(m, k) for m in (img, img[:, ::-1]) for k in range(4)]
    counts = [0] * 8
    for seed in range(400):
        out = _random_rescale_and_orient(img, 64, 64, np.random.default_rng(seed))
        matches = [i for i, o in enumerate(orientations) if np.array_equal(out, o)]
        assert len(matches) == 1  # never shrunk, only laid on the grid another way
        counts[matches[0]] += 1
    assert all(25 < c < 80 for c in counts), counts  # 50 each on average


def test_without_augment_the_crops_are_unchanged(photos):
    a = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=5)
    b = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=5, augment=False, repeat=3)
    assert torch.equal(a[0], b[0])


def test_colour_augment_permutes_the_channels_of_the_same_crop(photos):
    plain = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=9, repeat=60)
    coloured = ImageFolder(photos, "train", (64, 64), random_crop=True, seed=9, repeat=60, colour_augment=True)
    seen = set()
    for i in range(60):
        crop, permuted = plain[i], coloured[i]
        orders = [o for o in CHANNEL_ORDERS if torch.equal(crop[list(o)], permuted)]
        assert orders, f"crop {i} is not a channel permutation of the plain crop"
        seen.add(orders[0])
    assert seen == set(CHANNEL_ORDERS)  # all six orders occur
