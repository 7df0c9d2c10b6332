"""The .icwem format round-trips, and every damaged or hostile file is a one-line UserError."""

import dataclasses
import os
import random
import struct
import time
import zlib

import pytest

from utils.coding.bitstream import (
    DEFAULT_MAX_PIXELS,
    HEADER_BYTES,
    MAGIC,
    Bitstream,
    file_size,
    pack,
    pixel_limit_problem,
    read_file,
    unpack,
    write_file,
)
from utils.errors import UserError


def _bitstream(height=100, width=70, y_bytes=300, z_bytes=40) -> Bitstream:
    rng = random.Random(height * 7 + width)
    pad_h, pad_w = -height % 64, -width % 64
    return Bitstream(
        height=height,
        width=width,
        pad=(pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2),
        z_shape=((height + pad_h) // 64, (width + pad_w) // 64),
        y_string=rng.randbytes(y_bytes),
        z_string=rng.randbytes(z_bytes),
        fingerprint=bytes(range(16)),
        check=rng.getrandbits(32),
    )


def version_1_bytes(bs: Bitstream) -> bytes:
    """The version-1 file of ``bs`` (no coder check), written field by field as the old writer did."""
    header = struct.pack(
        "<5sB16sII4H2HII", MAGIC, 1, bs.fingerprint, bs.height, bs.width, *bs.pad, *bs.z_shape,
        len(bs.y_string), len(bs.z_string),
    )
    return _with_crc(header + bs.z_string + bs.y_string)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _reheader(data: bytes, **fields) -> bytes:
    """Rewrite header fields of a packed file and fix its CRC, to reach the checks after the CRC."""
    names = ["magic", "version", "fingerprint", "height", "width", "top", "bottom", "left", "right"]
    names += ["z_h", "z_w", "y_len", "z_len", "check"]
    fmt = struct.Struct("<5sB16sII4H2HIII")
    values = dict(zip(names, fmt.unpack_from(data)))
    values.update(fields)
    return _with_crc(fmt.pack(*(values[n] for n in names)) + data[fmt.size : -4])


def _unpack_error(data: bytes) -> str:
    with pytest.raises(UserError) as info:
        unpack(data)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_round_trip():
    bs = _bitstream()
    data = pack(bs)
    assert data.startswith(MAGIC + b"\x03")
    assert len(data) == HEADER_BYTES + 300 + 40 + 4 == file_size(bs)
    assert unpack(data) == bs


def test_version_1_files_are_still_read():
    bs = _bitstream()
    data = version_1_bytes(bs)
    assert len(data) == 54 + 300 + 40 == file_size(dataclasses.replace(bs, check=None, version=1))
    assert unpack(data) == dataclasses.replace(bs, check=None, version=1)


def test_pack_needs_the_coder_check():
    with pytest.raises(ValueError, match="coder check"):
        pack(dataclasses.replace(_bitstream(), check=None))
    with pytest.raises(ValueError, match="coder check"):
        pack(dataclasses.replace(_bitstream(), check=2**32))


def test_pixel_limit_follows_pillow():
    assert DEFAULT_MAX_PIXELS == 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS
    small, huge = _bitstream(), _bitstream(height=9472, width=9472, y_bytes=8, z_bytes=8)
    assert pixel_limit_problem(small) is None
    assert "--max-pixels" in pixel_limit_problem(huge)
    assert pixel_limit_problem(huge, max_pixels=9472 * 9472) is None


def test_round_trip_of_the_largest_size():
    bs = _bitstream(height=65535, width=65535, y_bytes=5, z_bytes=5)
    assert unpack(pack(bs)) == bs


def test_empty_and_short_inputs():
    assert "empty" in _unpack_error(b"")
    assert "too short" in _unpack_error(MAGIC + b"\x01")


def test_bad_magic():
    assert "not an ICWEM file" in _unpack_error(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert "not an ICWEM file" in _unpack_error(b"GIF")


def test_unsupported_version():
    data = bytearray(pack(_bitstream()))
    data[5] = 7
    assert "version 7" in _unpack_error(bytes(data))


def test_version_4_round_trip_records_the_quality():
    bs = dataclasses.replace(_bitstream(), version=4, quality=2.75)
    data = pack(bs)
    assert data.startswith(MAGIC + b"\x04") and struct.unpack_from("<d", data, 54) == (2.75,)
    assert len(data) == HEADER_BYTES + 8 + 300 + 40 + 4 == file_size(bs)
    assert unpack(data) == bs


def test_fixed_rate_files_stay_version_3_without_a_quality():
    assert pack(_bitstream()) == pack(dataclasses.replace(_bitstream(), version=3, quality=None))
    with pytest.raises(ValueError, match="only in version 4"):
        pack(dataclasses.replace(_bitstream(), quality=2.0))
    with pytest.raises(ValueError, match="quality"):
        pack(dataclasses.replace(_bitstream(), version=4))


@pytest.mark.parametrize("quality", [float("nan"), float("inf"), 0.0, -1.0, 0.5, 255.01])
def test_a_crafted_quality_is_a_header_error(quality):
    body = bytearray(pack(dataclasses.replace(_bitstream(), version=4, quality=2.0))[:-4])
    body[54:62] = struct.pack("<d", quality)
    assert _unpack_error(_with_crc(bytes(body))).startswith("corrupted header: quality")


def test_checksum_mismatch():
    data = bytearray(pack(_bitstream()))
    data[-10] ^= 0x01
    assert _unpack_error(bytes(data)) == "corrupted: checksum mismatch"


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"height": 0}, "image size"),
        ({"width": 65536}, "image size"),
        ({"top": 64, "bottom": 0}, "padding"),
        ({"top": 13, "bottom": 14}, "multiple of 64"),
        ({"left": 1, "right": 29}, "multiple of 64"),
        ({"z_h": 3}, "hyper-latent shape"),
        ({"y_len": 299}, "string lengths"),
        ({"z_len": 41}, "string lengths"),
    ],
)
def test_inconsistent_header_is_rejected(fields, words):
    assert words in _unpack_error(_reheader(pack(_bitstream()), **fields))


def test_absurd_sizes_are_rejected_without_allocating():
    data = _reheader(pack(_bitstream()), height=2**32 - 1, width=2**32 - 1, y_len=2**32 - 1, z_len=2**32 - 1)
    start = time.perf_counter()
    message = _unpack_error(data)
    assert time.perf_counter() - start < 0.1
    assert "image size" in message


def test_string_lengths_beyond_the_file_are_rejected():
    assert "string lengths" in _unpack_error(_reheader(pack(_bitstream()), y_len=2**32 - 1))


def test_every_single_bit_flip_is_detected():
    data = pack(_bitstream(height=512, width=768, y_bytes=40_000, z_bytes=1_500))
    rng = random.Random(1234)
    positions = rng.sample(range(len(data) * 8), 256)
    positions += list(range(0, HEADER_BYTES * 8, 7))  # and plenty inside the header
    for bit in positions:
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(UserError):
            unpack(bytes(damaged))


def test_truncation_anywhere_is_detected():
    data = pack(_bitstream())
    for length in range(0, len(data), 7):
        with pytest.raises(UserError):
            unpack(data[:length])


def test_pack_refuses_an_impossible_bitstream():
    good = _bitstream()
    with pytest.raises(ValueError):
        pack(Bitstream(good.height, good.width, (0, 0, 0, 0), good.z_shape, b"", b"", good.fingerprint))
    with pytest.raises(ValueError):
        pack(Bitstream(good.height, good.width, good.pad, good.z_shape, b"", b"", b"short"))


def test_file_round_trip_is_atomic_and_leaves_no_temporary(tmp_path):
    bs = _bitstream()
    size = write_file(tmp_path / "out" / "a.icwem", bs)
    assert size == (tmp_path / "out" / "a.icwem").stat().st_size
    assert read_file(tmp_path / "out" / "a.icwem") == bs
    assert os.listdir(tmp_path / "out") == ["a.icwem"]


def test_read_file_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="not found") as info:
        read_file(tmp_path / "missing.icwem")
    assert "missing.icwem" in str(info.value)
    (tmp_path / "bad.icwem").write_bytes(b"hello world, definitely not a bitstream")
    with pytest.raises(UserError, match="bad.icwem: not an ICWEM file"):
        read_file(tmp_path / "bad.icwem")
