"""The trained models that ship with ICWEM (``models/weights/``), found by name, quality or fingerprint.

``models/weights/manifest.json`` lists each shipped file: its name (``icwem-small-q1`` … lowest rate
first), quality index, λ, the model fingerprint a bitstream records, and the file's SHA-256. Anything that
takes a checkpoint path also takes a shipped name (``load_checkpoint("icwem-small-q3")``), and
``codec.py decode`` finds the model of a file by its fingerprint. The files hold float16 weights; they
load as float32, and the fingerprints are those of the loaded (rounded) models.

An entry with ``"rate_points": K`` (and no ``quality``) is a variable-rate model
(``models/variable_rate.py``): it serves every quality in [1, K], fractional ones included, and when one
is shipped ``--quality`` picks its rates instead of the fixed-rate files (which still decode their own
files by fingerprint). Today's manifest has none: the four fixed-rate files serve --quality 1 to 4.
"""

from __future__ import annotations

import json
from pathlib import Path
import math
from typing import List, Optional, Tuple, Union

from utils.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


def shipped_models() -> List[dict]:
    """The manifest's entries, lowest rate first, a variable-rate one last (empty if no models are shipped)."""
    if not MANIFEST.is_file():
        return []
    entries = json.loads(MANIFEST.read_text())["models"]
    return sorted(entries, key=lambda e: (bool(e.get("rate_points")), e.get("quality", 0)))


def variable_rate_model() -> Optional[dict]:
    """The shipped variable-rate model's entry (``rate_points`` set), or None (today's manifest)."""
    return next((e for e in shipped_models() if e.get("rate_points")), None)


def shipped_path(entry: dict) -> Path:
    return WEIGHTS_DIR / entry["file"]


def resolve_checkpoint(name_or_path: Union[str, Path]) -> Path:
    """A shipped model's file for its name; anything else is taken as a path."""
    for entry in shipped_models():
        if str(name_or_path) == entry["name"]:
            return shipped_path(entry)
    return Path(name_or_path)


def default_quality() -> Union[int, float]:
    """The middle rate point: what ``codec.py encode`` uses without ``--quality`` (the middle of [1, K]
    when a variable-rate model is shipped)."""
    models = shipped_models()
    if not models:
        raise UserError("no models are shipped in this copy of ICWEM (models/weights/manifest.json is missing); "
                        "pass --checkpoint")
    variable = variable_rate_model()
    if variable is not None:
        return (1 + variable["rate_points"]) / 2
    return models[len(models) // 2]["quality"]


def shipped_by_quality(quality: float) -> Tuple[Path, Optional[float]]:
    """The shipped file for ``--quality`` and the quality to code it at: the variable-rate model, if one
    is shipped, for any Q in [1, K]; else the fixed-rate file whose rate point is the integer Q (and None:
    a fixed-rate model takes no quality)."""
    variable = variable_rate_model()
    if variable is not None and math.isfinite(quality) and 1 <= quality <= variable["rate_points"]:
        return shipped_path(variable), float(quality)
    models = [e for e in shipped_models() if not e.get("rate_points")]
    for entry in models:
        if entry["quality"] == quality:
            return shipped_path(entry), None
    qualities = ", ".join(str(e["quality"]) for e in models) or "none"
    if variable is not None:
        qualities = f"any number from 1 to {variable['rate_points']}"
    raise UserError(f"--quality {quality:g}: no such shipped model (available: {qualities})")


def shipped_by_fingerprint(fingerprint: bytes) -> Optional[Path]:
    """The shipped file whose model has this fingerprint, or None."""
    for entry in shipped_models():
        if bytes.fromhex(entry["fingerprint"]) == fingerprint:
            return shipped_path(entry)
    return None


def expand_shipped(checkpoints: List[str]) -> List[str]:
    """Replace the word ``shipped`` by the names of all shipped models, lowest rate first."""
    out: List[str] = []
    for c in checkpoints:
        if c == "shipped":
            names = [e["name"] for e in shipped_models()]
            if not names:
                raise UserError("--checkpoint shipped: no models are shipped in this copy of ICWEM")
            out.extend(names)
        else:
            out.append(c)
    return out
