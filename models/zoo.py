"""The trained models that ship with ICWEM (``models/weights/``), found by name, quality or fingerprint.

``models/weights/manifest.json`` lists each shipped file: its name (``icwem-small-q1`` … lowest rate
first), quality index, λ, the model fingerprint a bitstream records, and the file's SHA-256. Anything that
takes a checkpoint path also takes a shipped name (``load_checkpoint("icwem-small-q3")``), and
``codec.py decode`` finds the model of a file by its fingerprint. The files hold float16 weights; they
load as float32, and the fingerprints are those of the loaded (rounded) models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Union

from utils.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


def shipped_models() -> List[dict]:
    """The manifest's entries, lowest rate first (empty if no models are shipped)."""
    if not MANIFEST.is_file():
        return []
    entries = json.loads(MANIFEST.read_text())["models"]
    return sorted(entries, key=lambda e: e["quality"])


def shipped_path(entry: dict) -> Path:
    return WEIGHTS_DIR / entry["file"]


def resolve_checkpoint(name_or_path: Union[str, Path]) -> Path:
    """A shipped model's file for its name; anything else is taken as a path."""
    for entry in shipped_models():
        if str(name_or_path) == entry["name"]:
            return shipped_path(entry)
    return Path(name_or_path)


def default_quality() -> int:
    """The middle rate point: what ``codec.py encode`` uses without ``--quality``."""
    models = shipped_models()
    if not models:
        raise UserError("no models are shipped in this copy of ICWEM (models/weights/manifest.json is missing); "
                        "pass --checkpoint")
    return models[len(models) // 2]["quality"]


def shipped_by_quality(quality: int) -> Path:
    models = shipped_models()
    for entry in models:
        if entry["quality"] == quality:
            return shipped_path(entry)
    qualities = ", ".join(str(e["quality"]) for e in models) or "none"
    raise UserError(f"--quality {quality}: no such shipped model (available: {qualities})")


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
