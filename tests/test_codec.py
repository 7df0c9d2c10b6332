"""Coding one image to an .icwem bitstream and back (utils.coding.codec, codec.py), and every hostile input.

A damaged file must end in a one-line error and a non-zero exit, never in a traceback, a hang or a
picture that silently differs from the one encoded.
"""

import dataclasses
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models import ICWEM, get_config, load_checkpoint
from tests.conftest import load_script, photo
from utils.coding.bitstream import HEADER_BYTES, pack, unpack
from utils.cli import run_cli
from utils.coding.codec import decode_bitstream, encode_image, model_fingerprint, packed_size
from utils.errors import UserError
from utils.coding.bitstream import DEFAULT_MAX_PIXELS

ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 120  # a hang fails the test instead of stalling the suite


CODEC = load_script("codec")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A 37x53 crop of a real photograph: odd sizes, padded to 64x64 inside the codec."""
    return np.ascontiguousarray(photo("astronaut")[100:137, 150:203])


@pytest.fixture(scope="module")
def coded(model, rgb):
    """The file bytes of ``rgb`` and the image decoded from them: the reference for damaged copies."""
    bs, _ = encode_image(model, rgb)
    data = pack(bs)
    decoded, _ = decode_bitstream(model, unpack(data))
    return data, decoded


@pytest.fixture(scope="module")
def icwem_file(tmp_path_factory, coded) -> Path:
    path = tmp_path_factory.mktemp("coded") / "photo.icwem"
    path.write_bytes(coded[0])
    return path


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _argv(command: str, source, output, checkpoint) -> list[str]:
    return [command, str(source), "-o", str(output), "--checkpoint", str(checkpoint)]


def _decode_bytes(model, data: bytes):
    """The decoded image, or None if the bytes were refused with a UserError (any other error propagates)."""
    try:
        return decode_bitstream(model, unpack(data))[0]
    except UserError as exc:
        assert "\n" not in str(exc)
        return None


# ------------------------------------------------------------------------------------------ library
def test_round_trip_keeps_the_size_and_decodes_the_same_from_bytes(model, rgb, coded):
    bs, stats = encode_image(model, rgb)
    decoded, decode_stats = decode_bitstream(model, bs)
    assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
    assert np.array_equal(decoded, coded[1])
    assert (bs.height, bs.width, bs.pad, bs.z_shape) == (37, 53, (0, 27, 0, 11), (1, 1))
    assert stats["encode_s"] > 0 and decode_stats["decode_s"] > 0


def test_stats_count_every_byte_of_the_file(model, rgb, coded):
    bs, stats = encode_image(model, rgb)
    assert stats["bytes"] == packed_size(bs) == len(coded[0])
    assert stats["bpp"] == pytest.approx(8 * len(coded[0]) / (37 * 53))


def test_bitstream_names_the_model(model, rgb):
    bs, _ = encode_image(model, rgb)
    assert bs.fingerprint == model.fingerprint()


def test_fingerprint_is_computed_once_per_model():
    class Counting(nn.Module):
        calls = 0

        def fingerprint(self) -> bytes:
            self.calls += 1
            return bytes(16)

    counting = Counting()
    assert model_fingerprint(counting) == model_fingerprint(counting) == bytes(16)
    assert counting.calls == 1


def test_bitstream_of_other_weights_is_refused(model, coded):
    foreign = dataclasses.replace(unpack(coded[0]), fingerprint=bytes(16))
    with pytest.raises(UserError, match="decode it with the checkpoint it was encoded with"):
        decode_bitstream(model, foreign)


def test_claimed_size_above_the_image_limit_is_refused_before_decoding(model, coded):
    side = 9472  # 9472**2 > DEFAULT_MAX_PIXELS; a consistent header, so only the decoder can refuse it
    assert side * side > DEFAULT_MAX_PIXELS
    huge = dataclasses.replace(unpack(coded[0]), height=side, width=side, pad=(0, 0, 0, 0), z_shape=(148, 148))
    with pytest.raises(UserError, match="above the limit of 89478485 pixels"):
        decode_bitstream(model, unpack(pack(huge)))


# ------------------------------------------------------------------------------------------ damage
def test_every_flipped_bit_is_refused_never_decoded_differently(model, coded):
    data, reference = coded
    rng = random.Random(1234)
    positions = rng.sample(range(len(data)), 200)
    refused = 0
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        decoded = _decode_bytes(model, bytes(damaged))
        assert decoded is None or np.array_equal(decoded, reference), f"byte {position} decoded to another picture"
        refused += decoded is None
    assert refused == len(positions)  # CRC-32 detects every single-bit error


def test_overwritten_runs_of_bytes_are_refused(model, coded):
    data, reference = coded
    rng = random.Random(99)
    for _ in range(100):
        start, length = rng.randrange(len(data)), rng.randint(1, 16)
        damaged = bytearray(data)
        damaged[start : start + length] = rng.randbytes(len(damaged[start : start + length]))
        if damaged == data:
            continue
        decoded = _decode_bytes(model, bytes(damaged))
        assert decoded is None or np.array_equal(decoded, reference)


def test_every_truncation_and_any_appended_byte_is_refused(model, coded):
    data, _ = coded
    for length in range(len(data)):
        assert _decode_bytes(model, data[:length]) is None
    assert _decode_bytes(model, data + b"\0") is None


def test_damaged_strings_behind_a_valid_checksum_are_refused_never_decoded_differently(model, coded):
    """The checksum cannot catch damage made before it was computed; the coder check (version 2) does.

    Such a stream must end in a UserError (a stream no encoder writes, or other symbols than the
    encoder's) or decode to the very same picture, never crash the native decoder.
    """
    data, reference = coded
    bs = unpack(data)
    rng = random.Random(7)
    damaged = []
    for position in rng.sample(range(HEADER_BYTES, len(data) - 4), 30):
        flipped = bytearray(data[:-4])
        flipped[position] ^= 1 << rng.randrange(8)
        damaged.append(_with_crc(bytes(flipped)))
    half = bs.y_string[: len(bs.y_string) // 2]
    for y_string, z_string in [(b"", bs.z_string), (half, bs.z_string), (bs.y_string, b"")]:
        damaged.append(pack(dataclasses.replace(bs, y_string=y_string, z_string=z_string)))
    for stream in damaged:
        decoded = _decode_bytes(model, stream)
        assert decoded is None or np.array_equal(decoded, reference)


def test_version_1_files_still_decode(model):
    """The original implementation's strings (fixture), packed as a version-1 file, decode to its picture."""
    from tests.conftest import TINY
    from tests.test_bitstream import version_1_bytes
    from utils.coding.bitstream import Bitstream
    from utils.image_io import to_uint8

    expected = torch.load(TINY / "expected.pt", weights_only=True)
    bs = Bitstream(256, 384, (0, 0, 0, 0), tuple(expected["z_shape"]), expected["y_string"], expected["z_string"], model.fingerprint())
    decoded = _decode_bytes(model, version_1_bytes(bs))
    original = to_uint8(expected["x_hat_decoded"].clamp(0, 1))
    assert np.abs(decoded.astype(np.int16) - original.astype(np.int16)).max() <= 1


def test_a_wrong_coder_check_is_refused_in_one_line(model, coded):
    bs = unpack(coded[0])
    with pytest.raises(UserError, match="differ from the encoder's") as info:
        decode_bitstream(model, dataclasses.replace(bs, check=bs.check ^ 1))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ codec.py
def test_encode_then_decode_writes_a_png_of_the_input_size(tmp_path, checkpoint, rgb, coded, capsys):
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    assert CODEC.main(_argv("encode", tmp_path / "photo.png", tmp_path / "photo.icwem", checkpoint)) == 0
    assert CODEC.main(_argv("decode", tmp_path / "photo.icwem", tmp_path / "out.png", checkpoint)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'photo.icwem'}: 53x37, {len(coded[0])} bytes, ")
    assert out[1].startswith(f"{tmp_path / 'out.png'}: 53x37 from {len(coded[0])} bytes, ")
    assert (tmp_path / "photo.icwem").read_bytes() == coded[0]
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == (53, 37) and png.mode == "RGB"
        assert np.array_equal(np.asarray(png), coded[1])


@pytest.mark.parametrize("size", [(1, 1), (2, 65)])
def test_tiny_and_thin_images_keep_their_size(tmp_path, checkpoint, size):
    width, height = size
    Image.fromarray(np.ascontiguousarray(photo("coffee")[:height, :width])).save(tmp_path / "in.png")
    CODEC.main(_argv("encode", tmp_path / "in.png", tmp_path / "in.icwem", checkpoint))
    CODEC.main(_argv("decode", tmp_path / "in.icwem", tmp_path / "out.png", checkpoint))
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == (width, height)


def test_image_notices_are_printed_one_line_each(tmp_path, checkpoint, rgb, capsys):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    CODEC.main(_argv("encode", tmp_path / "alpha.png", tmp_path / "alpha.icwem", checkpoint))
    assert capsys.readouterr().err.splitlines() == [f"{tmp_path / 'alpha.png'}: alpha channel dropped"]


def _cli_error(argv, capsys) -> str:
    """Run codec.py's entry point in-process; return its one stderr line (exit code 1 required)."""
    with pytest.raises(SystemExit) as info:
        run_cli(CODEC.main, argv)
    assert info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", bytes(range(256)) * 8])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, icwem_file, content, capsys):
    (tmp_path / "bad.pth.tar").write_bytes(content)
    line = _cli_error(_argv("decode", icwem_file, tmp_path / "out.png", tmp_path / "bad.pth.tar"), capsys)
    assert "checkpoint" in line
    assert not (tmp_path / "out.png").exists()


def test_a_checkpoint_of_other_weights_is_one_line(tmp_path, icwem_file, capsys):
    torch.manual_seed(0)
    other = ICWEM(**get_config("tiny"))
    torch.save({"state_dict": other.state_dict(), "model_config": get_config("tiny")}, tmp_path / "other.pth.tar")
    line = _cli_error(_argv("decode", icwem_file, tmp_path / "out.png", tmp_path / "other.pth.tar"), capsys)
    assert line.endswith("decode it with the checkpoint it was encoded with")


def test_missing_and_empty_images_are_one_line(tmp_path, checkpoint, capsys):
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("missing.png", "empty.png"):
        line = _cli_error(_argv("encode", tmp_path / name, tmp_path / "x.icwem", checkpoint), capsys)
        assert str(tmp_path / name) in line
    assert not (tmp_path / "x.icwem").exists()


def _hostile_files(data: bytes) -> dict[str, bytes]:
    """Damaged .icwem files, each refused by the header checks (before PyTorch is even imported)."""
    header = bytearray(data[:HEADER_BYTES])
    absurd_size = header.copy()
    struct.pack_into("<II", absurd_size, 22, 2**32 - 1, 2**32 - 1)  # height, width
    absurd_length = header.copy()
    struct.pack_into("<I", absurd_length, 42, 2**32 - 1)  # y_string length
    wrong_version = bytearray(data)
    wrong_version[5] = 4
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "wrong-magic": b"\x89PNG\r\n\x1a\n" + data[8:],
        "wrong-version": bytes(wrong_version),
        "absurd-size": _with_crc(bytes(absurd_size) + data[HEADER_BYTES:-4]),
        "absurd-length": _with_crc(bytes(absurd_length) + data[HEADER_BYTES:-4]),
    }
    for position in (10, HEADER_BYTES + 3, len(data) - 10):  # fingerprint, z_string, y_string
        flipped = bytearray(data)
        flipped[position] ^= 0x10
        files[f"bit-flip-{position}"] = bytes(flipped)
    return files


def _assert_one_line_failure(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("codec.py: error: ")
    return lines[0]


def _run_codec(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "codec.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )


def test_hostile_bitstream_files_fail_in_one_line(tmp_path, checkpoint, coded):
    files = _hostile_files(coded[0])
    (tmp_path / "folder.icwem").mkdir()
    for name in [*files, "missing", "folder"]:
        path = tmp_path / f"{name}.icwem"
        if name in files:
            path.write_bytes(files[name])
        result = _run_codec("decode", path, "-o", tmp_path / "out.png", "--checkpoint", checkpoint)
        line = _assert_one_line_failure(result)
        assert str(path) in line, name
        assert result.stdout == ""
    assert not (tmp_path / "out.png").exists()


def test_encoding_a_file_that_is_not_an_image_fails_in_one_line(tmp_path, checkpoint):
    (tmp_path / "notes.png").write_text("these are notes, not pixels\n")
    result = _run_codec("encode", tmp_path / "notes.png", "-o", tmp_path / "notes.icwem", "--checkpoint", checkpoint)
    assert "not an image" in _assert_one_line_failure(result)
    assert not (tmp_path / "notes.icwem").exists()


def test_decoding_with_a_non_checkpoint_fails_in_one_line(tmp_path, icwem_file):
    (tmp_path / "weights.pth.tar").write_bytes(b"PK\x03\x04 definitely not a zip archive")
    result = _run_codec("decode", icwem_file, "-o", tmp_path / "out.png", "--checkpoint", tmp_path / "weights.pth.tar")
    assert "checkpoint" in _assert_one_line_failure(result)
