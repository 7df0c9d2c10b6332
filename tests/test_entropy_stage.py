"""The entropy stage (utils/training/entropy_stage.py, tools/entropy_stage.py): the entropy model learns the
rate of whole-picture latents while the transforms and the LRP networks stay exactly as they were."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import write_photo
from utils.coding.forward import estimate
from utils.training.entropy_stage import (
    ENTROPY_MODULES, EntropyStageConfig, entropy_parameters, picture_latents, train_entropy_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FROZEN = ("g_a", "g_s", "enh", "inv", "lrp_transforms")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    write_photo(root / "train" / "astronaut.png", "astronaut", 0, 128, 128, 192)
    write_photo(root / "train" / "coffee.png", "coffee", 100, 160, 128, 128)
    write_photo(root / "train" / "small.png", "rocket", 200, 300, 48, 40)  # under one 64-px block: left out
    return root


def _state(model, prefixes):
    return {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in prefixes}


def test_the_stage_lowers_the_rate_and_leaves_everything_else_as_it_was(tiny_model, pictures):
    from utils.image_io import find_images, read_image

    model = copy.deepcopy(tiny_model)
    paths = find_images(pictures / "train")
    latents = picture_latents(model, paths)
    assert len(latents) == 2 * 6  # two pictures in six channel orders; the small one left out
    assert latents[0].shape[-2:] == (128 // 16, 192 // 16)
    rgb = read_image(paths[0])[0]
    bpp_before, picture_before, _ = estimate(model, rgb)
    frozen, entropy = _state(model, FROZEN), _state(model, ENTROPY_MODULES)

    steps = train_entropy_model(model, latents, EntropyStageConfig(steps=30, learning_rate=1e-3, batch_size=4, crop=64))

    assert steps == 30 and not model.training
    assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # transforms and LRP: bit for bit
    changed = [k for k, v in entropy.items() if v.is_floating_point() and not torch.equal(after[k], v)]
    assert len(changed) >= len(entropy_parameters(model)) // 2
    bpp_after, picture_after, _ = estimate(model, rgb)
    assert bpp_after < 0.9 * bpp_before, (bpp_before, bpp_after)
    # The coder's tables follow the new entropy model: a real file is as long as the estimate says.
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        coded = model.compress(x)
    nbytes = sum(len(s) for strings in coded["strings"] for s in strings)
    assert nbytes * 8 / (rgb.shape[0] * rgb.shape[1]) == pytest.approx(bpp_after, rel=0.15)
    assert picture_after.shape == picture_before.shape


def test_the_tool_writes_a_weights_file_with_its_record(tiny_checkpoint, pictures, tmp_path):
    from models import load_checkpoint, read_checkpoint
    from tools.entropy_stage import main

    out = tmp_path / "stage.pth.tar"
    assert main([str(tiny_checkpoint), "--data", str(pictures), "-o", str(out), "--steps", "3", "--crop", "64"]) == 0
    record = read_checkpoint(out)["entropy_stage"]
    assert record["steps"] == 3 and record["pictures"] == 2 and record["crop"] == 64
    stored, source = read_checkpoint(out)["state_dict"], read_checkpoint(tiny_checkpoint)["state_dict"]
    assert all(torch.equal(stored[k], v) for k, v in source.items() if not v.is_floating_point())  # the tables kept
    model, original = load_checkpoint(out), load_checkpoint(tiny_checkpoint)
    for name in FROZEN:
        for (key, value), (_, before) in zip(getattr(model, name).state_dict().items(),
                                             getattr(original, name).state_dict().items()):
            assert torch.equal(value, before), f"{name}.{key}"


def test_pictures_smaller_than_the_crop_are_refused_in_one_line(tiny_checkpoint, pictures, tmp_path):
    from tools.entropy_stage import main
    from utils.errors import UserError

    with pytest.raises(UserError, match="lower --crop"):
        main([str(tiny_checkpoint), "--data", str(pictures), "-o", str(tmp_path / "x.pth.tar"), "--steps", "1",
              "--crop", "256"])
    assert not (tmp_path / "x.pth.tar").exists()


def test_the_tile_study_prints_each_tile_size_and_the_whole_photo(tiny_checkpoint, pictures, capsys):
    from tools.tile_study import code_in_tiles, main
    from models import load_checkpoint
    from utils.image_io import read_image

    assert main([str(tiny_checkpoint), "--data", str(pictures / "train" / "coffee.png"), "--tiles", "64"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[1] for row in rows] == ["64", "whole"]
    # One tile as large as the photo is the whole photo.
    model, rgb = load_checkpoint(tiny_checkpoint), read_image(pictures / "train" / "coffee.png")[0]
    assert code_in_tiles(model, rgb, 128) == pytest.approx(code_in_tiles(model, rgb, None))
    assert float(rows[1][2]) == pytest.approx(code_in_tiles(model, rgb, None)[0], abs=1e-4)
