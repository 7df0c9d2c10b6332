"""A .icwem file decodes to the same symbols on any machine setup (models/entropy/).

The encoder runs here; one decoder process runs without the SIMD kernels
(``ATEN_CPU_CAPABILITY=default``) and decodes with 2 threads (the smallest crop), then with oneDNN off
(all three) — the knobs that change the last bits of float results between machines
(``benchmarks/portability.py decodes`` runs the whole grid, both ways). The model's scales spread
over the whole table (``spread_checkpoint``), so nearly every table boundary is exercised.
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
from models.entropy import SCALE_TABLE, parameter_nets
from tests.conftest import photo
from utils.coding.bitstream import pack, unpack
from utils.coding.codec import decode_bitstream, encode_image

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")

# Crops of real photographs, up to 512x384 (sides not multiples of 64 included).
CROPS = {"chelsea": (0, 0, 128, 192), "coffee": (8, 40, 200, 251), "astronaut": (0, 0, 384, 512)}

# One decoder process with the SIMD kernels off (ATEN_CPU_CAPABILITY=default, fixed at its start) decodes
# files in two setups, each changing one more knob from the encoder's (1 thread, oneDNN on, this
# machine's best kernels): (threads, oneDNN, how many of the crops, smallest first). Two threads decode
# the smallest crop only: on a loaded 2-core machine they are slow, and benchmarks/portability.py
# decodes runs the full grid.
DECODER_CAPABILITY = "default"
DECODER_SETUPS = ((2, True, 1), (1, False, len(CROPS)))

_DECODER = """
import hashlib, sys, numpy as np, torch
from models import load_checkpoint
from utils.coding.bitstream import read_file
from utils.coding.codec import decode_bitstream
from utils.errors import UserError
model = load_checkpoint(sys.argv[1])
tables = [model.gaussian_conditional.quantized_cdf, model.entropy_bottleneck.quantized_cdf]
print("tables", hashlib.sha256(b"".join(t.numpy().tobytes() for t in tables)).hexdigest(), flush=True)
for setup in sys.argv[2].split(","):
    threads, dnn, count = setup.split(":")
    torch.set_num_threads(int(threads))
    torch.backends.mkldnn.enabled = dnn == "1"
    for path in sys.argv[3:3 + int(count)]:
        try:
            np.save(f"{path}.{threads}-{dnn}.npy", decode_bitstream(model, read_file(path))[0])
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
def model(spread_checkpoint):
    return load_checkpoint(spread_checkpoint)


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


# SHA-256 of the pinned scale table (64 little-endian float32) and of the Gaussian coder tables built on
# it (quantised CDFs, offsets, CDF lengths, as little-endian int32): the same bits on every machine and
# for every model (they depend on the table and the tail mass only). A change here breaks every file.
SCALE_TABLE_SHA256 = "c8bdaad683932b580eaf8e0cfb2934d4872c4033cb5955af5d75056c85e98e06"
GAUSSIAN_TABLES_SHA256 = "b082dfdb67e468a14d7368b28d5441d1de133e25087bed6e96b9e48d6419e882"


def test_scale_table_and_gaussian_coder_tables_are_the_pinned_bits(model):
    gc = model.gaussian_conditional
    assert hashlib.sha256(np.asarray(SCALE_TABLE, dtype="<f4").tobytes()).hexdigest() == SCALE_TABLE_SHA256
    parts = (gc._quantized_cdf, gc._offset, gc._cdf_length)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(p.numpy(), dtype="<i4").tobytes() for p in parts))
    assert digest.hexdigest() == GAUSSIAN_TABLES_SHA256


def test_gaussian_coder_tables_are_compressai_update_on_the_pinned_table():
    """Our tables are CompressAI's own ``GaussianConditional.update`` on the pinned scales, but for its
    pmfs in float64: the offsets and CDF lengths are CompressAI's, and the CDFs differ only where a
    float32 pmf quantises to another step. Measured here: one table of 64 (scale index 57) differs, in
    796 entries, by at most 2; the bounds leave room for another machine's float32 (one more table)."""
    from compressai.entropy_models import GaussianConditional

    from models.entropy import update_tables

    ours, theirs = GaussianConditional(None), GaussianConditional(None)
    update_tables(ours)
    theirs.update_scale_table(torch.tensor(SCALE_TABLE))
    assert torch.equal(theirs.scale_table, ours.scale_table)
    assert torch.equal(theirs._offset, ours._offset) and torch.equal(theirs._cdf_length, ours._cdf_length)
    assert theirs._quantized_cdf.shape == ours._quantized_cdf.shape
    step = (theirs._quantized_cdf - ours._quantized_cdf).abs()
    assert int((step > 0).any(dim=1).sum()) <= 2 and int(step.max()) <= 2


def test_the_model_scales_spread_over_the_table(model, encoded):
    """Otherwise the cross-setup test below would exercise one table boundary only."""
    from models.entropy import scale_indexes

    with torch.inference_mode():
        sigma = model(torch.from_numpy(_crop("chelsea")).permute(2, 0, 1)[None].float() / 255)["para"]["scales"]
    used = torch.unique(scale_indexes(sigma))
    assert len(used) >= 16  # measured: 21 for the shipped icwem-small-q1 (λ 0.0003), 57 for spread_scales_model(0)


def test_parameter_copy_is_float64_and_follows_weight_changes(model):
    nets = parameter_nets(model)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in nets.parameters())
    assert parameter_nets(model) is nets  # cached
    with torch.no_grad():
        model.cc_scale_transforms[0][0].bias.add_(0.0)  # an in-place update, even a no-op one
    assert parameter_nets(model) is not nets


def test_another_setup_decodes_the_same_symbols_and_picture(model, encoded, spread_checkpoint):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=DECODER_CAPABILITY, OMP_NUM_THREADS="2")
    paths = [str(path) for path, _ in encoded.values()]
    setups = ",".join(f"{threads}:{int(dnn)}:{count}" for threads, dnn, count in DECODER_SETUPS)
    result = subprocess.run(
        [sys.executable, "-c", _DECODER, str(spread_checkpoint), setups, *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")
    assert lines[0] == f"tables {_tables_hash(model)}"  # the coder tables are the same bits there
    # "decoded" means the decoder's symbols and scale indexes have the encoder's CRC (coder check).
    decodes = sum(count for _, _, count in DECODER_SETUPS)
    assert lines[1 : 1 + decodes] == ["decoded"] * decodes, lines
    for threads, dnn, count in DECODER_SETUPS:
        for path, reference in list(encoded.values())[:count]:
            decoded = np.load(f"{path}.{threads}-{int(dnn)}.npy")
            diff = np.abs(decoded.astype(np.int16) - reference.astype(np.int16))
            assert diff.max() <= 1, f"{path.name} ({threads} threads, oneDNN {dnn}): {diff.max()} grey levels apart"
            assert (diff > 0).mean() < 0.01, f"{path.name}: {(diff > 0).mean():.2%} of the values differ"
