"""Variable rate (models/variable_rate.py): one model for a range of qualities, off by default.

Fixed-rate models are untouched: no gain, no key, no field, the same bytes (the fixture's strings are
checked byte for byte in tests/test_model.py). A variable-rate model's gains rise strictly with the
quality, its files record the quality (format version 4) and decode to the encoder's ŷ, and a crafted
quality is one clear error. All on the tiny preset and 64×64 crops.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from conftest import TINY, photo, photo_tensor, run_in_process
from models import ICWEM, config_from_state_dict, get_config, load_checkpoint
from models.checkpoint import variable_rate_from_fixed
from models.config import PRESETS, ModelConfig
from models.variable_rate import RateGain, RateSchedule
from utils.coding.bitstream import VARIABLE_RATE_VERSION, VERSION, pack, unpack
from utils.coding.codec import decode_bitstream, encode_image
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

LAMBDAS = (0.0025, 0.005, 0.01, 0.02, 0.04)  # the fixture's weights count as trained for the middle one


def fixture_weights() -> dict:
    return torch.load(TINY / "weights.pt", weights_only=True)


@pytest.fixture(scope="module")
def vr_model() -> ICWEM:
    """The fixture's weights as a 5-point variable-rate model, gains sqrt(λ_k / 0.01), eval mode."""
    cfg = dict(get_config("tiny"), rate_points=len(LAMBDAS))
    model = variable_rate_from_fixed(fixture_weights(), cfg, LAMBDAS, 0.01).eval()
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def vr_checkpoint(vr_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("vr") / "icwem-tiny-vr.pth.tar"
    torch.save({"state_dict": vr_model.state_dict(), "model_config": vr_model.config}, path)
    return path


# ---------------------------------------------------------------------------------------------- off by default
def test_fixed_rate_configurations_have_no_variable_rate_fields():
    assert "rate_points" not in ModelConfig().as_dict() and "rate_gain" not in ModelConfig().as_dict()
    assert all("rate_points" not in cfg for cfg in PRESETS.values())
    assert "rate_points" in ModelConfig(rate_points=3).as_dict()


def test_fixed_rate_state_dict_keys_are_the_fixtures():
    expected = {line.split()[0] for line in (TINY / "state_dict_keys.txt").read_text().splitlines() if line.strip()}
    assert set(ICWEM(**get_config("tiny")).state_dict()) == expected


def test_a_fixed_rate_model_refuses_a_quality(tiny_model):
    with pytest.raises(ValueError, match="fixed-rate"):
        tiny_model(photo_tensor(h=64, w=64), quality=2.0)


def test_a_variable_rate_model_adds_only_its_gains_and_is_inferred_from_them(vr_model):
    fixed = set(ICWEM(**get_config("tiny")).state_dict())
    assert set(vr_model.state_dict()) - fixed == {"rate_gain.log_base", "rate_gain.log_steps"}
    assert config_from_state_dict(vr_model.state_dict()) == {**get_config("tiny"), "rate_points": 5, "rate_gain": "channel"}
    scalar = ICWEM(**get_config("tiny"), rate_points=3, rate_gain="scalar")
    assert config_from_state_dict(scalar.state_dict())["rate_gain"] == "scalar"


def test_warm_start_keeps_every_fixed_rate_weight(vr_model):
    weights = fixture_weights()
    state = vr_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items() if not k.endswith(("_quantized_cdf", "_offset", "_cdf_length", "scale_table")))


# ---------------------------------------------------------------------------------------------- gains
def test_gains_rise_strictly_with_quality_whatever_the_parameters():
    gain = RateGain(4, 6)
    with torch.no_grad():
        gain.log_base.normal_()
        gain.log_steps.normal_(std=3.0)  # softplus keeps every step positive, however small
    values = torch.stack([gain(q) for q in np.arange(1, 4.0001, 0.25)])
    assert bool((values[1:] > values[:-1]).all())


def test_gains_interpolate_log_linearly_between_rate_points():
    gain = RateGain(3, 2)
    with torch.no_grad():
        gain.log_steps.normal_()
    points = gain.log_gains().exp()
    assert torch.equal(gain(2.0), points[1]) and torch.equal(gain(3.0), points[2])
    assert torch.allclose(gain(1.5), (points[0] * points[1]).sqrt(), rtol=1e-12)


def test_gains_start_at_the_square_root_of_the_lambda_ratio():
    gain = RateGain(5, 1)
    gain.init_from_lambdas(LAMBDAS, reference=0.01)
    assert torch.allclose(gain.log_gains().exp()[:, 0], torch.tensor([math.sqrt(v / 0.01) for v in LAMBDAS],
                                                                      dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("quality", [0.999, 5.001, math.nan, math.inf])
def test_a_quality_outside_the_range_is_refused(quality):
    with pytest.raises(ValueError, match="quality"):
        RateGain(5, 1)(quality)


def test_the_schedule_draws_qualities_and_interpolates_lambda():
    rates = RateSchedule(LAMBDAS, seed=3)
    assert [rates.lmbda(k) for k in range(1, 6)] == list(LAMBDAS)
    assert rates.lmbda(1.5) == pytest.approx(math.sqrt(LAMBDAS[0] * LAMBDAS[1]), rel=1e-12)
    draws = [rates.quality(step) for step in range(200)]
    assert all(1 <= q <= 5 for q in draws) and draws == [RateSchedule(LAMBDAS, seed=3).quality(s) for s in range(200)]
    assert min(draws) < 1.5 and max(draws) > 4.5
    with pytest.raises(ValueError, match="rising"):
        RateSchedule([0.01, 0.005])


# ---------------------------------------------------------------------------------------------- coding
def _y_hat_of_forward(model: ICWEM, x: torch.Tensor, quality: float) -> torch.Tensor:
    """The ŷ that the forward pass hands to g_s (with autograd on, synthesis calls g_s itself)."""
    seen = []
    handle = model.g_s.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.enable_grad():
            model(x, quality=quality)
    finally:
        handle.remove()
    return seen[0]


def test_decoding_at_a_fractional_quality_gives_the_encoders_and_the_forward_passs_y_hat(vr_model):
    x = photo_tensor(h=64, w=64, top=100, left=180)
    with torch.inference_mode():
        out = vr_model.compress(x, return_y_hat=True, quality=2.5)
        decoded = vr_model.decompress(out["strings"], out["shape"], quality=2.5)
    assert torch.equal(decoded["y_hat"], out["y_hat"]) and decoded["checks"] == out["checks"]
    forward = _y_hat_of_forward(vr_model, x, 2.5)
    # float32 against float64 entropy parameters: the same symbols, ŷ equal to float32 rounding (4.8e-7 measured)
    assert torch.allclose(forward, out["y_hat"], atol=5e-6, rtol=0)


def test_decoding_at_another_quality_fails_the_coder_check(vr_model):
    x = photo_tensor(h=64, w=64, top=100, left=180)
    with torch.inference_mode():
        out = vr_model.compress(x, quality=2.5)
        wrong = vr_model.decompress(out["strings"], out["shape"], quality=3.0)
    assert wrong["checks"] != out["checks"]  # the quality is in the check: a wrong one never passes as a picture


def test_rate_rises_strictly_with_quality_in_half_steps(vr_model):
    rgb = photo("astronaut")[100:164, 180:244]
    sizes = [len(pack(encode_image(vr_model, rgb, quality=q)[0])) for q in np.arange(1, 5.01, 0.5)]
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes


def test_a_fixed_rate_file_is_version_3_and_a_variable_rate_file_version_4(tiny_model, vr_model):
    rgb = photo("astronaut")[100:164, 180:244]
    fixed, _ = encode_image(tiny_model, rgb)
    assert (fixed.version, fixed.quality) == (VERSION, None) and pack(fixed)[5] == 3
    variable, _ = encode_image(vr_model, rgb, quality=1.5)
    data = pack(variable)
    assert data[5] == VARIABLE_RATE_VERSION and unpack(data) == variable and variable.quality == 1.5
    assert len(data) == len(pack(dataclasses.replace(variable, version=3, quality=None))) + 8
    decoded, _ = decode_bitstream(vr_model, unpack(data))
    assert decoded.shape == rgb.shape
    assert encode_image(vr_model, rgb)[0].quality == 3.0  # the default: the middle of [1, 5]


# ---------------------------------------------------------------------------------------------- hostile files
def _with_quality(data: bytes, quality: float, version: int = VARIABLE_RATE_VERSION) -> bytes:
    """A version-4 file with its quality field replaced (or the version byte), CRC recomputed."""
    body = bytearray(data[:-4])
    body[5] = version
    body[54:62] = struct.pack("<d", quality)
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


@pytest.fixture(scope="module")
def vr_file(vr_model) -> bytes:
    return pack(encode_image(vr_model, photo("astronaut")[100:164, 180:244], quality=2.5)[0])


@pytest.mark.parametrize("quality", [math.nan, math.inf, -math.inf, 0.0, 0.999, -2.5, 255.5, 1e300])
def test_a_crafted_quality_field_is_one_header_error(vr_file, quality):
    with pytest.raises(UserError) as info:
        unpack(_with_quality(vr_file, quality))
    assert str(info.value).startswith("corrupted header: quality") and "\n" not in str(info.value)


@pytest.mark.parametrize("quality, words", [(6.0, "outside [1, 5]"), (3.0, "differ from the encoder's"),
                                            (2.5000001, "differ from the encoder's")])
def test_a_plausible_but_wrong_quality_is_refused_by_the_decoder(vr_model, vr_file, quality, words):
    bs = unpack(_with_quality(vr_file, quality))
    with pytest.raises(UserError, match="corrupted bitstream") as info:
        decode_bitstream(vr_model, bs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_every_bit_flip_of_the_quality_is_refused_even_with_the_crc_recomputed(vr_model, vr_file):
    """Header errors for most flips; the low mantissa bits give a legal Q next to 2.5, which the coder check refuses."""
    (bits,) = struct.unpack_from("<Q", vr_file, 54)
    for bit in range(64):
        (flipped,) = struct.unpack("<d", struct.pack("<Q", bits ^ (1 << bit)))
        with pytest.raises(UserError, match="corrupted") as info:
            decode_bitstream(vr_model, unpack(_with_quality(vr_file, flipped)))
        assert "\n" not in str(info.value)


def test_a_variable_rate_file_without_its_quality_is_refused(vr_model, vr_file):
    bs = dataclasses.replace(unpack(vr_file), version=3, quality=None)
    with pytest.raises(UserError, match="must record its quality"):
        decode_bitstream(vr_model, unpack(pack(bs)))


def test_a_quality_for_a_fixed_rate_model_is_refused(tiny_model):
    rgb = photo("astronaut")[100:164, 180:244]
    bs, _ = encode_image(tiny_model, rgb)
    crafted = dataclasses.replace(bs, version=VARIABLE_RATE_VERSION, quality=2.0)
    with pytest.raises(UserError, match="checkpoint is fixed-rate"):
        decode_bitstream(tiny_model, unpack(pack(crafted)))
    with pytest.raises(UserError, match="variable-rate checkpoint"):
        encode_image(tiny_model, rgb, quality=2.0)


# ---------------------------------------------------------------------------------------------- commands
def test_codec_encodes_at_a_fractional_quality_and_decodes_without_one(vr_checkpoint, tmp_path):
    from PIL import Image

    image = tmp_path / "crop.png"
    Image.fromarray(photo("astronaut")[100:164, 180:244]).save(image)
    out = tmp_path / "crop.icwem"
    encode = run_in_process(["codec.py", "encode", image, "-o", out, "--checkpoint", vr_checkpoint, "--quality", "3.5"])
    assert encode.returncode == 0 and "at quality 3.5" in encode.stdout
    assert out.read_bytes()[5] == VARIABLE_RATE_VERSION
    decode = run_in_process(["codec.py", "decode", out, "-o", tmp_path / "out.png", "--checkpoint", vr_checkpoint])
    assert decode.returncode == 0
    beyond = run_in_process(["codec.py", "encode", image, "-o", out, "--checkpoint", vr_checkpoint, "--quality", "5.5"])
    assert beyond.returncode == 1 and "outside [1, 5]" in beyond.stderr and len(beyond.stderr.strip().splitlines()) == 1


def test_load_checkpoint_builds_the_variable_rate_model(vr_checkpoint, vr_model):
    model = load_checkpoint(vr_checkpoint)
    assert model.rate_points == 5 and model.fingerprint() == vr_model.fingerprint()
    assert model.lmbda is None or model.lmbda > 0


# ---------------------------------------------------------------------------------------------- training
def test_training_with_lambdas_starts_from_a_fixed_rate_checkpoint_and_continues(data, tiny_checkpoint, tmp_path, capsys):
    from utils.training import LATEST, TrainConfig, train

    settings = dict(dataset=str(data), model_config="tiny", patch_size=(64, 64), batch_size=2, test_batch_size=2,
                    num_workers=0, save_path=str(tmp_path), epochs=1, log_every=1, lambdas=list(LAMBDAS),
                    checkpoint=str(tiny_checkpoint), learning_rate=0.0, aux_learning_rate=0.0)
    first = train(TrainConfig(**settings))
    assert first.model.rate_points == 5 and first.step == 2
    expected = variable_rate_from_fixed(fixture_weights(), dict(get_config("tiny"), rate_points=5), LAMBDAS, 0.01)
    state = first.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.state_dict().items() if k.startswith(("rate_gain", "g_a")))
    printed = capsys.readouterr().out
    assert "gain 1 at λ = 0.01" in printed and "per rate point: q1" in printed and "q5 bpp" in printed
    latest = tmp_path / "0.0025-0.04" / LATEST
    assert load_checkpoint(latest).rate_points == 5
    second = train(TrainConfig(**{**settings, "checkpoint": str(latest), "epochs": 2}))
    assert second.step == 4  # continued: its optimizers, epoch and step
    with pytest.raises(UserError, match="variable-rate model: pass --lambdas"):
        train(TrainConfig(**{**settings, "checkpoint": str(latest), "lambdas": None, "epochs": 3}))


def test_eval_sweeps_the_qualities_of_one_checkpoint_into_one_curve(vr_checkpoint, tmp_path):
    from PIL import Image

    image = tmp_path / "crop.png"
    Image.fromarray(photo("astronaut")[100:164, 180:244]).save(image)
    out = tmp_path / "vr.json"
    result = run_in_process(["eval.py", "--checkpoint", vr_checkpoint, "--data", image, "--real", "--quality", "1",
                             "2.5", "5", "--output", out])
    assert result.returncode == 0 and f"{vr_checkpoint} Q2.5" in result.stdout
    bpp = json.loads(out.read_text())["results"]["bpp"]
    assert len(bpp) == 3 and bpp[0] < bpp[1] < bpp[2]
    fixed = run_in_process(["eval.py", "--checkpoint", TINY / "weights.pt", "--data", image, "--quality", "2"])
    assert fixed.returncode == 1 and "fixed-rate" in fixed.stderr


def test_test_py_writes_each_qualitys_files_to_its_own_folder(vr_checkpoint, tmp_path):
    from PIL import Image

    (tmp_path / "data").mkdir()
    Image.fromarray(photo("astronaut")[100:164, 180:244]).save(tmp_path / "data" / "crop.png")
    result = run_in_process(["test.py", "--checkpoint", vr_checkpoint, "--data", tmp_path / "data", "--real",
                             "--quality", "1", "5", "--save-dir", tmp_path / "out"])
    assert result.returncode == 0
    files = [tmp_path / "out" / f"q{q}" / "crop.icwem" for q in (1, 5)]
    assert all(f.is_file() for f in files) and files[0].stat().st_size < files[1].stat().st_size
    assert json.loads((tmp_path / "out" / "q5" / "results.json").read_text())["quality"] == 5.0
    curve = json.loads((tmp_path / "out" / "rd.json").read_text())["results"]
    assert curve["quality"] == [1, 5] and curve["bpp"][0] < curve["bpp"][1]
    assert curve["bpp"][1] == pytest.approx(json.loads((tmp_path / "out" / "q5" / "results.json").read_text())["mean"]["bpp"])


def test_heldout_rd_ranks_each_quality_at_its_lambda_against_the_fixed_rate_checkpoint(vr_model, tmp_path, capsys):
    """tools/heldout_rd.py codes a variable-rate checkpoint at each rate point, ranks each at λ(Q), and sets
    each point beside the fixed-rate checkpoint of the same λ: at its reference λ (gain 1) the variable-rate
    model is that checkpoint, so their R+λD agree; at the other λs it differs."""
    from PIL import Image

    from tools.heldout_rd import main as heldout_rd

    (tmp_path / "photos").mkdir()
    Image.fromarray(photo("astronaut")[100:164, 180:244]).save(tmp_path / "photos" / "crop.png")
    fixed, variable = tmp_path / "fixed.pth.tar", tmp_path / "vr.pth.tar"
    torch.save({"state_dict": fixture_weights(), "args": {"lmbda": 0.01}}, fixed)
    torch.save({"state_dict": vr_model.state_dict(), "model_config": vr_model.config,
                "args": {"lambdas": list(LAMBDAS)}}, variable)
    out = tmp_path / "rd.json"
    assert heldout_rd([str(fixed), str(variable), "--data", str(tmp_path / "photos"), "--orders", "RGB", "BRG",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    points = [m for m in report["models"] if m["quality"] is not None]
    assert [m["quality"] for m in points] == [1, 2, 3, 4, 5] and [m["lambda"] for m in points] == list(LAMBDAS)
    bpp = [m["summary"]["bpp"] for m in points]
    assert all(a < b for a, b in zip(bpp, bpp[1:]))
    assert points[2]["rd_loss_vs_fixed_pct"] == pytest.approx(0, abs=1e-6)
    assert "rd_loss_vs_fixed_pct" not in points[0]  # no fixed-rate checkpoint at that λ
    assert list(report["curves"]) == [str(variable)]  # one fixed-rate point is no curve; five are
    assert "at λ 0.01: R+λD +0.00 %" in capsys.readouterr().out


def test_refinement_codes_at_the_quality_and_ranks_at_its_lambda(vr_model, monkeypatch):
    """--refine on a variable-rate model: the objective is coded in the gain's domain at Q and weighed with
    λ(Q); zero iterations give the plain file, a few never raise the objective, and the file decodes to the
    encoder's ŷ like any other."""
    from models.refine import RefineOptions, objective, trained_lambda_at

    monkeypatch.setattr(vr_model, "lambdas", list(LAMBDAS), raising=False)
    assert trained_lambda_at(vr_model, 3) == pytest.approx(0.01)
    assert trained_lambda_at(vr_model, 2.5) == pytest.approx(math.sqrt(0.005 * 0.01))
    rgb = photo("astronaut")[100:164, 180:244]
    plain, _ = encode_image(vr_model, rgb, quality=2.5, channel_order=0)  # the search is another test's
    zero, _ = encode_image(vr_model, rgb, RefineOptions(0), quality=2.5, channel_order=0)
    assert pack(zero) == pack(plain)
    refined, stats = encode_image(vr_model, rgb, RefineOptions(3), quality=2.5, channel_order=0)
    result = stats["refine"]
    assert result.objective <= result.initial and refined.quality == 2.5
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = vr_model.analysis(x)
        z = vr_model.h_a(y)
        plain_objective, bpp_q, mse, _, _ = objective(vr_model, x, y, z, trained_lambda_at(vr_model, 2.5), (64, 64),
                                                      quality=2.5)
        bpp_5 = objective(vr_model, x, y, z, 0.0, (64, 64), quality=5)[1]
    assert result.initial == pytest.approx(float(plain_objective), rel=1e-5)  # ranked at λ(2.5), coded at 2.5
    assert float(bpp_q) < float(bpp_5)  # a finer step costs more bits
    decoded, _ = decode_bitstream(vr_model, unpack(pack(refined)))
    assert decoded.shape == rgb.shape


def test_transform_ceiling_codes_beyond_the_top_rate_point(vr_model, vr_checkpoint, tmp_path, capsys):
    """tools/transform_ceiling.py --beyond: the top rate point coded with its gain raised by T nats. Raising by 0
    is the model at Q = K; a finer step costs more bits; the gains below the top point do not move."""
    from PIL import Image

    from tools.transform_ceiling import main as transform_ceiling, with_top_gain_raised

    raised = with_top_gain_raised(vr_model, 1.0)
    log_g, log_raised = vr_model.rate_gain.log_gains(), raised.rate_gain.log_gains()
    assert torch.allclose(log_raised[:-1], log_g[:-1])
    assert torch.allclose(log_raised[-1] - log_g[-1], torch.ones_like(log_g[-1]), atol=1e-5)

    (tmp_path / "photos").mkdir()
    Image.fromarray(photo("astronaut")[100:228, 180:308]).save(tmp_path / "photos" / "crop.png")
    assert transform_ceiling([str(vr_checkpoint), "--data", str(tmp_path / "photos"), "--beyond", "0", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    at_top, finer = (float(row[5]), float(row[7])), (float(row[8]), float(row[10]))  # (dB, bpp)
    with torch.inference_mode():
        out = vr_model(photo_tensor(h=128, w=128, top=100, left=180), inference=True, quality=5.0)
    assert at_top[1] == pytest.approx(sum(float(-torch.log2(lk).sum()) for lk in out["likelihoods"].values())
                                      / 128 ** 2, abs=1e-3)
    assert finer[1] > at_top[1]


def test_transform_ceiling_optimise_finds_a_latent_the_synthesis_draws_better():
    """--optimise N on the shipped model: zero steps give the ceiling itself; a few steps on the latent, for
    distortion alone, give g_s a better picture; the weights neither move nor stay frozen afterwards."""
    from tools.transform_ceiling import optimised_latent_psnr
    from utils.image_io import to_tensor, to_uint8
    from utils.metrics import psnr

    vr_model = load_checkpoint("icwem-small-vr")
    x = photo_tensor(h=64, w=64, top=100, left=180)
    before = {k: v.clone() for k, v in vr_model.state_dict().items()}
    with torch.inference_mode():
        ceiling = psnr(x, to_tensor(to_uint8(vr_model.synthesis(vr_model.analysis(x), clamp=True))))
    assert optimised_latent_psnr(vr_model, x, 0) == pytest.approx(ceiling, abs=0.01)
    assert optimised_latent_psnr(vr_model, x, 10) > ceiling + 0.05
    assert all(torch.equal(v, before[k]) for k, v in vr_model.state_dict().items())
    assert all(p.requires_grad for p in vr_model.parameters())


def test_transform_ceiling_counts_the_latent_channels_the_synthesis_uses():
    """--channels on the shipped model: some latent channels matter to g_s and some do not; a synthesis that
    reads none of them (its input weights zeroed) uses none, and holding them all at their means costs nothing."""
    from tools.transform_ceiling import channel_usage

    vr_model = load_checkpoint("icwem-small-vr")
    x = photo_tensor(h=64, w=64, top=100, left=180)
    used, idle_drop = channel_usage(vr_model, x)
    assert 0 < used < vr_model.config["M"] and abs(idle_drop) < 1.0
    with torch.no_grad():
        vr_model.g_s[0].subpel_conv[0].weight.zero_()
        vr_model.g_s[0].upsample[0].weight.zero_()
    assert channel_usage(vr_model, x) == (0, 0.0)


def test_transform_ceiling_refuses_beyond_for_a_fixed_rate_model(tiny_checkpoint, tmp_path):
    from tools.transform_ceiling import main as transform_ceiling

    with pytest.raises(UserError, match="variable-rate"):
        transform_ceiling([str(tiny_checkpoint), "--beyond", "1", "--max-side", "64"])


# ---------------------------------------------------------------------------------------------- refinement benchmark
def test_the_refine_benchmark_codes_each_quality_as_a_rate_point_refined_for_its_lambda(vr_model, tmp_path):
    """benchmarks/refine.py --quality: one rate point per quality (CHECKPOINT@Q), refined for λ(Q), and one
    curve per model in the table, real files both plain and refined."""
    import importlib.util
    from pathlib import Path

    checkpoint = tmp_path / "vr.pth.tar"
    torch.save({"state_dict": vr_model.state_dict(), "model_config": vr_model.config, "lambdas": list(LAMBDAS)},
               checkpoint)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "refine.py"
    spec = importlib.util.spec_from_file_location("refine_benchmark", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    log = tmp_path / "log.jsonl"
    args = bench.parse_args(["--checkpoint", str(checkpoint), "--quality", "1", "4", "--iterations", "2",
                             "--photos", "chelsea", "--size", "64x64", "--log", str(log)])
    bench.run(args)
    rows = bench.read_log(log)
    assert {(r["checkpoint"].rpartition("@")[2], r["iterations"]) for r in rows} == {
        ("1", 0), ("4", 0), ("1", 2), ("4", 2)}
    assert {r["lambda"] for r in rows} == {LAMBDAS[0], LAMBDAS[3]}
    plain = {r["checkpoint"]: r["bpp"] for r in rows if r["iterations"] == 0}
    assert plain[f"{checkpoint}@1"] < plain[f"{checkpoint}@4"]
    refined = [r for r in rows if r["iterations"]]
    assert all(r["objective"] <= r["initial"] for r in refined)
    assert bench.curves(rows + [{"checkpoint": "icwem-small-q1"}]) == {
        "fixed-rate": ["icwem-small-q1"], str(checkpoint): [f"{checkpoint}@1", f"{checkpoint}@4"]}
    assert any(line.startswith(f"{checkpoint}: ") for line in bench.table(rows, "64x64", bench._surrogate(args)))
