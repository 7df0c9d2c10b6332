"""y's rANS stream in chunks (format version 3): same symbols as one stream, a layout that is checked
before decoding, and every chunk read inside its own guard."""

from __future__ import annotations

import random
import struct

import pytest
import torch
from compressai.ans import BufferedRansEncoder
from compressai.entropy_models import GaussianConditional

import models.entropy.rans_chunks as rans_chunks
from models.entropy import update_tables
from models.entropy.rans_chunks import ChunkedDecoder, ChunkedEncoder, num_chunks
from models.entropy.rans_guard import guard_words, guarded, max_stream_words
from tests.conftest import photo_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tables() -> tuple:
    gc = GaussianConditional(None)
    update_tables(gc)
    return gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).tolist(), gc.offset.reshape(-1).tolist()


def _symbols(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    indexes = torch.tensor([rng.randrange(64) for _ in range(n)], dtype=torch.int32)
    symbols = torch.tensor([rng.randint(-40, 40) for _ in range(n)], dtype=torch.int32)  # bypass values too
    return symbols, indexes


def _encode(tables, symbols, indexes, chunk, pieces) -> bytes:
    encoder = ChunkedEncoder(tables, chunk)
    start = 0
    for size in pieces:
        encoder.encode(symbols[start:start + size], indexes[start:start + size])
        start += size
    assert start == symbols.numel()
    return encoder.finish()


def _decode(tables, string, indexes, chunk, pieces) -> torch.Tensor:
    decoder = ChunkedDecoder(string, indexes.numel(), tables, chunk)
    out, start = [], 0
    for size in pieces:
        out.append(decoder.decode(indexes[start:start + size]))
        start += size
    return torch.cat(out)


@pytest.mark.parametrize("chunk", [1000, 500, 2500, 4096, None])
def test_chunks_round_trip_across_piece_and_chunk_boundaries(tables, chunk):
    symbols, indexes = _symbols(2500)
    string = _encode(tables, symbols, indexes, chunk, [700, 900, 900])
    count = num_chunks(2500, chunk)
    assert count == (1 if chunk is None or chunk >= 2500 else -(-2500 // chunk))
    lengths = struct.unpack_from(f"<{count - 1}I", string)
    assert sum(lengths) + 4 * (count - 1) < len(string)
    assert torch.equal(_decode(tables, string, indexes, chunk, [1200, 1, 1299]), symbols)


def test_one_chunk_is_the_plain_stream_of_format_version_2(tables):
    symbols, indexes = _symbols(800, seed=1)
    plain = BufferedRansEncoder()
    plain.encode_with_indexes(symbols.tolist(), indexes.tolist(), *tables)
    assert _encode(tables, symbols, indexes, 800, [300, 500]) == plain.flush()


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda s: s[:6], "cannot hold the lengths"),
        (lambda s: struct.pack("<I", 10**6) + s[4:], "add up to more than"),
        (lambda s: struct.pack("<I", 2) + s[4:], "chunk 0 string of 2 bytes is shorter"),
        (lambda s: s[:-2], "whole 4-byte words"),
    ],
)
def test_a_damaged_layout_is_refused_before_decoding(tables, damage, words):
    symbols, indexes = _symbols(2500)
    string = _encode(tables, symbols, indexes, 1000, [2500])
    with pytest.raises(ValueError, match=words) as info:
        ChunkedDecoder(damage(string), 2500, tables, 1000)
    assert "\n" not in str(info.value)


def test_more_symbols_than_the_string_codes_are_refused(tables):
    symbols, indexes = _symbols(100)
    decoder = ChunkedDecoder(_encode(tables, symbols, indexes, 64, [100]), 100, tables, 64)
    decoder.decode(indexes)
    with pytest.raises(ValueError, match="more symbols"):
        decoder.decode(indexes[:1])


def test_crafted_chunks_are_read_only_inside_their_guards(tables, monkeypatch):
    """Each chunk gets its own guard: poison behind every guard does not change what decodes."""
    n, chunk = 3000, 1000
    state = struct.pack("<Q", 2**64 - 1)
    bodies = [state + b"\xff" * 400, b"\x0f\xff\xff\xff" * 50, state + random.Random(2).randbytes(800)]
    string = struct.pack("<2I", len(bodies[0]), len(bodies[1])) + b"".join(bodies)
    indexes = torch.tensor([i % 64 for i in range(n)], dtype=torch.int32)

    def decode(poison: int) -> torch.Tensor:
        monkeypatch.setattr(rans_chunks, "guarded", lambda s, k, name: guarded(s, k, name) + bytes([poison]) * 65536)
        return _decode(tables, string, indexes, chunk, [n])

    assert torch.equal(decode(0x00), decode(0xFF))


def test_a_half_guard_behind_a_chunk_lets_the_decoder_read_beyond_it(tables, monkeypatch):
    """The test above can fail: a chunk of 0xFF words as long as any encoder writes drives the decoder
    past half of its guard, and the poison there changes what decodes."""
    n = 1000
    string = b"\xff" * (4 * max_stream_words(n))
    indexes = torch.tensor([i % 64 for i in range(n)], dtype=torch.int32)

    def decode(poison: int) -> torch.Tensor:
        def half_guarded(s: bytes, k: int, name: str) -> bytes:
            return s + bytes(4 * (guard_words(len(s) // 4, k) // 2)) + bytes([poison]) * 65536

        monkeypatch.setattr(rans_chunks, "guarded", half_guarded)
        return _decode(tables, string, indexes, None, [n])

    assert not torch.equal(decode(0x00), decode(0xFF))


def test_the_model_codes_the_same_symbols_in_chunks_as_in_one_stream(tiny_model):
    """Chunks of 97 symbols (the tiny latent here has 1,920) decode to the same ŷ, picture and coder check."""
    x = photo_tensor("astronaut", 128, 192, top=50, left=80)
    with torch.inference_mode():
        whole = tiny_model.compress(x, chunk_symbols=None)
        chunked = tiny_model.compress(x, chunk_symbols=97)
        assert tiny_model.compress(x)["strings"] == whole["strings"]  # one default chunk holds this latent
        assert chunked["checks"] == whole["checks"]
        assert chunked["strings"][0] != whole["strings"][0] and chunked["strings"][1] == whole["strings"][1]
        a = tiny_model.decompress(whole["strings"], whole["shape"], chunk_symbols=None)
        b = tiny_model.decompress(chunked["strings"], chunked["shape"], chunk_symbols=97)
    assert a["checks"] == b["checks"] == whole["checks"]
    assert torch.equal(a["y_hat"], b["y_hat"]) and torch.equal(a["x_hat"], b["x_hat"])
