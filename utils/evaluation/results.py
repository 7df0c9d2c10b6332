"""Rate-distortion results files in CompressAI's ``eval_model`` JSON layout.

One file holds one curve::

    {"name": "JPEG", "description": "...",
     "results": {"psnr-rgb": [...], "ms-ssim-rgb": [...], "bpp": [...],
                 "encoding_time": [...], "decoding_time": [...]}}

Every list has one entry per rate point. Keeping CompressAI's layout means our curves, our anchors and
the curves CompressAI publishes (``compressai/results/``) can be plotted and compared together.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union

from ..errors import UserError
from ..metrics import ms_ssim_db

PathLike = Union[str, Path]

REQUIRED_KEYS = ("psnr-rgb", "bpp")
KNOWN_KEYS = ("psnr-rgb", "ms-ssim-rgb", "ms-ssim-rgb-db", "bpp", "encoding_time", "decoding_time")
# Older CompressAI result files use these names.
_ALIASES = {"psnr": "psnr-rgb", "ms-ssim": "ms-ssim-rgb"}


def write_results(path: PathLike, name: str, description: str, results: dict[str, list[float]]) -> None:
    """Write one RD curve as a CompressAI-style JSON file (parent folders are created).

    ``results`` needs at least ``psnr-rgb`` and ``bpp``; all lists must have the same length. Keys are
    written in ``KNOWN_KEYS`` order, then any others, so files diff cleanly between runs.
    """
    results = {key: [float(v) for v in values] for key, values in results.items()}  # numpy scalars too
    problem = _results_problem(results)
    if problem is not None:
        raise ValueError(f"cannot write results: {problem}")
    ordered = {key: results[key] for key in KNOWN_KEYS if key in results}
    ordered.update({key: values for key, values in results.items() if key not in ordered})
    document = {"name": name, "description": description, "results": ordered}
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None


def read_results(path: PathLike) -> dict[str, Any]:
    """Read and validate one results JSON; returns the same layout with points sorted by bpp.

    Old key names (``psnr``, ``ms-ssim``) are renamed, a missing name becomes the file's stem, and
    ``ms-ssim-rgb-db`` is derived from ``ms-ssim-rgb`` when absent so every curve can be plotted in dB.
    Any structural problem is a one-line ``UserError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: results file not found")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), dict):
        raise UserError(f'{path}: not a results file (expected an object with a "results" object)')

    results = {_ALIASES.get(key, key): values for key, values in document["results"].items()}
    results = {key: values for key, values in results.items() if isinstance(values, list)}
    problem = _results_problem(results)
    if problem is not None:
        raise UserError(f"{path}: {problem}")
    results = {key: [float(v) for v in values] for key, values in results.items()}
    if "ms-ssim-rgb" in results and "ms-ssim-rgb-db" not in results:
        results["ms-ssim-rgb-db"] = [ms_ssim_db(v) for v in results["ms-ssim-rgb"]]

    order = sorted(range(len(results["bpp"])), key=lambda i: results["bpp"][i])
    name = document.get("name")
    return {
        "name": name if isinstance(name, str) and name else path.stem,
        "description": str(document.get("description", "")),
        "results": {key: [values[i] for i in order] for key, values in results.items()},
    }


def _results_problem(results: dict[str, Any]) -> str | None:
    """Why ``results`` is not a valid set of RD points, or None."""
    missing = [key for key in REQUIRED_KEYS if key not in results]
    if missing:
        return f"missing {', '.join(missing)} in results"
    lengths = {key: len(values) for key, values in results.items()}
    if len(set(lengths.values())) != 1:
        return f"results lists differ in length: {lengths}"
    if lengths["bpp"] == 0:
        return "results hold no points"
    for key, values in results.items():
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return f'"{key}" must be a list of numbers'
        if key == "bpp" and not all(math.isfinite(v) and v >= 0 for v in values):
            return '"bpp" must hold finite non-negative numbers'
    return None
