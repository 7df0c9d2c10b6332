"""The shipped models (models/weights/): what the manifest promises, loading by name, and codec.py without
a checkpoint (encode picks a rate point by --quality, decode finds the model by the file's fingerprint)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import photo, run_in_process
from models import load_checkpoint, read_checkpoint
from models.zoo import (MANIFEST, default_quality, expand_shipped, shipped_by_fingerprint, shipped_by_quality,
                        shipped_models, shipped_path, variable_rate_model)
from utils.coding.bitstream import read_file
from utils.errors import UserError
from utils.image_io import read_image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args) -> subprocess.CompletedProcess:
    return run_in_process(args)


def test_manifest_lists_at_least_four_rate_points_in_order():
    models = [m for m in shipped_models() if not m.get("rate_points")]
    assert len(models) >= 4
    assert [m["quality"] for m in models] == list(range(1, len(models) + 1))
    lambdas = [m["lambda"] for m in models]
    assert lambdas == sorted(lambdas) and len(set(lambdas)) == len(lambdas)
    if len(models) == len(shipped_models()):  # no variable-rate model, which would take the middle of its range
        assert default_quality() == models[len(models) // 2]["quality"]


@pytest.mark.parametrize("entry", shipped_models(), ids=lambda e: e["name"])
def test_each_shipped_file_is_small_float16_and_has_the_recorded_fingerprint(entry):
    path = shipped_path(entry)
    data = path.read_bytes()
    assert len(data) == entry["bytes"] <= 10_000_000
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    stored = read_checkpoint(path)["state_dict"]
    model = load_checkpoint(entry["name"])  # by name, as every script accepts
    assert all(stored[name].dtype == torch.float16 for name, _ in model.named_parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.fingerprint().hex() == entry["fingerprint"]
    assert shipped_by_fingerprint(bytes.fromhex(entry["fingerprint"])) == path


def test_float16_files_keep_the_constant_buffers(tiny_model):
    """Weights are rounded to float16, buffers are not: the likelihood bound 1e-9 and GDN's pedestal
    2^-36 would become 0 (an infinite rate estimate, a log of 0 when training from the file)."""
    from tools.ship_weights import half_state_dict

    buffers = {name for name, _ in tiny_model.named_buffers()}
    halved = half_state_dict(tiny_model.state_dict(), buffers)
    assert halved["g_a.0.conv1.weight"].dtype == torch.float16
    bound = "gaussian_conditional.likelihood_lower_bound.bound"
    assert halved[bound].dtype == torch.float32 and float(halved[bound]) == pytest.approx(1e-9)
    assert float(half_state_dict(tiny_model.state_dict())[bound]) == 0.0  # what rounding everything did


def test_ship_weights_replaces_moves_and_keeps_rate_points(tiny_model, tiny_config, tmp_path, monkeypatch):
    """A new lowest point shifts the shipped files up: each moved file keeps its bytes and fingerprint (a
    file coded with it still finds it), even when its old place is rewritten in the same run."""
    import models.zoo as zoo
    import tools.ship_weights as ship

    for module in (zoo, ship):
        monkeypatch.setattr(module, "WEIGHTS_DIR", tmp_path)
        monkeypatch.setattr(module, "MANIFEST", tmp_path / "manifest.json")

    def checkpoint(lmbda: float, shift: float) -> str:
        state = {k: v + shift if k.endswith("weight") else v for k, v in tiny_model.state_dict().items()}
        path = tmp_path / f"run-{lmbda}.pth.tar"
        torch.save({"state_dict": state, "model_config": tiny_config, "args": {"lmbda": lmbda}}, path)
        return str(path)

    assert ship.main([checkpoint(0.01, 0.0), checkpoint(0.05, 1e-3), "--name", "t"]) == 0
    before = {e["name"]: (e, (tmp_path / e["file"]).read_bytes()) for e in zoo.shipped_models()}
    assert [e["lambda"] for e, _ in before.values()] == [0.01, 0.05]

    assert ship.main([checkpoint(0.002, 2e-3), "t-q1", "t-q2", "--name", "t"]) == 0
    after = zoo.shipped_models()
    assert [e["lambda"] for e in after] == [0.002, 0.01, 0.05]
    assert [e["name"] for e in after] == ["t-q1", "t-q2", "t-q3"]
    for old, new in (("t-q1", after[1]), ("t-q2", after[2])):
        entry, data = before[old]
        assert (tmp_path / new["file"]).read_bytes() == data
        assert new["fingerprint"] == entry["fingerprint"] and new["sha256"] == entry["sha256"]
        assert zoo.shipped_by_fingerprint(bytes.fromhex(entry["fingerprint"])) == tmp_path / new["file"]
    assert after[0]["fingerprint"] not in {e["fingerprint"] for e, _ in before.values()}


def test_ship_weights_ships_a_variable_rate_model_beside_the_fixed_rate_files(tiny_model, tiny_config, tmp_path,
                                                                             monkeypatch):
    """--variable-rate writes <name>-vr with its λs and a pinned measurement per rate point; --quality then
    takes any Q in [1, K] from it, the default is the middle of that range, and the fixed-rate files stay."""
    import models.zoo as zoo
    import tools.ship_weights as ship
    from models.checkpoint import variable_rate_from_fixed

    for module in (zoo, ship):
        monkeypatch.setattr(module, "WEIGHTS_DIR", tmp_path)
        monkeypatch.setattr(module, "MANIFEST", tmp_path / "manifest.json")
    monkeypatch.setattr(ship, "check_crop", lambda: photo("chelsea")[22:86, 97:161])  # quicker than 256x256
    fixed = tmp_path / "run-0.01.pth.tar"
    torch.save({"state_dict": tiny_model.state_dict(), "model_config": tiny_config, "args": {"lmbda": 0.01}}, fixed)
    lambdas = [0.0025, 0.005, 0.01, 0.02, 0.04]
    vr = variable_rate_from_fixed(tiny_model.state_dict(), dict(tiny_config, rate_points=5), lambdas, 0.01)
    variable = tmp_path / "run-vr.pth.tar"
    torch.save({"state_dict": vr.state_dict(), "model_config": vr.config, "args": {"lambdas": lambdas}}, variable)

    assert ship.main([str(fixed), "--name", "t", "--variable-rate", str(variable)]) == 0
    entry = zoo.variable_rate_model()
    assert entry["name"] == "t-vr" and entry["rate_points"] == 5 and entry["lambdas"] == lambdas
    assert [c["quality"] for c in entry["checks"]] == [1, 2, 3, 4, 5]
    bpp = [c["bpp"] for c in entry["checks"]]
    assert all(a < b for a, b in zip(bpp, bpp[1:]))
    shipped = load_checkpoint("t-vr")
    assert read_checkpoint(tmp_path / "t-vr.pt")["state_dict"]["rate_gain.log_base"].dtype == torch.float16
    assert shipped.fingerprint().hex() == entry["fingerprint"] and shipped.lambdas == lambdas
    assert zoo.shipped_by_quality(2.5) == (tmp_path / "t-vr.pt", 2.5) and zoo.default_quality() == 3.0
    assert zoo.shipped_by_fingerprint(bytes.fromhex(zoo.shipped_models()[0]["fingerprint"])) == tmp_path / "t-q1.pt"

    data = (tmp_path / "t-vr.pt").read_bytes()
    assert ship.main(["t-q1", "--name", "t", "--variable-rate", "t-vr"]) == 0  # kept, measured again
    assert (tmp_path / "t-vr.pt").read_bytes() == data and zoo.variable_rate_model()["checks"] == entry["checks"]
    with pytest.raises(UserError, match="fixed-rate checkpoint"):
        ship.main(["t-q1", "--name", "t", "--variable-rate", str(fixed)])
    before = {path.name: path.read_bytes() for path in tmp_path.glob("t-*.pt")}
    with pytest.raises(UserError, match="--variable-rate"):
        ship.main([str(variable), "--name", "t"])
    assert {path.name: path.read_bytes() for path in tmp_path.glob("t-*.pt")} == before  # refused before writing


def test_unknown_names_are_paths_and_shipped_expands():
    with pytest.raises(UserError, match="checkpoint not found: icwem-small-q99"):
        read_checkpoint("icwem-small-q99")
    assert expand_shipped(["a.pth", "shipped"]) == ["a.pth"] + [m["name"] for m in shipped_models()]
    assert MANIFEST.is_file()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("codec") / "coffee.png"
    Image.fromarray(photo("coffee")[100:180, 200:300]).save(path)
    return path


def test_codec_round_trip_with_no_checkpoint_argument(image, tmp_path):
    encoded, decoded = tmp_path / "coffee.icwem", tmp_path / "coffee.png"
    result = run("codec.py", "encode", str(image), "-o", str(encoded))
    assert result.returncode == 0, result.stderr
    middle = next(m for m in shipped_models() if shipped_path(m) == shipped_by_quality(default_quality())[0])
    assert read_file(encoded).fingerprint.hex() == middle["fingerprint"]
    result = run("codec.py", "decode", str(encoded), "-o", str(decoded))
    assert result.returncode == 0, result.stderr
    rgb, _ = read_image(decoded)
    assert rgb.shape == (80, 100, 3)


def highest_quality() -> int:
    variable = variable_rate_model()
    return variable["rate_points"] if variable else len(shipped_models())


def test_quality_picks_the_rate_point(image, tmp_path):
    """--quality 1 and the highest: the file names the model the zoo serves for it (a variable-rate model, if
    one is shipped, serves them all) and the higher quality writes the larger file."""
    sizes = []
    for quality in (1, highest_quality()):
        out = tmp_path / f"q{quality}.icwem"
        result = run("codec.py", "encode", str(image), "-o", str(out), "--quality", str(quality))
        assert result.returncode == 0, result.stderr
        served = next(m for m in shipped_models() if shipped_path(m) == shipped_by_quality(quality)[0])
        assert read_file(out).fingerprint.hex() == served["fingerprint"]
        sizes.append(out.stat().st_size)
    assert sizes[0] < sizes[1]


@pytest.mark.skipif(variable_rate_model() is None, reason="no variable-rate model is shipped")
def test_the_shipped_variable_rate_model_rises_in_rate_with_every_half_quality():
    """Issue 24's sweep, on the held-out crop in real files: --quality 1, 1.5, ..., K gives strictly rising
    rates and a PSNR that never falls by more than 0.1 dB."""
    import tools.ship_weights as ship
    from utils.evaluation.measure import measure_image

    model = load_checkpoint(shipped_path(variable_rate_model()))
    qualities = [1 + 0.5 * k for k in range(2 * model.rate_points - 1)]
    coded = [measure_image(model, ship.check_crop(), real=True, quality=q, channel_order=0)[0] for q in qualities]
    rates, psnrs = [c["bpp"] for c in coded], [c["psnr"] for c in coded]
    assert all(a < b for a, b in zip(rates, rates[1:])), rates
    assert all(b > a - 0.1 for a, b in zip(psnrs, psnrs[1:])), psnrs


def test_codec_errors_are_one_line(image, tmp_path, tiny_checkpoint):
    bad = run("codec.py", "encode", str(image), "-o", str(tmp_path / "x.icwem"), "--quality", "99")
    assert bad.returncode == 1 and "no such shipped model" in bad.stderr and "Traceback" not in bad.stderr
    both = run("codec.py", "encode", str(image), "-o", str(tmp_path / "x.icwem"), "--quality", "1",
               "--checkpoint", str(tiny_checkpoint))
    assert both.returncode == 1 and "not both" in both.stderr
    foreign = tmp_path / "tiny.icwem"
    assert run("codec.py", "encode", str(image), "-o", str(foreign), "--checkpoint", str(tiny_checkpoint)).returncode == 0
    orphan = run("codec.py", "decode", str(foreign), "-o", str(tmp_path / "out.png"))
    assert orphan.returncode == 1 and "not shipped" in orphan.stderr and "--checkpoint" in orphan.stderr
    assert len(orphan.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("entry", shipped_models(), ids=lambda e: e["name"])
def test_each_model_codes_the_held_out_crop_as_its_card_says(entry):
    """The manifest's pinned measurement (tools/ship_weights.py writes it when it ships): the held-out crop
    coded into a real file gives the recorded bpp within 1 % and PSNR within 0.05 dB."""
    import tools.ship_weights as ship
    from utils.evaluation.measure import measure_image

    model = load_checkpoint(shipped_path(entry))
    cards = entry.get("checks") or [entry["check"]]  # a variable-rate model: one per rate point
    assert len(cards) == entry.get("rate_points", 1)
    for card in cards:
        assert (card["photo"], tuple(card["crop"])) == (ship.CHECK_PHOTO, ship.CHECK_CROP)
        fields, _ = measure_image(model, ship.check_crop(), real=True, quality=card.get("quality"))
        assert fields["bpp"] == pytest.approx(card["bpp"], rel=0.01)
        assert fields["psnr"] == pytest.approx(card["psnr"], abs=0.05)


def test_the_default_model_does_not_care_which_channel_is_which():
    """The held-out crop in all six channel orders, coded by the default model: the model itself (each order
    coded as given) within 1.5 dB, and as codec.py codes them (the best order of the six) the same file
    size and PSNR whatever the order."""
    import tools.ship_weights as ship
    from utils.evaluation.colour import ORDER_NAMES, reorder
    from utils.evaluation.measure import measure_image

    path, quality = shipped_by_quality(default_quality())
    model = load_checkpoint(path)
    for channel_order in (0, None):
        coded = [measure_image(model, reorder(ship.check_crop(), ["RGB".index(c) for c in o]), real=True,
                               quality=quality, channel_order=channel_order)[0] for o in ORDER_NAMES]
        psnrs = [c["psnr"] for c in coded]
        if channel_order == 0:
            assert max(psnrs) - min(psnrs) < 1.5, psnrs
        else:
            assert max(psnrs) - min(psnrs) < 1e-9 and len({c["bytes"] for c in coded}) <= 2, coded  # ± the order byte
