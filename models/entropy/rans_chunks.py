"""y's rANS stream in chunks of a bounded number of symbols, so that decoding memory does not grow with
the image's area.

The decoder must be handed each stream with a zero guard of about 81 bytes per symbol behind it
(``rans_guard``: the most a hostile stream can make CompressAI's decoder read), and ``RansDecoder``
copies the guarded stream once more. For one stream per image that is 2 × 81 bytes × 30 M symbols
≈ 5 GB at 24 megapixels. So y's symbols (slice order, C order within a slice) are coded as
consecutive independent rANS streams of ``CHUNK_SYMBOLS`` symbols each, the last one shorter, and
only one guarded chunk exists at a time: about 170 MB at most, whatever the image size.

Layout of a y string with ``K = ceil(S / chunk_symbols)`` chunks: the byte lengths of the first
``K - 1`` chunks (u32, little-endian), then the chunks back to back. With one chunk (up to about
1.3 megapixels for the published model) that is the plain rANS stream, byte for byte what
``chunk_symbols=None`` (one stream, however many symbols) writes. Each extra chunk costs its 8-byte
rANS flush and 4 bytes of length. Which files use which is the file format's business
(utils/coding/bitstream.py).
"""

from __future__ import annotations

import struct
from typing import List, Optional

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import Tensor

from .rans_guard import check_stream, guarded

CHUNK_SYMBOLS = 1 << 20
_LENGTH = struct.Struct("<I")


def num_chunks(num_symbols: int, chunk_symbols: Optional[int]) -> int:
    """How many streams code ``num_symbols`` symbols (``chunk_symbols`` None: one, however many)."""
    if chunk_symbols is None or num_symbols == 0:
        return 1
    return -(-num_symbols // chunk_symbols)


class ChunkedEncoder:
    """Takes y's symbols and scale indexes in coding order, a piece at a time; ``finish`` returns the string."""

    def __init__(self, tables: tuple, chunk_symbols: Optional[int] = CHUNK_SYMBOLS) -> None:
        self.tables = tables  # (cdfs, cdf_lengths, offsets)
        self.chunk_symbols = chunk_symbols
        self.chunks: List[bytes] = []
        self._encoder = BufferedRansEncoder()
        self._room = chunk_symbols

    def encode(self, symbols: Tensor, indexes: Tensor) -> None:
        symbols, indexes = symbols.reshape(-1), indexes.reshape(-1)
        start = 0
        while start < symbols.numel():
            end = symbols.numel() if self._room is None else min(symbols.numel(), start + self._room)
            self._encoder.encode_with_indexes(symbols[start:end].tolist(), indexes[start:end].tolist(), *self.tables)
            if self._room is not None:
                self._room -= end - start
                if self._room == 0:
                    self._close_chunk()
            start = end

    def _close_chunk(self) -> None:
        self.chunks.append(self._encoder.flush())
        self._encoder = BufferedRansEncoder()
        self._room = self.chunk_symbols

    def finish(self) -> bytes:
        if self._room != self.chunk_symbols or not self.chunks:  # the last, partial chunk (or an empty stream)
            self._close_chunk()
        lengths = b"".join(_LENGTH.pack(len(c)) for c in self.chunks[:-1])
        return lengths + b"".join(self.chunks)


class ChunkedDecoder:
    """Decodes a y string of ``num_symbols`` symbols piece by piece, one guarded chunk in memory at a time.

    The layout is checked before any decoding: the length table must fit, each chunk must be a stream
    that an encoder writes for its symbol count (``rans_guard.check_stream``), and the chunks must fill
    the string exactly. Any problem is a one-line ``ValueError``.
    """

    def __init__(self, string: bytes, num_symbols: int, tables: tuple, chunk_symbols: Optional[int] = CHUNK_SYMBOLS,
                 name: str = "y") -> None:
        self.tables = tables
        count = num_chunks(num_symbols, chunk_symbols)
        table_bytes = _LENGTH.size * (count - 1)
        if len(string) < table_bytes:
            raise ValueError(f"{name} string of {len(string)} bytes cannot hold the lengths of its {count} chunks")
        lengths = [_LENGTH.unpack_from(string, _LENGTH.size * k)[0] for k in range(count - 1)]
        lengths.append(len(string) - table_bytes - sum(lengths))
        if lengths[-1] < 0:
            raise ValueError(f"{name} string: its chunk lengths add up to more than its {len(string)} bytes")
        self.counts = [chunk_symbols] * (count - 1) + [num_symbols - (count - 1) * (chunk_symbols or 0)]
        self.chunks, offset = [], table_bytes
        for k, (size, symbols) in enumerate(zip(lengths, self.counts)):
            chunk = string[offset:offset + size]
            check_stream(chunk, symbols, f"{name} chunk {k}" if count > 1 else name)
            self.chunks.append(chunk)
            offset += size
        self._next = 0
        self._decoder: Optional[RansDecoder] = None
        self._left = 0

    def decode(self, indexes: Tensor) -> Tensor:
        """The next ``indexes.numel()`` symbols (int32, shaped like ``indexes``)."""
        flat = indexes.reshape(-1).tolist()
        out: List[int] = []
        start = 0
        while start < len(flat):
            if self._left == 0:
                self._open_next()
            end = min(len(flat), start + self._left)
            out += self._decoder.decode_stream(flat[start:end], *self.tables)
            self._left -= end - start
            start = end
        return torch.tensor(out, dtype=torch.int32).view(indexes.shape)

    def _open_next(self) -> None:
        if self._next == len(self.chunks):
            raise ValueError("more symbols asked of the y string than it codes")
        k = self._next
        self._decoder = None  # free the previous guarded copy before making the next
        decoder = RansDecoder()
        decoder.set_stream(guarded(self.chunks[k], self.counts[k], f"y chunk {k}"))
        self.chunks[k] = b""
        self._decoder, self._left, self._next = decoder, self.counts[k], k + 1
