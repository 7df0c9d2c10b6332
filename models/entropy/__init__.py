"""Entropy coding below the model: what makes a file decode to the same symbols on any machine, and
what keeps CompressAI's rANS decoder inside its input.

One job per module, none of which imports the model (they take it, or its entropy models, as
arguments), like CompressAI's ``entropy_models`` and ``ans``:

* ``parameters``: the float64 copy of the entropy-parameter networks that ``compress`` and
  ``decompress`` run (σ the same everywhere), and where it runs.
* ``tables``: the pinned scale table, coder tables from float64 pmfs, scale indexes, CompressAI's own
  tables for the original implementation's strings.
* ``check``: the coder check (CRC of what the decoder must rebuild) and the refusal of foreign strings.
* ``rans_guard``: refuse impossible rANS streams and bound every read of the decoder.
* ``rans_chunks``: y's symbols as independent streams of a bounded size.

The file format (headers, versions, which coder options a version means) is not here: it lives in
``utils/coding/``.
"""

from .check import LEGACY_HINT, CoderCheck, ForeignStrings, check_z_strings, z_symbols
from .parameters import PORTABLE_DTYPE, NativeNet, parameter_device, parameter_nets, release_parameter_nets
from .rans_chunks import CHUNK_SYMBOLS, ChunkedDecoder, ChunkedEncoder
from .rans_guard import guarded
from .tables import SCALE_TABLE, legacy_coders, rans_tables, scale_indexes, update_tables

__all__ = [
    "CHUNK_SYMBOLS", "LEGACY_HINT", "PORTABLE_DTYPE", "SCALE_TABLE", "ChunkedDecoder", "ChunkedEncoder", "CoderCheck",
    "ForeignStrings", "NativeNet", "check_z_strings", "guarded", "legacy_coders", "parameter_device", "parameter_nets",
    "rans_tables", "release_parameter_nets", "scale_indexes", "update_tables", "z_symbols",
]
