"""Safe input for CompressAI's rANS decoder: refuse impossible streams, bound every read.

CompressAI's ``RansDecoder`` (cpp_exts/rans/rans_interface.cpp, 64-bit rANS with 32-bit words) reads its
input without bounds checks. Each of its steps reads at most one word: the initial state (two words),
the advance after each symbol, and each 4-bit read of the *bypass* mode that codes values beyond a
table's tail. A bypass value first reads a count ``n`` in 4-bit pieces (a piece of 15 means "more
follows") and then ``n`` more pieces, so a crafted stream (0xFF bytes, say) makes one symbol read far
past the end of the string. We do not change the coder; instead:

1. ``check_stream`` refuses what no encoder writes: fewer than 8 bytes (the encoder always flushes its
   64-bit state), a length that is not whole words, an initial state below 2^31 (the encoder's state
   never is), or more words than the encoder can write for that many symbols.
2. ``guarded`` appends zero words, as many as the decoder can possibly read past the string.

The bound behind (2), for ``S`` symbols and a string of ``B`` words. The decoder's state x stays in
[2^31, 2^64) once it starts there (check 1): an advance keeps x ≥ x / 2^16 ≥ 2^15 and renormalises
below 2^31, a 4-bit read keeps x ≥ 2^27 before renormalising. So with ``bl`` the bit length of x
(32..64): a word read adds 32 to bl, an advance removes at most 16, a 4-bit read removes 4. Hence the
words read after the initial two are ``R ≤ 1 + S/2 + G/8`` for ``G`` 4-bit reads. A bypass symbol with
``k`` count pieces of 15 makes at most ``15 + 16k`` 4-bit reads. A piece of 15 comes from bits of x:
at most 9 from the state a symbol starts with (bl ≤ 64, and a word is read by the 9th piece), at most 8
from each word of the string, and none from a zero guard word (the piece after it is 0, which ends the
count). So ``G ≤ 15S + 16(9S + 8B)`` and the decoder reads at most ``3 + 20.375 S + 16 B`` words: the
guard is ``3 + 20.375 S + 15 B`` words, all zero, and owned by us. A valid stream is consumed exactly,
so the guard never changes a correct decode. (tests/test_hostile.py measures that crafted streams read
nothing beyond it.)
"""

from __future__ import annotations

import struct

RANS_L = 1 << 31  # lower bound of the rANS state (RANS64_L)
STATE_BYTES = 8
WORD_BYTES = 4
# Most bits an encoder writes per symbol: 16 + 1 for the table symbol, 4 for the bypass count and 4 x 8
# for a 32-bit raw value.
MAX_BITS_PER_SYMBOL = 53


def max_stream_words(num_symbols: int) -> int:
    """Most 32-bit words CompressAI's encoder writes for ``num_symbols`` symbols (state flush included)."""
    return 4 + (MAX_BITS_PER_SYMBOL * num_symbols + 31) // 32


def guard_words(num_words: int, num_symbols: int) -> int:
    """Zero words that cover every read the decoder can make past a ``num_words``-word string."""
    return 3 + (163 * num_symbols + 7) // 8 + 15 * num_words


def check_stream(string: bytes, num_symbols: int, name: str) -> None:
    """Raise ``ValueError`` (one line) if no encoder writes ``string`` for ``num_symbols`` symbols."""
    size = len(string)
    if size < STATE_BYTES:
        raise ValueError(f"{name} string of {size} bytes is shorter than the {STATE_BYTES}-byte rANS state every stream starts with")
    if size % WORD_BYTES:
        raise ValueError(f"{name} string of {size} bytes is not made of whole {WORD_BYTES}-byte words")
    low, high = struct.unpack_from("<II", string)
    if (high << 32 | low) < RANS_L:
        raise ValueError(f"{name} string starts with an impossible rANS state")
    if size // WORD_BYTES > max_stream_words(num_symbols):
        raise ValueError(f"{name} string of {size} bytes is longer than any encoder writes for {num_symbols} symbols")


def guarded(string: bytes, num_symbols: int, name: str) -> bytes:
    """``string`` checked by :func:`check_stream`, followed by the zero guard the decoder may read."""
    check_stream(string, num_symbols, name)
    return bytes(string) + bytes(WORD_BYTES * guard_words(len(string) // WORD_BYTES, num_symbols))
