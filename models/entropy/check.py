"""The decoder's checks: strings this coder cannot have written, and what the decoder must rebuild.

``check_z_strings`` refuses z strings other tables wrote (the original implementation's) before any of
y is decoded; ``CoderCheck`` is the CRC-32 the file format stores (utils/coding/bitstream.py), so a
decode that diverged from the encoder ends in an error, never in a silently wrong picture.
"""

from __future__ import annotations

import struct
import zlib
from typing import List, Optional, Sequence

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor

class ForeignStrings(ValueError):
    """Strings this model's coder cannot have written, such as the original implementation's, which
    ``decompress(..., legacy=True)`` reads. Read with the wrong tables they desynchronise at once: ŷ of
    1e8 to 1e13 and a picture of NaN (measured on the shipped models)."""


LEGACY_HINT = "the original implementation's strings are read with decompress(..., legacy=True)"


def check_z_strings(eb: EntropyBottleneck, z_hat: Tensor, strings: Sequence[bytes]) -> None:
    """Raise ``ForeignStrings`` unless each z string is exactly what ``eb`` writes for the ẑ it decoded to.

    rANS coding is deterministic, so a string this coder wrote re-encodes to itself. One written with
    other tables (CompressAI's float32 ones differ from ours in a few entries) decodes to other symbols,
    which re-encode to other bytes. z has a sixteenth of y's positions, so the check costs little, and
    it fails before any of y is decoded.
    """
    for b, (string, again) in enumerate(zip(strings, eb.compress(z_hat))):
        if again != string:
            raise ForeignStrings(
                f"z string {b} ({len(string)} bytes) is not what this model's coder writes for the symbols it "
                f"decodes to (other coder tables, or damaged); {LEGACY_HINT}"
            )


class CoderCheck:
    """CRC-32 of what the decoder must rebuild for one image: z's symbols, then y's symbols and scale
    indexes (slice order, C order within a slice), each as little-endian int32. A variable-rate model's
    ``quality`` (models/variable_rate.py) enters after z's symbols as a little-endian float64: it decides
    how the symbols are dequantised, and where σ·g sits at the table's floor it changes no index, so
    without it a file whose quality was altered would decode to a wrong picture. Fixed-rate models
    (``quality`` None) have the check they always had.

    Built slice by slice as the slices are coded, so that no whole-latent list of symbols has to be
    kept: symbols enter the CRC at once, and indexes (0..63) wait as one byte each until ``value``.
    """

    def __init__(self, z_symbols: Tensor, quality: Optional[float] = None) -> None:
        self._crc = _crc_int32(z_symbols, 0)
        if quality is not None:
            self._crc = zlib.crc32(struct.pack("<d", quality), self._crc)
        self._indexes: List[Tensor] = []

    def add(self, symbols: Tensor, indexes: Tensor) -> None:
        self._crc = _crc_int32(symbols, self._crc)
        self._indexes.append(indexes.detach().to("cpu", torch.uint8))

    def value(self) -> int:
        crc = self._crc
        for part in self._indexes:
            crc = _crc_int32(part, crc)
        return crc


def _crc_int32(part: Tensor, crc: int) -> int:
    return zlib.crc32(np.ascontiguousarray(part.detach().cpu().numpy(), dtype="<i4").tobytes(), crc)


def z_symbols(eb: EntropyBottleneck, z_hat: Tensor) -> Tensor:
    """The integer symbols behind a dequantised ẑ (ẑ = symbol + median, so this is exact)."""
    return torch.round(z_hat - eb._get_medians().detach()).to(torch.int32)
