"""Hostile .icwem files can do no harm: no read outside memory we own, no unbounded work, no traceback.

CompressAI's rANS decoder has no bounds checks (models/entropy/rans_guard.py). These tests craft
CRC-valid streams that drive its bypass mode and show that every read stays inside the zero guard we
append: the decoded values do not change when whatever lies beyond the guard changes.
"""

from __future__ import annotations

import dataclasses
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from compressai.ans import RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional

from models import load_checkpoint
from models.entropy import update_tables
from models.entropy.rans_guard import RANS_L, check_stream, guard_words, guarded, max_stream_words
from tests.conftest import photo, run_in_process
from utils.coding.bitstream import HEADER_BYTES, MAGIC, pack, unpack
from utils.coding.codec import decode_bitstream, encode_image
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")

SYMBOLS = 3000
POISON = 1 << 16  # bytes after the guard that differ between two decodes


@pytest.fixture(scope="module")
def gaussian() -> GaussianConditional:
    gc = GaussianConditional(None)
    update_tables(gc)
    return gc


@pytest.fixture(scope="module")
def bottleneck() -> EntropyBottleneck:
    torch.manual_seed(0)
    eb = EntropyBottleneck(8)
    update_tables(eb)
    return eb


def _crafted_streams(num_symbols: int) -> dict[str, bytes]:
    """CRC-valid streams no encoder wrote, each starting with a legal state (so they pass check_stream)."""
    rng = random.Random(5)
    longest = 4 * max_stream_words(num_symbols)
    state = struct.pack("<Q", 2**64 - 1)
    return {
        "all-ones": b"\xff" * longest,  # every 4-bit piece is 15: "more bypass count follows", forever
        "ones-then-zeros": state + b"\xff" * 4000 + bytes(4000),
        "bypass-then-short": state + b"\xff" * 8,
        "random": state + rng.randbytes(longest // 2 // 4 * 4),
        "0x0f-pattern": b"\x0f\xff\xff\xff" * (longest // 4),
    }


def _decode(decode, stream: bytes, num_symbols: int, poison: int) -> list[int]:
    """Decode ``stream`` with its guard, followed by POISON bytes of value ``poison``."""
    return decode(guarded(stream, num_symbols, "y") + bytes([poison]) * POISON)


@pytest.mark.parametrize("name", list(_crafted_streams(SYMBOLS)))
def test_gaussian_decoder_reads_nothing_beyond_the_guard(gaussian, name):
    stream = _crafted_streams(SYMBOLS)[name]
    cdfs = gaussian.quantized_cdf.tolist()
    lengths = gaussian.cdf_length.tolist()
    offsets = gaussian.offset.tolist()
    indexes = [i % 64 for i in range(SYMBOLS)]  # every table, the narrow ones (bypass-prone) included

    def decode(data: bytes) -> list[int]:
        decoder = RansDecoder()
        decoder.set_stream(data)
        return decoder.decode_stream(indexes, cdfs, lengths, offsets)

    assert _decode(decode, stream, SYMBOLS, 0x00) == _decode(decode, stream, SYMBOLS, 0xFF)
    assert _decode(decode, stream, SYMBOLS, 0x00) == _decode(decode, stream, SYMBOLS, 0x5A)


@pytest.mark.parametrize("name", ["all-ones", "random", "0x0f-pattern"])
def test_bottleneck_decoder_reads_nothing_beyond_the_guard(bottleneck, name):
    """z's decoder (decode_with_indexes) has the same bypass mode and the same guard."""
    num = 8 * 4 * 4
    stream = _crafted_streams(num)[name]
    indexes = [i % 8 for i in range(num)]

    def decode(data: bytes) -> list[int]:
        return RansDecoder().decode_with_indexes(
            data, indexes, bottleneck.quantized_cdf.tolist(), bottleneck.cdf_length.tolist(), bottleneck.offset.tolist()
        )

    assert _decode(decode, stream, num, 0x00) == _decode(decode, stream, num, 0xFF)


def test_a_guard_of_half_the_bound_lets_the_decoder_read_beyond_it(gaussian):
    """The check above can fail: with all-ones input the decoder really reads that far past the string."""
    stream = _crafted_streams(SYMBOLS)["all-ones"]
    indexes = [i % 64 for i in range(SYMBOLS)]
    short = bytes(4 * (guard_words(len(stream) // 4, SYMBOLS) // 2))

    def decode(poison: int) -> list[int]:
        decoder = RansDecoder()
        decoder.set_stream(stream + short + bytes([poison]) * POISON)
        return decoder.decode_stream(indexes, gaussian.quantized_cdf.tolist(), gaussian.cdf_length.tolist(), gaussian.offset.tolist())

    assert decode(0x00) != decode(0xFF)


def test_a_guard_of_half_the_bound_lets_the_bottleneck_decoder_read_beyond_it(bottleneck):
    """The bottleneck check above can fail too: z's decoder reads past half a guard as y's does."""
    num = 8 * 4 * 4
    stream = _crafted_streams(num)["all-ones"]
    indexes = [i % 8 for i in range(num)]
    short = bytes(4 * (guard_words(len(stream) // 4, num) // 2))

    def decode(poison: int) -> list[int]:
        return RansDecoder().decode_with_indexes(
            stream + short + bytes([poison]) * POISON, indexes, bottleneck.quantized_cdf.tolist(),
            bottleneck.cdf_length.tolist(), bottleneck.offset.tolist(),
        )

    assert decode(0x00) != decode(0xFF)


def test_guard_grows_with_symbols_and_words():
    assert guard_words(0, 0) == 3
    assert guard_words(10, 8) == 3 + 163 + 150


@pytest.mark.parametrize(
    "stream, words",
    [
        (b"", "shorter than the 8-byte rANS state"),
        (b"\xff" * 7, "shorter than the 8-byte rANS state"),
        (b"\xff" * 10, "whole 4-byte words"),
        (bytes(8), "impossible rANS state"),
        (struct.pack("<Q", RANS_L - 1), "impossible rANS state"),
        (b"\xff" * (4 * max_stream_words(100) + 4), "longer than any encoder writes"),
    ],
)
def test_streams_no_encoder_writes_are_refused(stream, words):
    with pytest.raises(ValueError, match=words) as info:
        check_stream(stream, 100, "y")
    assert "\n" not in str(info.value)


def test_a_real_stream_passes_the_checks(gaussian):
    from compressai.ans import BufferedRansEncoder

    rng = random.Random(3)
    indexes = [rng.randrange(64) for _ in range(500)]
    symbols = [rng.randint(-40, 40) for _ in range(500)]  # beyond narrow tables: bypass-coded
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(symbols, indexes, gaussian.quantized_cdf.tolist(), gaussian.cdf_length.tolist(), gaussian.offset.tolist())
    stream = encoder.flush()
    check_stream(stream, len(symbols), "y")
    decoder = RansDecoder()
    decoder.set_stream(guarded(stream, len(symbols), "y"))
    assert decoder.decode_stream(indexes, gaussian.quantized_cdf.tolist(), gaussian.cdf_length.tolist(), gaussian.offset.tolist()) == symbols


# --------------------------------------------------------------------------------------------- files
def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _v1_file(height: int, width: int, y: bytes = b"", z: bytes = b"", fingerprint: bytes = bytes(16)) -> bytes:
    pad_h, pad_w = -height % 64, -width % 64
    header = struct.pack(
        "<5sB16sII4H2HII", MAGIC, 1, fingerprint, height, width, 0, pad_h, 0, pad_w,
        (height + pad_h) // 64, (width + pad_w) // 64, len(y), len(z),
    )
    return _with_crc(header + z + y)


def test_a_tiny_file_claiming_a_huge_image_is_refused_before_the_model_is_loaded(tmp_path, tiny_checkpoint):
    path = tmp_path / "huge.icwem"
    path.write_bytes(_v1_file(16384, 16384))
    assert path.stat().st_size == 54
    with mock.patch("models.load_checkpoint", side_effect=AssertionError("the model was loaded")):
        result = run_in_process(["codec.py", "decode", path, "-o", tmp_path / "out.png", "--checkpoint", tiny_checkpoint])
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"codec.py: error: {path}: image of 16384x16384 = 268435456 pixels is above the limit of 89478485 "
        "pixels; pass --max-pixels to decode it if you trust the file"
    ]
    assert not (tmp_path / "out.png").exists()


def test_a_claim_within_the_limit_with_empty_strings_is_refused_before_decoding(tiny_checkpoint):
    """2048x2048 with no coded data: refused by the stream checks at once, not after minutes of decoding."""
    model = load_checkpoint(tiny_checkpoint)
    bs = unpack(_v1_file(2048, 2048, fingerprint=model.fingerprint()))
    start = time.perf_counter()
    with pytest.raises(UserError, match="shorter than the 8-byte rANS state") as info:
        decode_bitstream(model, bs)
    assert time.perf_counter() - start < 1.0
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def real_file(tiny_checkpoint) -> tuple[bytes, np.ndarray]:
    model = load_checkpoint(tiny_checkpoint)
    rgb = np.ascontiguousarray(photo("coffee")[:64, :64])
    bs, _ = encode_image(model, rgb)
    return pack(bs), rgb


_DECODE_MANY = """
import sys, numpy as np
from models import load_checkpoint
from utils.coding.bitstream import read_file
from utils.coding.codec import decode_bitstream
from utils.errors import UserError
model = load_checkpoint(sys.argv[1])
for path in sys.argv[2:]:
    try:
        bs = read_file(path)
        rgb, _ = decode_bitstream(model, bs)
    except UserError as exc:
        assert "\\n" not in str(exc)
        print("refused", flush=True)
        continue
    assert rgb.dtype == np.uint8 and rgb.shape == (bs.height, bs.width, 3)
    np.save(path + ".npy", rgb)
    print("decoded", flush=True)
"""


def _decode_in_subprocess(checkpoint: Path, paths: list[Path], timeout: float) -> list[str]:
    """Decode files in a fresh process: a crash of the native decoder fails the test instead of pytest."""
    result = subprocess.run(
        [sys.executable, "-c", _DECODE_MANY, str(checkpoint), *map(str, paths)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, f"decoder process ended with {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout.split()


def test_crafted_bypass_files_are_refused_or_decode_the_same_in_separate_processes(tmp_path, tiny_checkpoint, real_file):
    data, _ = real_file
    bs = unpack(data)
    crafted = []
    for name, y in _crafted_streams(40 * 16).items():
        y = y[: 4 * max_stream_words(40 * 16)]
        for version, body in (("v2", pack(dataclasses.replace(bs, y_string=y))), ("v1", _v1_file(64, 64, y, bs.z_string, bs.fingerprint))):
            path = tmp_path / f"{name}-{version}.icwem"
            path.write_bytes(body)
            crafted.append(path)
    first = _decode_in_subprocess(tiny_checkpoint, crafted, timeout=300)
    pictures = {p: np.load(f"{p}.npy") for p, r in zip(crafted, first) if r == "decoded"}
    second = _decode_in_subprocess(tiny_checkpoint, crafted, timeout=300)
    assert first == second
    assert all(r == "refused" for p, r in zip(crafted, first) if p.name.endswith("v2.icwem"))  # the coder check
    for p, picture in pictures.items():
        assert np.array_equal(np.load(f"{p}.npy"), picture)


def test_fuzzed_files_are_refused_or_decode_to_a_legal_picture(tmp_path, tiny_checkpoint, real_file):
    """Random damage with the checksum recomputed (as an attacker would): never a crash, hang or traceback."""
    data, _ = real_file
    rng = random.Random(2024)
    paths = []
    for n in range(32):
        body = bytearray(data[:-4])
        kind = n % 4
        if kind == 0:  # flip bits anywhere, the header included
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # overwrite a run inside the strings
            start = rng.randrange(HEADER_BYTES, len(body))
            body[start : start + 16] = rng.randbytes(len(body[start : start + 16]))
        elif kind == 2:  # 0xFF runs: bypass mode
            start = rng.randrange(HEADER_BYTES, len(body))
            body[start : start + 32] = b"\xff" * len(body[start : start + 32])
        else:  # change a geometry or length field
            offset = rng.choice([22, 26, 30, 32, 34, 36, 38, 40, 42, 46])
            body[offset] = rng.randrange(256)
        path = tmp_path / f"fuzz-{n}.icwem"
        path.write_bytes(_with_crc(bytes(body)))
        paths.append(path)
    results = _decode_in_subprocess(tiny_checkpoint, paths, timeout=300)  # a hang would time out
    assert len(results) == len(paths) and set(results) <= {"refused", "decoded"}
