"""Encode-time refinement (models/refine.py, codec.py encode --refine): better latents, the same decoder.

The tiny preset with the original's fixture weights on a 64x64 crop keeps each refinement to seconds;
the shipped model codes the file that another machine setup must decode the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models.refine as refine_module
from models import load_checkpoint
from models.checkpoint import trained_lambda
from models.refine import RefineOptions, check_size, objective, refine_latents, sga_round
from tests.conftest import load_script, photo, run_in_process
from tests.test_portable import _DECODER, DECODER_CAPABILITY, DECODER_SETUPS
from utils.coding.bitstream import pack, unpack
from utils.coding.codec import decode_bitstream, encode_image
from utils.errors import UserError
from utils.image_io import to_tensor
from utils.metrics import psnr

ROOT = Path(__file__).resolve().parent.parent
CODEC = load_script("codec")
LMBDA = 0.01  # the fixture's weights are synthetic and record no λ
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.ascontiguousarray(photo("astronaut")[100:164, 150:214])


@pytest.fixture(scope="module")
def latents(tiny_model, rgb):
    """The padded image and the encoder's latents, as compress computes them."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = tiny_model.analysis(x)
        return x, y, tiny_model.h_a(y)


@pytest.fixture(scope="module")
def refined(tiny_model, latents):
    x, y, z = latents
    return refine_latents(tiny_model, x, y, z, LMBDA, iterations=4, seed=0, check_every=2)


def _strings(out: dict) -> list:
    return [out["strings"], out["checks"]]


def test_sga_rounding_stays_between_the_neighbours_and_becomes_round_as_tau_falls():
    u = torch.empty(10_000).uniform_(-5, 5)
    soft = sga_round(u, 0.5, torch.Generator().manual_seed(0))
    assert torch.all((soft >= torch.floor(u)) & (soft <= torch.ceil(u)))
    away_from_halves = (u - torch.floor(u) - 0.5).abs() > 0.05
    hard = sga_round(u, 0.01, torch.Generator().manual_seed(0))
    assert torch.equal(hard[away_from_halves], torch.round(u)[away_from_halves])


def test_sga_rounding_passes_a_gradient_to_its_input():
    u = torch.tensor([0.3, 1.45, -2.6], requires_grad=True)
    sga_round(u, 0.5, torch.Generator().manual_seed(0)).sum().backward()
    assert torch.all(u.grad > 0)


def test_zero_iterations_code_the_plain_bytes(tiny_model, latents):
    x, y, z = latents
    result = refine_latents(tiny_model, x, y, z, LMBDA, iterations=0)
    assert result.iterations == 0 and result.best_iteration == 0 and result.objective == result.initial
    with torch.inference_mode():
        assert _strings(tiny_model.compress_latents(result.y, result.z)) == _strings(tiny_model.compress(x))


def test_zero_refine_iterations_write_the_plain_file(tiny_model, rgb):
    plain, _ = encode_image(tiny_model, rgb)
    zero, stats = encode_image(tiny_model, rgb, RefineOptions(0, LMBDA))
    assert pack(zero) == pack(plain) and "refine" not in stats


def test_refinement_never_raises_the_objective_it_optimises(tiny_model, latents, refined):
    x, _, _ = latents
    assert refined.iterations == 4
    assert refined.objective <= refined.initial
    with torch.no_grad():  # the returned latents score what was reported, rounded as the coder rounds
        value = objective(tiny_model, x, refined.y, refined.z, LMBDA, tuple(x.shape[-2:]))[0]
    assert float(value) == pytest.approx(refined.objective, rel=1e-5)


def test_sga_refinement_never_raises_its_objective_either(tiny_model, latents):
    x, y, z = latents
    result = refine_latents(tiny_model, x, y, z, LMBDA, iterations=4, seed=0, check_every=2, surrogate="sga")
    assert result.objective <= result.initial and result.iterations == 4
    with torch.no_grad():
        value = objective(tiny_model, x, result.y, result.z, LMBDA, tuple(x.shape[-2:]))[0]
    assert float(value) == pytest.approx(result.objective, rel=1e-5)


def test_refinement_lowers_the_objective_of_the_fixture_model(refined):
    assert refined.objective < refined.initial and refined.best_iteration > 0


def test_a_refinement_repeats_exactly(tiny_model, latents, refined):
    x, y, z = latents
    again = refine_latents(tiny_model, x, y, z, LMBDA, iterations=4, seed=0, check_every=2)
    assert torch.equal(again.y, refined.y) and torch.equal(again.z, refined.z)
    assert again.objective == refined.objective


def test_when_no_iterate_beats_the_encoder_its_own_latents_come_back(tiny_model, latents):
    x, y, z = latents
    # Steps of ±1000, scored almost by rate alone (λ 1e-6): every iterate costs more bits than the encoder's.
    wild = refine_latents(tiny_model, x, y, z, 1e-6, iterations=2, lr=1e3, check_every=1)
    assert wild.best_iteration == 0 and wild.objective == wild.initial
    assert wild.y is not y and torch.equal(wild.y, y) and torch.equal(wild.z, z)


def test_weights_stay_as_they_were(tiny_model, refined):
    assert all(p.requires_grad and p.grad is None for p in tiny_model.parameters())


def test_a_spent_time_budget_returns_the_encoders_latents(tiny_model, latents):
    x, y, z = latents
    result = refine_latents(tiny_model, x, y, z, LMBDA, iterations=100, max_seconds=1e-9)
    assert result.iterations == 0 and torch.equal(result.y, y)


def test_a_refined_file_decodes_with_the_plain_decoder_to_the_refined_picture(tiny_model, rgb):
    bs, stats = encode_image(tiny_model, rgb, RefineOptions(2, LMBDA, seed=0))
    decoded, _ = decode_bitstream(tiny_model, unpack(pack(bs)))  # the coder check holds
    refinement = stats["refine"]
    assert refinement.objective < refinement.initial
    expected_psnr = 10 * np.log10(1 / refinement.mse)  # the refinement's own (float) picture
    assert psnr(to_tensor(rgb), to_tensor(decoded)) == pytest.approx(expected_psnr, abs=0.05)


def test_a_refined_file_decodes_the_same_in_another_setup(spread_checkpoint, tmp_path):
    """The decoder process of tests/test_portable.py: other SIMD kernels, 2 threads, oneDNN off."""
    model = load_checkpoint(spread_checkpoint)
    rgb = np.ascontiguousarray(photo("chelsea")[100:164, 200:328])
    bs, stats = encode_image(model, rgb, RefineOptions(3, LMBDA, seed=0))
    assert stats["refine"].best_iteration > 0  # other symbols than the plain file's
    path = tmp_path / "refined.icwem"
    path.write_bytes(pack(bs))
    reference, _ = decode_bitstream(model, unpack(path.read_bytes()))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=DECODER_CAPABILITY, OMP_NUM_THREADS="2")
    setups = ",".join(f"{threads}:{int(dnn)}:1" for threads, dnn, _ in DECODER_SETUPS)
    result = subprocess.run([sys.executable, "-c", _DECODER, str(spread_checkpoint), setups, str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[1:1 + len(DECODER_SETUPS)] == ["decoded"] * len(DECODER_SETUPS)
    for threads, dnn, _ in DECODER_SETUPS:
        decoded = np.load(f"{path}.{threads}-{int(dnn)}.npy")
        assert np.abs(decoded.astype(np.int16) - reference.astype(np.int16)).max() <= 1


# ------------------------------------------------------------------------------------------ codec.py
def test_codec_encode_refine_writes_a_file_that_codec_decode_reads(tmp_path, tiny_checkpoint, rgb):
    Image.fromarray(rgb).save(tmp_path / "in.png")
    encoded = run_in_process(["codec.py", "encode", tmp_path / "in.png", "-o", tmp_path / "in.icwem",
                              "--checkpoint", tiny_checkpoint, "--refine", 2, "--refine-lambda", LMBDA])
    assert encoded.returncode == 0, encoded.stderr
    assert "refined for 2 iterations" in encoded.stdout
    decoded = run_in_process(["codec.py", "decode", tmp_path / "in.icwem", "-o", tmp_path / "out.png",
                              "--checkpoint", tiny_checkpoint])
    assert decoded.returncode == 0, decoded.stderr
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == (64, 64)


def test_an_image_above_the_refine_limit_is_refused_in_one_line(tmp_path, tiny_checkpoint, rgb, monkeypatch):
    monkeypatch.setattr(refine_module, "MEMORY_BUDGET_GIB", 1.5 * 64 * 64 / 1e6 * refine_module.GIB_PER_MEGAPIXEL["tiny"])
    Image.fromarray(np.ascontiguousarray(photo("astronaut")[:65, :64])).save(tmp_path / "big.png")  # pads to 128x64
    result = run_in_process(["codec.py", "encode", tmp_path / "big.png", "-o", tmp_path / "big.icwem",
                             "--checkpoint", tiny_checkpoint, "--refine", 5, "--refine-lambda", LMBDA])
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "--refine" in result.stderr and "limit" in result.stderr
    assert not (tmp_path / "big.icwem").exists()


def test_the_shipped_models_refine_a_megapixel_image_and_refuse_a_larger_one(trained_checkpoint):
    model = load_checkpoint(trained_checkpoint)
    check_size(model, 1024, 1024)
    with pytest.raises(UserError, match="--refine: 2048x1024 pixels"):
        check_size(model, 1024, 2048)


def test_a_checkpoint_without_its_lambda_asks_for_refine_lambda_in_one_line(tmp_path, tiny_checkpoint, rgb):
    Image.fromarray(rgb).save(tmp_path / "in.png")
    result = run_in_process(["codec.py", "encode", tmp_path / "in.png", "-o", tmp_path / "in.icwem",
                             "--checkpoint", tiny_checkpoint, "--refine", 1])
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "--refine-lambda" in result.stderr


def test_eval_and_test_refine_only_real_files(tmp_path, tiny_checkpoint, rgb):
    Image.fromarray(rgb).save(tmp_path / "in.png")
    for script in ("eval.py", "test.py"):
        result = run_in_process([script, "--checkpoint", tiny_checkpoint, "--data", tmp_path / "in.png", "--refine", 1])
        assert result.returncode == 1 and "--refine needs --real" in result.stderr


def test_the_trained_lambda_comes_from_the_checkpoint():
    assert trained_lambda({"state_dict": {}, "lambda": 0.004}) == 0.004  # a shipped file
    assert trained_lambda({"state_dict": {}, "args": {"lmbda": 0.013, "type": "mse"}}) == 0.013  # train.py's
    assert trained_lambda({"state_dict": {}, "args": {"lmbda": 3.0, "type": "ms-ssim"}}) is None  # not an MSE λ
    assert trained_lambda({"state_dict": {}, "lambda": float("nan")}) is None
    assert trained_lambda({"state_dict": {}}) is None  # a published file
    assert load_checkpoint("icwem-small-q1").lmbda == 0.0003
