"""Rate-distortion measurement of ICWEM checkpoints on a folder of images (``eval.py``, ``test.py``).

Two ways to measure an image, both on the whole image (padded for the model, cropped back after):

* estimate (default): one forward pass. bpp is the likelihood estimate, sum of -log2 p over y and z
  divided by the ORIGINAL image's pixel count; quality is measured on the forward reconstruction,
  cropped and quantised to 8 bit. The pass has no separate encoder and decoder, so its time is split
  in half between the two, as CompressAI's ``eval_model --entropy-estimation`` reports it.
* real (``--real``): the image is coded into the bytes of an ``.icwem`` file and decoded from those
  bytes. bpp counts every byte of the file, the 58-byte header and checksum included; quality is
  measured on the decoded image. The estimate is reported beside it, with the overhead in percent.
  With ``--refine N`` the latents are refined before coding (models/refine.py); the estimate is then
  that of the refined latents, and the encode time includes the refinement.

Quality is always measured between 8-bit images, as a user would on the decoded PNG. Results for a set
of images are plain averages over images (PSNR, bpp and times), as CompressAI averages them; MS-SSIM
is averaged over the images it is defined for (11 px and larger).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models import load_checkpoint
from models.refine import RefineOptions
from models.zoo import resolve_checkpoint

from ..coding.bitstream import DEFAULT_MAX_PIXELS, OVERHEAD_BYTES, pack, read_file, unpack, write_file
from ..coding import channel_order as channel_orders
from ..coding.codec import coding_quality, decode_bitstream, encode_image
from ..coding.forward import estimate
from ..errors import UserError
from ..image_io import find_images, read_image, to_tensor, write_png
from ..metrics import bpp_from_bytes, ms_ssim, ms_ssim_db, psnr

PathLike = Union[str, Path]

RATE_REAL = f"bpp from the real .icwem files: all bytes, the {OVERHEAD_BYTES}-byte header and checksum included"
RATE_ESTIMATE = (
    "bpp estimated from the likelihoods of the forward pass (no bitstream written); "
    "times: the forward pass, split in half between encoding and decoding"
)

# Per-image fields, in table order: (key, table heading, format).
_COLUMNS = (
    ("bytes", "bytes", "{:>8.0f}"),
    ("bpp", "bpp", "{:>8.4f}"),
    ("bpp_estimate", "est bpp", "{:>8.4f}"),
    ("overhead_pct", "ovh %", "{:>6.2f}"),
    ("psnr", "PSNR dB", "{:>8.3f}"),
    ("ms_ssim", "MS-SSIM", "{:>8.5f}"),
    ("ms_ssim_db", "(dB)", "{:>6.2f}"),
    ("encode_s", "enc s", "{:>7.3f}"),
    ("decode_s", "dec s", "{:>7.3f}"),
)


def measure_image(
    model: nn.Module,
    rgb_uint8: np.ndarray,
    real: bool,
    icwem_path: Optional[Path] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    refine: Optional[RefineOptions] = None,
    quality: Optional[float] = None,
    channel_order: Optional[int] = None,
) -> tuple[dict, np.ndarray]:
    """Code one image and measure it (see the module docstring); returns (fields, reconstruction).
    ``quality``: a variable-rate model's (``utils.coding.codec.coding_quality``). ``channel_order``: as
    ``encode_image`` takes it (None: the encoder's search, whose time counts as encoding time in both
    modes; 0: the image's own order).

    The fields are those of the table (``_COLUMNS``) that the mode has, in table order.

    With ``real`` and an ``icwem_path``, the bitstream is written to that file and decoded from the file
    read back; without a path it makes the round trip through the same bytes in memory. An image above
    ``max_pixels`` is refused before it is coded, as its decode would be. ``refine`` (real only)
    refines the latents before they are coded.
    """
    _check_refine(real, refine)
    height, width = rgb_uint8.shape[:2]
    if real and height * width > max_pixels:
        raise UserError(
            f"image of {width}x{height} = {height * width} pixels is above the decode limit of {max_pixels} "
            "pixels; pass --max-pixels to code it"
        )
    refining = refine is not None and refine.iterations > 0
    start = time.perf_counter()
    if channel_order is None:
        channel_order = channel_orders.choose(model, rgb_uint8, coding_quality(model, quality))
    search_s = time.perf_counter() - start
    if not refining:  # a refined file has its own estimate, from the refinement
        bpp_estimate, reconstruction, forward_s = estimate(
            model, channel_orders.reorder(rgb_uint8, channel_order), coding_quality(model, quality))
        reconstruction = channel_orders.restore(reconstruction, channel_order)
    if real:
        bs, encoded = encode_image(model, rgb_uint8, refine, quality, channel_order)
        if refining:
            bpp_estimate = encoded["refine"].bpp
        if icwem_path is None:
            data = pack(bs)
            num_bytes, received = len(data), unpack(data)
        else:
            num_bytes, received = write_file(icwem_path, bs), read_file(icwem_path)
        reconstruction, decoded = decode_bitstream(model, received, max_pixels)
        bpp = bpp_from_bytes(num_bytes, height, width)
        fields = {
            "bytes": num_bytes,
            "bpp": bpp,
            "bpp_estimate": bpp_estimate,
            "overhead_pct": _overhead_pct(bpp, bpp_estimate),
            "encode_s": search_s + encoded["encode_s"],
            "decode_s": decoded["decode_s"],
        }
    else:
        fields = {"bpp": bpp_estimate, "encode_s": search_s + forward_s / 2, "decode_s": forward_s / 2}
    original, coded = to_tensor(rgb_uint8), to_tensor(reconstruction)
    value = ms_ssim(original, coded)
    fields.update(psnr=psnr(original, coded), ms_ssim=value, ms_ssim_db=ms_ssim_db(value))
    return {key: fields[key] for key, _, _ in _COLUMNS if key in fields}, reconstruction


def mean_fields(rows: Sequence[dict]) -> dict:
    """Average the table fields of per-image rows over images (see the module docstring).

    ``ms_ssim_db`` of the mean is the dB value of the mean MS-SSIM, as CompressAI plots it; the
    overhead is that of the mean rate over the mean estimate.
    """
    keys = [key for key, _, _ in _COLUMNS if key in rows[0]]
    mean = {key: float(np.mean([row[key] for row in rows])) for key in keys}
    defined = [row["ms_ssim"] for row in rows if not math.isnan(row["ms_ssim"])]
    mean["ms_ssim"] = float(np.mean(defined)) if defined else float("nan")
    mean["ms_ssim_db"] = ms_ssim_db(mean["ms_ssim"])
    if "bpp_estimate" in mean:
        mean["overhead_pct"] = _overhead_pct(mean["bpp"], mean["bpp_estimate"])
    return mean


def _check_refine(real: bool, refine: Optional[RefineOptions]) -> None:
    if refine is not None and refine.iterations > 0 and not real:
        raise UserError("--refine needs --real: it refines the latents that a real file codes")


def _overhead_pct(bpp: float, bpp_estimate: float) -> float:
    return 100.0 * (bpp / bpp_estimate - 1.0) if bpp_estimate > 0 else float("inf")


def load_model(checkpoint: PathLike, device: torch.device, tile: Optional[int]) -> nn.Module:
    """``load_checkpoint`` with the rows per band of streamed inference (None: the model's default)."""
    model = load_checkpoint(checkpoint, map_location=device)
    if tile is not None:
        model.tile = tile
    return model


def _read(path: Path, show_notices: bool = True) -> np.ndarray:
    """``read_image``, printing its notices (alpha dropped, ...) on stderr without breaking the progress bar."""
    rgb, notices = read_image(path)
    for notice in notices if show_notices else ():
        tqdm.write(f"{path}: {notice}", file=sys.stderr)
    return rgb


# ---------------------------------------------------------------------------------------------- eval.py
def evaluate_checkpoints(
    checkpoints: Sequence[PathLike],
    data: PathLike,
    real: bool,
    device: torch.device,
    tile: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    refine: Optional[RefineOptions] = None,
    qualities: Optional[Sequence[float]] = None,
) -> list[tuple[str, dict]]:
    """RD points, labelled: one per fixed-rate checkpoint, and one per quality of a variable-rate
    checkpoint (``qualities``, default its rate points 1 … K), each the mean fields over every image
    under ``data`` (``mean_fields``), in that order.

    All checkpoint paths are checked before the first is evaluated, so a typo in the last one does
    not surface hours later. Image notices (alpha dropped, ...) are logged once. ``refine``: see
    ``measure_image``. ``qualities`` with a fixed-rate checkpoint is a ``UserError``.
    """
    _check_refine(real, refine)
    missing = [str(path) for path in checkpoints if not resolve_checkpoint(path).is_file()]
    if missing:
        raise UserError(f"checkpoint not found: {', '.join(missing)}")
    paths = find_images(data)
    points = []
    for index, checkpoint in enumerate(checkpoints):
        model = load_model(checkpoint, device, tile)
        if qualities and not model.rate_points:
            raise UserError(f"{checkpoint}: --quality needs a variable-rate checkpoint; this one is fixed-rate")
        sweep = (qualities or range(1, model.rate_points + 1)) if model.rate_points else [None]
        for quality in sweep:
            label = str(checkpoint) if quality is None else f"{checkpoint} Q{float(quality):g}"
            rows = []
            for path in tqdm(paths, desc=label, unit="image", leave=False, dynamic_ncols=True):
                rgb = _read(path, show_notices=index == 0 and len(points) == 0)
                rows.append(measure_image(model, rgb, real, max_pixels=max_pixels, refine=refine,
                                          quality=None if quality is None else float(quality))[0])
            points.append((label, mean_fields(rows)))
        del model  # before the next one is loaded, so that only one is in memory at a time
    return points


def rd_results(points: Sequence[dict]) -> dict[str, list[float]]:
    """The RD points in CompressAI's ``eval_model`` results layout (plus ``bpp-estimate`` when real)."""
    results = {
        "psnr-rgb": [p["psnr"] for p in points],
        "ms-ssim-rgb": [p["ms_ssim"] for p in points],
        "ms-ssim-rgb-db": [p["ms_ssim_db"] for p in points],
        "bpp": [p["bpp"] for p in points],
        "encoding_time": [p["encode_s"] for p in points],
        "decoding_time": [p["decode_s"] for p in points],
    }
    if "bpp_estimate" in points[0]:
        results["bpp-estimate"] = [p["bpp_estimate"] for p in points]
    return results


def format_table(first_heading: str, labelled_rows: Sequence[tuple[str, dict]], label_width: int = 0) -> list[str]:
    """Text table lines, heading first: a label column, then the fields the rows have (times in seconds)."""
    columns = [column for column in _COLUMNS if column[0] in labelled_rows[0][1]]
    width = max(label_width, len(first_heading), *(len(label) for label, _ in labelled_rows))
    widths = [len(fmt.format(0.0)) for _, _, fmt in columns]
    lines = [f"{first_heading:<{width}} " + " ".join(f"{head:>{w}}" for (_, head, _), w in zip(columns, widths))]
    for label, row in labelled_rows:
        lines.append(f"{label:<{width}} " + " ".join(fmt.format(row[key]) for key, _, fmt in columns))
    return lines


# ---------------------------------------------------------------------------------------------- test.py
def output_names(paths: Sequence[Path], root: PathLike) -> list[str]:
    """A distinct file-name stem per image for per-image outputs (``<name>.icwem``, ``<name>.png``).

    The name is the path relative to ``root`` without its extension, folders joined by ``__``, so
    ``a/img.png`` and ``b/img.png`` do not overwrite each other. Images that would still share a name
    (``img.png`` and ``img.jpg``; names differing only in case, which collide on some file systems)
    keep their extension too, and a ``-2``, ``-3``, ... suffix settles anything left.
    """
    root = Path(root)
    base = root if root.is_dir() else root.parent
    relative = [path.relative_to(base) for path in paths]
    stems = ["__".join(rel.with_suffix("").parts) for rel in relative]
    counts = Counter(stem.lower() for stem in stems)
    names: list[str] = []
    used: set[str] = set()
    for rel, stem in zip(relative, stems):
        name = stem if counts[stem.lower()] == 1 else f"{stem}_{rel.suffix.lstrip('.').lower()}"
        candidate, number = name, 1
        while candidate.lower() in used:
            number += 1
            candidate = f"{name}-{number}"
        used.add(candidate.lower())
        names.append(candidate)
    return names


def code_images(
    checkpoint: PathLike,
    data: PathLike,
    real: bool,
    device: torch.device,
    save_dir: Optional[PathLike],
    tile: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    refine: Optional[RefineOptions] = None,
    quality: Optional[float] = None,
    model: Optional[nn.Module] = None,
) -> tuple[list[dict], dict]:
    """Measure every image under ``data`` with one checkpoint; returns (per-image rows, mean fields).

    ``quality``: a variable-rate checkpoint's (None: its middle); ``model``: the checkpoint already
    loaded (a sweep over qualities loads it once).

    Each row starts with ``name``, ``height`` and ``width``. With ``save_dir`` and ``real``, each image
    leaves ``<name>.icwem`` (the bitstream) and ``<name>.png`` (decoded from that file as read back);
    with ``save_dir`` in either mode, ``results.csv`` and ``results.json`` hold the rows and the mean.
    Each row is printed as soon as it is measured, and the mean after them. ``refine``: see
    ``measure_image``.
    """
    _check_refine(real, refine)
    paths = find_images(data)
    names = output_names(paths, data)
    model = load_model(checkpoint, device, tile) if model is None else model
    coding_quality(model, quality)  # a quality the checkpoint cannot take fails before any image
    save_dir = Path(save_dir) if save_dir is not None else None
    mean_label = f"mean ({len(paths)} images)"
    label_width = max(len(label) for label in [*names, mean_label])
    rows: list[dict] = []
    for path, name in zip(tqdm(paths, unit="image", leave=False, dynamic_ncols=True), names):
        rgb = _read(path)
        icwem_path = save_dir / f"{name}.icwem" if save_dir is not None and real else None
        fields, reconstruction = measure_image(model, rgb, real, icwem_path, max_pixels, refine, quality)
        if icwem_path is not None:
            _write_png(save_dir / f"{name}.png", reconstruction)
        row = {"name": name, "height": rgb.shape[0], "width": rgb.shape[1], **fields}
        rows.append(row)
        heading, line = format_table("image", [(name, fields)], label_width)
        if len(rows) == 1:
            tqdm.write(heading)
        tqdm.write(line)
    mean = mean_fields(rows)
    tqdm.write(format_table("image", [(mean_label, mean)], label_width)[1])
    if save_dir is not None:
        _write_image_tables(save_dir, checkpoint, data, real, rows, mean, coding_quality(model, quality))
    return rows, mean


def _write_png(path: Path, rgb: np.ndarray) -> None:
    try:
        write_png(path, rgb)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _write_image_tables(
    save_dir: Path, checkpoint: PathLike, data: PathLike, real: bool, rows: list[dict], mean: dict,
    quality: Optional[float] = None,
) -> None:
    """``results.csv`` (one row per image) and ``results.json`` (the rows, the mean and what they mean)."""
    columns = list(rows[0])
    document = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "rate": RATE_REAL if real else RATE_ESTIMATE,
        **({} if quality is None else {"quality": quality}),
        "images": [_json_safe(row) for row in rows],
        "mean": _json_safe(mean),
    }
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        with open(save_dir / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        (save_dir / "results.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise UserError(f"{save_dir}: cannot write results ({exc.strerror or exc})") from None


def _json_safe(fields: dict) -> dict:
    """Strict JSON has no NaN or infinity: undefined MS-SSIM (tiny images) and infinite PSNR become null."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in fields.items()}
