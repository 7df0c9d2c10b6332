"""A .icwem file decodes to the same symbols on any machine setup (models/portable.py).

The encoder runs here; each decoder runs in a fresh process with one thing changed — the thread
count, oneDNN, or the CPU kernels (``ATEN_CPU_CAPABILITY=default`` turns off the SIMD kernels) — the
knobs that change the last bits of float results between machines. The model's scales spread over the
whole table (``trained_checkpoint``), so every table boundary is exercised.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_checkpoint
from models.portable import SCALE_TABLE, parameter_nets
from tests.conftest import photo
from utils.coding.bitstream import pack, unpack
from utils.coding.codec import decode_bitstream, encode_image

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")

# Crops of real photographs, up to 512x384 (sides not multiples of 64 included).
CROPS = {"astronaut": (0, 0, 384, 512), "coffee": (8, 40, 200, 251), "chelsea": (0, 0, 128, 192)}

# (threads, oneDNN, ATEN_CPU_CAPABILITY or None for this machine's best): one change each from the encoder's.
DECODER_SETUPS = {"2 threads": (2, True, None), "oneDNN off": (1, False, None), "no SIMD kernels": (1, True, "default")}

_DECODER = """
import hashlib, sys, numpy as np, torch
threads, dnn = int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(threads)
torch.backends.mkldnn.enabled = dnn
from models import load_checkpoint
from utils.coding.bitstream import read_file
from utils.coding.codec import decode_bitstream
from utils.errors import UserError
model = load_checkpoint(sys.argv[1])
tables = [model.gaussian_conditional.quantized_cdf, model.entropy_bottleneck.quantized_cdf]
print("tables", hashlib.sha256(b"".join(t.numpy().tobytes() for t in tables)).hexdigest(), flush=True)
for path in sys.argv[4:]:
    try:
        np.save(path + ".npy", decode_bitstream(model, read_file(path))[0])
        print("decoded", flush=True)
    except UserError as exc:
        print("refused", str(exc).replace(" ", "_"), flush=True)
"""


def _tables_hash(model) -> str:
    tables = [model.gaussian_conditional.quantized_cdf, model.entropy_bottleneck.quantized_cdf]
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in tables)).hexdigest()


def _crop(name: str) -> np.ndarray:
    top, left, h, w = CROPS[name]
    return np.ascontiguousarray(photo(name)[top:top + h, left:left + w])


@pytest.fixture(scope="module")
def model(trained_checkpoint):
    return load_checkpoint(trained_checkpoint)


@pytest.fixture(scope="module")
def encoded(model, tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Each crop's file, encoded here (1 thread, oneDNN on), and the encoder's own reconstruction."""
    folder = tmp_path_factory.mktemp("portable")
    torch.backends.mkldnn.enabled = True
    out = {}
    for name in CROPS:
        bs, _ = encode_image(model, _crop(name))
        path = folder / f"{name}.icwem"
        path.write_bytes(pack(bs))
        out[name] = (path, decode_bitstream(model, unpack(path.read_bytes()))[0])
    return out


def test_scale_table_is_pinned_log_spaced_and_used(model):
    exact = [math.exp(math.log(0.11) + (math.log(256) - math.log(0.11)) * i / 63) for i in range(64)]
    assert len(SCALE_TABLE) == 64 and list(SCALE_TABLE) == sorted(set(SCALE_TABLE))
    assert all(abs(s - e) <= 1e-6 * e for s, e in zip(SCALE_TABLE, exact))
    assert model.gaussian_conditional.scale_table.tolist() == list(SCALE_TABLE)


def test_the_model_scales_spread_over_the_table(model, encoded):
    """Otherwise the cross-setup test below would exercise one table boundary only."""
    from models.portable import scale_indexes

    with torch.inference_mode():
        sigma = model(torch.from_numpy(_crop("chelsea")).permute(2, 0, 1)[None].float() / 255)["para"]["scales"]
    used = torch.unique(scale_indexes(sigma))
    assert len(used) >= 16  # measured: 23 for the shipped icwem-small-q1, 57 for spread_scales_model(0)


def test_parameter_copy_is_float64_and_follows_weight_changes(model):
    nets = parameter_nets(model)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in nets.parameters())
    assert parameter_nets(model) is nets  # cached
    with torch.no_grad():
        model.cc_scale_transforms[0][0].bias.add_(0.0)  # an in-place update, even a no-op one
    assert parameter_nets(model) is not nets


@pytest.mark.parametrize("setup", list(DECODER_SETUPS))
def test_another_setup_decodes_the_same_symbols_and_picture(model, encoded, trained_checkpoint, setup):
    threads, dnn, capability = DECODER_SETUPS[setup]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    paths = [str(path) for path, _ in encoded.values()]
    result = subprocess.run(
        [sys.executable, "-c", _DECODER, str(trained_checkpoint), str(threads), str(int(dnn)), *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")
    assert lines[0] == f"tables {_tables_hash(model)}"  # the coder tables are the same bits there
    # "decoded" means the decoder's symbols and scale indexes have the encoder's CRC (coder check).
    assert lines[1 : 1 + len(paths)] == ["decoded"] * len(paths), lines
    for path, reference in encoded.values():
        decoded = np.load(f"{path}.npy")
        diff = np.abs(decoded.astype(np.int16) - reference.astype(np.int16))
        assert diff.max() <= 1, f"{path.name}: {diff.max()} grey levels apart"
        assert (diff > 0).mean() < 0.01, f"{path.name}: {(diff > 0).mean():.2%} of the values differ"

