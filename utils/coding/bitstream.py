"""The ``.icwem`` file: one coded image, self-describing and checksummed.

Layout (little-endian), version 3 (fixed-rate models; version 4 adds the quality, versions 5 and 6 a
channel order, below)::

    offset  size  field
         0     5  magic b"ICWEM"
         5     1  format version (u8) = 3
         6    16  model fingerprint (which weights can decode this file)
        22     4  original height (u32)
        26     4  original width (u32)
        30     8  padding top, bottom, left, right (u16 each)
        38     4  hyper-latent z height, width (u16 each)
        42     4  length of y_string (u32)
        46     4  length of z_string (u32)
        50     4  coder check (u32): CRC-32 of the symbols and scale indexes the decoder must rebuild
        54        z_string, then y_string
       end-4   4  CRC-32 (zlib.crc32) of every byte before it (u32)

y_string holds y's symbols as independent rANS streams of 2^20 symbols each
(``models/entropy/rans_chunks.py``): the byte lengths of all but the last stream (u32 each), then the
streams. An image with at most 2^20 latent symbols (about 1.3 megapixels with the published model) has
one stream and no lengths.

Version 4 is written for a variable-rate model (``models/variable_rate.py``) and only for one: version 3
with the quality Q the image was coded at (float64, offset 54) after the coder check, so its strings
start at offset 62. A reader accepts only a finite Q in [1, MAX_QUALITY]; the decoder then requires a
variable-rate checkpoint with Q in its range [1, K] (``utils/coding/codec.py``). Files of fixed-rate
models stay version 3, byte for byte as before.

Versions 5 and 6 are versions 3 and 4 with one more byte after the header's last field: the channel
order the encoder coded the image in (``utils/coding/channel_order.py``), an index 1 to 5 into
``CHANNEL_ORDERS`` (the strings start at offset 55 and 63). An image coded in its own order (index 0)
is written as version 3 or 4, byte for byte as before the search existed; a version-5 or -6 header with
index 0, or above 5, is refused. The order also enters the stored coder check (``channel_order.seal``),
so a file whose order byte was changed, its CRC recomputed, is refused instead of decoding to a
picture with its colours swapped. Version 2 is the same with y as one rANS stream however large the image;
version 1 is version 2 without the coder check (the strings start at offset 50), its strings coded
as the original implementation coded them (float32 parameters, CompressAI's tables). Both are still
read (``utils/coding/codec.py: decoder_options``).
The trailing CRC catches damage to the file; the coder check catches a decoder that, from intact
bytes, rebuilt other symbols than the encoder coded (models/entropy/ explains why that should not
happen, and this is how we would know).

``unpack`` trusts nothing: it checks the header and checksum before the decoder sees any field, so a
damaged or hostile file gives a one-line ``UserError`` instead of a crash or a huge allocation.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import UserError

PathLike = Union[str, Path]

MAGIC = b"ICWEM"
VERSION = 3  # what a fixed-rate model's files are
VARIABLE_RATE_VERSION = 4  # what a variable-rate model's files are: version 3 and the quality
# Versions 5 and 6: versions 3 and 4 with the channel order the image was coded in (1 to 5; 0 is written as 3 or 4).
ORDER_VERSION = {VERSION: 5, VARIABLE_RATE_VERSION: 6}
QUALITY_VERSIONS = (VARIABLE_RATE_VERSION, ORDER_VERSION[VARIABLE_RATE_VERSION])
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
NUM_CHANNEL_ORDERS = 6
# The largest quality a version-4 header may hold: a bound on the number of rate points of any model.
MAX_QUALITY = 255.0
FINGERPRINT_BYTES = 16
# The padded image must be a multiple of the model's total downsampling (y: 16, z: 64).
PAD_MULTIPLE = 64
MAX_SIDE = 65535

_HEADERS = {1: struct.Struct("<5sB16sII4H2HII"), 2: struct.Struct("<5sB16sII4H2HIII")}
_HEADERS[3] = _HEADERS[2]
_HEADERS[4] = struct.Struct("<5sB16sII4H2HIIId")
_HEADERS[5] = struct.Struct("<5sB16sII4H2HIIIB")
_HEADERS[6] = struct.Struct("<5sB16sII4H2HIIIdB")
_HEADER = _HEADERS[VERSION]
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size
OVERHEAD_BYTES = _HEADER.size + _CRC.size
_MIN_OVERHEAD_BYTES = min(h.size for h in _HEADERS.values()) + _CRC.size
# Pillow's default limit on decoded image size (Image.MAX_IMAGE_PIXELS, ~89.5 MP); --max-pixels raises it.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class Bitstream:
    """Everything needed to decode one image: geometry, entropy-coded strings, model fingerprint.

    ``pad`` is (top, bottom, left, right) pixels added to reach a multiple of 64; ``z_shape`` is the
    hyper-latent's spatial size, which the decoder needs before it can decode ``z_string``. ``check``
    is the coder check (``models.entropy.CoderCheck``); None for a version-1 file, which has none.
    ``version`` says how ``y_string`` is laid out (see the module docstring). ``quality``: the quality a
    variable-rate model coded the image at (versions 4 and 6 only); None in every other version.
    ``channel_order``: the index into ``CHANNEL_ORDERS`` of the order the image was coded in (versions 5 and
    6, 1 to 5); 0 (its own order) in every other version.
    """

    height: int
    width: int
    pad: tuple[int, int, int, int]
    z_shape: tuple[int, int]
    y_string: bytes
    z_string: bytes
    fingerprint: bytes
    check: Optional[int] = None
    version: int = VERSION
    quality: Optional[float] = None
    channel_order: int = 0


def pack(bs: Bitstream) -> bytes:
    """Serialise a ``Bitstream`` to the bytes of an ``.icwem`` file of its version, 2 to 6 (see the module docstring)."""
    problem = _geometry_problem(bs.height, bs.width, bs.pad, bs.z_shape)
    if problem is None and len(bs.fingerprint) != FINGERPRINT_BYTES:
        problem = f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(bs.fingerprint)}"
    if problem is None and bs.version not in (2, 3, 4, 5, 6):
        problem = f"can only write format versions 2 to 6, not {bs.version}"
    if problem is None and bs.version in QUALITY_VERSIONS:
        problem = _quality_problem(bs.quality)
    elif problem is None and bs.quality is not None:
        problem = f"a quality is written only in version {VARIABLE_RATE_VERSION} (or {ORDER_VERSION[VARIABLE_RATE_VERSION]}), not {bs.version}"
    if problem is None and bs.version in ORDER_VERSION.values():
        problem = _order_problem(bs.channel_order)
    elif problem is None and bs.channel_order != 0:
        problem = f"a channel order is written only in versions {tuple(ORDER_VERSION.values())}, not {bs.version}"
    if problem is None and not (isinstance(bs.check, int) and 0 <= bs.check < 2**32):
        problem = f"coder check must be a 32-bit unsigned integer, got {bs.check!r}"
    if problem is None and max(len(bs.y_string), len(bs.z_string)) >= 2**32:
        problem = "entropy-coded string longer than 4 GiB"
    if problem is not None:
        raise ValueError(f"cannot pack bitstream: {problem}")
    header = _HEADERS[bs.version].pack(
        MAGIC,
        bs.version,
        bytes(bs.fingerprint),
        bs.height,
        bs.width,
        *bs.pad,
        *bs.z_shape,
        len(bs.y_string),
        len(bs.z_string),
        bs.check,
        *([bs.quality] if bs.version in QUALITY_VERSIONS else []),
        *([bs.channel_order] if bs.version in ORDER_VERSION.values() else []),
    )
    body = header + bytes(bs.z_string) + bytes(bs.y_string)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> Bitstream:
    """Parse and validate ``.icwem`` bytes; any problem is a one-line ``UserError``.

    Checks, in order: length, magic, version, checksum, image geometry, declared string lengths.
    Only fixed-size header fields are read before every check has passed.
    """
    if len(data) == 0:
        raise UserError("empty file, not an ICWEM file")
    if len(data) < _MIN_OVERHEAD_BYTES:
        if not MAGIC.startswith(bytes(data[: len(MAGIC)])):
            raise UserError("not an ICWEM file")
        raise UserError(f"too short to be an ICWEM file ({len(data)} bytes, header alone is {_MIN_OVERHEAD_BYTES})")
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise UserError("not an ICWEM file")
    version = data[len(MAGIC)]
    if version not in READABLE_VERSIONS:
        raise UserError(f"unsupported ICWEM format version {version} (this build reads versions 1 to {READABLE_VERSIONS[-1]})")
    header = _HEADERS[version]
    overhead = header.size + _CRC.size
    if len(data) < overhead:
        raise UserError(f"too short to be an ICWEM file ({len(data)} bytes, header alone is {overhead})")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: len(data) - _CRC.size]) != stored_crc:
        raise UserError("corrupted: checksum mismatch")

    fields = header.unpack_from(data)
    _, _, fingerprint, height, width, top, bottom, left, right, z_h, z_w, y_len, z_len = fields[:13]
    check = fields[13] if version >= 2 else None
    quality = fields[14] if version in QUALITY_VERSIONS else None
    channel_order = fields[-1] if version in ORDER_VERSION.values() else 0
    pad, z_shape = (top, bottom, left, right), (z_h, z_w)
    problem = _geometry_problem(height, width, pad, z_shape)
    if problem is None and version in QUALITY_VERSIONS:
        problem = _quality_problem(quality)
    if problem is None and version in ORDER_VERSION.values():
        problem = _order_problem(channel_order)
    if problem is not None:
        raise UserError(f"corrupted header: {problem}")
    if overhead + y_len + z_len != len(data):
        raise UserError(
            f"corrupted header: declared string lengths ({z_len} + {y_len} bytes) do not match the file "
            f"size ({len(data)} bytes with a {overhead}-byte header and checksum)"
        )
    z_start = header.size
    y_start = z_start + z_len
    return Bitstream(
        height=height,
        width=width,
        pad=pad,
        z_shape=z_shape,
        y_string=bytes(data[y_start : y_start + y_len]),
        z_string=bytes(data[z_start:y_start]),
        fingerprint=bytes(fingerprint),
        check=check,
        version=version,
        quality=quality,
        channel_order=channel_order,
    )


def file_size(bs: Bitstream) -> int:
    """Size in bytes of the ``.icwem`` file holding ``bs``."""
    header = _HEADERS[bs.version]
    return header.size + _CRC.size + len(bs.y_string) + len(bs.z_string)


def pixel_limit_problem(bs: Bitstream, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """Why decoding ``bs`` is refused under the pixel limit (Pillow's convention), or None.

    Checked from the header alone, before any tensor exists: decoding work and memory grow with the
    claimed size, whatever the strings hold.
    """
    pixels = bs.height * bs.width
    if pixels > max_pixels:
        return (
            f"image of {bs.width}x{bs.height} = {pixels} pixels is above the limit of {max_pixels} pixels; "
            "pass --max-pixels to decode it if you trust the file"
        )
    return None


def _geometry_problem(
    height: int, width: int, pad: tuple[int, int, int, int], z_shape: tuple[int, int]
) -> Optional[str]:
    """Why this image geometry is impossible, or None if it is consistent."""
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        return f"image size {height}x{width} outside 1..{MAX_SIDE}"
    if len(pad) != 4 or any(not 0 <= p < PAD_MULTIPLE for p in pad):
        return f"padding {tuple(pad)} must be four values in 0..{PAD_MULTIPLE - 1}"
    top, bottom, left, right = pad
    padded_h, padded_w = height + top + bottom, width + left + right
    if padded_h % PAD_MULTIPLE or padded_w % PAD_MULTIPLE:
        return f"padded size {padded_h}x{padded_w} is not a multiple of {PAD_MULTIPLE}"
    expected = (padded_h // PAD_MULTIPLE, padded_w // PAD_MULTIPLE)
    if tuple(z_shape) != expected:
        return f"hyper-latent shape {tuple(z_shape)} should be {expected} for padded size {padded_h}x{padded_w}"
    return None


def _quality_problem(quality: Optional[float]) -> Optional[str]:
    """Why ``quality`` cannot be a version-4 file's, or None: it must be a finite float in [1, MAX_QUALITY]."""
    if not isinstance(quality, float) or not 1.0 <= quality <= MAX_QUALITY:  # NaN fails the comparison
        return f"quality {quality!r} is not a number in [1, {MAX_QUALITY:g}]"
    return None


def _order_problem(order: int) -> Optional[str]:
    """Why ``order`` cannot be a version-5 or -6 file's channel order, or None: an index 1 to 5 (0, the image's
    own order, is written as version 3 or 4)."""
    if not (isinstance(order, int) and 1 <= order < NUM_CHANNEL_ORDERS):
        return f"channel order {order!r} is not an index in 1..{NUM_CHANNEL_ORDERS - 1}"
    return None


def read_file(path: PathLike) -> Bitstream:
    """Read and validate an ``.icwem`` file; problems are a ``UserError`` naming the path."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an .icwem file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return unpack(data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def write_file(path: PathLike, bs: Bitstream) -> int:
    """Write an ``.icwem`` file atomically and return its size in bytes.

    The bytes go to a temporary file in the same folder, which then replaces ``path`` in one step, so
    an interrupted run never leaves a half-written file that looks valid by name.
    """
    path = Path(path)
    data = pack(bs)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, like open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)
