"""Rate-distortion plots and Bjøntegaard tables for any number of results curves.

Curves are the dicts ``utils.evaluation.results.read_results`` returns. Figures are drawn on a bare matplotlib
``Figure`` (PNG through Agg, PDF through matplotlib's PDF backend) without pyplot, so plotting never
touches a global backend or needs a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from matplotlib.figure import Figure

from .bd import bd_psnr, bd_rate
from ..errors import UserError

PathLike = Union[str, Path]

# (results key, axis label) of the two panels.
PANELS = (("psnr-rgb", "PSNR-RGB [dB]"), ("ms-ssim-rgb-db", "MS-SSIM-RGB [dB]"))


def plot_rd(curves: Sequence[dict[str, Any]], out_prefix: PathLike, title: str = "") -> list[Path]:
    """Draw PSNR-vs-bpp and MS-SSIM(dB)-vs-bpp side by side; save ``<prefix>.png`` and ``<prefix>.pdf``.

    Points with a non-finite value (e.g. infinite PSNR of a lossless point) are left out of the lines.
    A curve without MS-SSIM is simply absent from the right panel. Returns the written paths.
    """
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, len(PANELS))
    for ax, (key, label) in zip(axes, PANELS):
        for curve in curves:
            results = curve["results"]
            if key not in results:
                continue
            points = [(r, d) for r, d in zip(results["bpp"], results[key]) if math.isfinite(r) and math.isfinite(d)]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3.5, linewidth=1.4, label=curve["name"])
        ax.set_xlabel("Bit rate [bpp]")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(loc="lower right", fontsize="small")
    if title:
        figure.suptitle(title)

    prefix = Path(out_prefix)
    written = []
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".png", ".pdf"):
            path = prefix.parent / (prefix.name + suffix)
            # A fixed (absent) creation date keeps the PDF byte-identical between runs.
            metadata = {"CreationDate": None} if suffix == ".pdf" else None
            figure.savefig(path, dpi=150, metadata=metadata)
            written.append(path)
    except OSError as exc:
        raise UserError(f"{prefix}: cannot write plot ({exc.strerror or exc})") from None
    return written


def find_curve(curves: Sequence[dict[str, Any]], name: str) -> int:
    """Index of the curve called ``name`` (exact match first, then case-insensitive)."""
    for matches in (lambda c: c["name"] == name, lambda c: c["name"].lower() == name.lower()):
        found = [i for i, curve in enumerate(curves) if matches(curve)]
        if found:
            return found[0]
    names = ", ".join(repr(c["name"]) for c in curves)
    raise UserError(f"no curve named {name!r}; curves are {names}")


def bd_table(curves: Sequence[dict[str, Any]], anchor: int, method: str = "cubic") -> list[dict[str, Any]]:
    """Bjøntegaard deltas of every curve against ``curves[anchor]``.

    Each row has ``name``, ``bd_rate_psnr`` (%), ``bd_psnr`` (dB) and ``bd_rate_msssim`` (%, on the
    MS-SSIM dB scale); a value that cannot be computed (too few points, no overlap, no MS-SSIM) is None
    and the reason is in ``notes``, so one odd curve does not hide the others.
    """
    reference = curves[anchor]["results"]
    rows = []
    for curve in curves:
        results = curve["results"]
        row: dict[str, Any] = {"name": curve["name"], "notes": []}
        row["bd_rate_psnr"] = _delta(bd_rate, reference, results, "psnr-rgb", method, row["notes"])
        row["bd_psnr"] = _delta(bd_psnr, reference, results, "psnr-rgb", method, row["notes"])
        row["bd_rate_msssim"] = _delta(bd_rate, reference, results, "ms-ssim-rgb-db", method, row["notes"])
        rows.append(row)
    return rows


def _delta(
    metric: Callable[..., float], reference: dict, results: dict, key: str, method: str, notes: list[str]
) -> Optional[float]:
    if key not in reference or key not in results:
        note = f"no {key}"
        if note not in notes:
            notes.append(note)
        return None
    try:
        return metric(reference["bpp"], reference[key], results["bpp"], results[key], method=method)
    except UserError as exc:
        if str(exc) not in notes:
            notes.append(str(exc))
        return None


def format_bd_table(rows: Sequence[dict[str, Any]], anchor_name: str) -> str:
    """The BD table as aligned text, anchor named in the header; 'n/a' where a value is missing."""

    def cell(value: Optional[float], unit: str) -> str:
        return "n/a" if value is None else f"{value:+.2f}{unit}"

    width = max([len("curve")] + [len(row["name"]) for row in rows])
    lines = [
        f"Bjøntegaard deltas against {anchor_name!r} (negative BD-rate / positive BD-PSNR = better):",
        f"{'curve':<{width}}  {'BD-rate PSNR':>12}  {'BD-PSNR':>9}  {'BD-rate MS-SSIM':>15}",
    ]
    for row in rows:
        lines.append(
            f"{row['name']:<{width}}  {cell(row['bd_rate_psnr'], '%'):>12}  {cell(row['bd_psnr'], ' dB'):>9}  "
            f"{cell(row['bd_rate_msssim'], '%'):>15}"
            + (f"  ({'; '.join(row['notes'])})" if row["notes"] else "")
        )
    return "\n".join(lines)
