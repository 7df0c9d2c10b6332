"""Measure what each way of padding images to a multiple of 64 costs in real bytes, with one checkpoint.

    python tools/padding_study.py --checkpoint demo_output/train/0.01/checkpoint_latest.pth.tar
    python tools/padding_study.py --checkpoint CK /data/kodak --json padding.json

Without images, uses crops of scikit-image's photographs whose sides are not multiples of 64. Prints the
bytes and PSNR of every image with every variant (zeros centred, the original's choice; zeros, replicate
and reflect at the bottom/right; replicate centred), the totals, and the cheapest variant.

ICWEM codes images whose sides are multiples of 64, so every other image is padded before coding and the
reconstruction cropped back. The padded pixels are coded too, and what they look like decides what they
cost: zeros next to a bright border make an edge the transforms must spend bits on; copying the border
(replicate) or mirroring it (reflect) makes a smooth continuation. Where the padding goes matters as well:
centred padding puts a seam on all four sides, bottom/right padding on two.

``study`` codes each image once per variant with ``model.compress`` and counts the real bytes (the sum of
the entropy-coded strings, without the file header, which is the same for every variant). The
reconstruction is the synthesis of the encoder's ŷ, which is exactly what ``decompress`` rebuilds from
the strings, cropped back and quantised to 8 bit; its PSNR shows that the cheaper variants do not buy
their bytes with quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from models import load_checkpoint  # noqa: E402
from tools.photo_crops import PADDING_CROPS  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.image_io import find_images, read_image, to_tensor, to_uint8  # noqa: E402
from utils.metrics import psnr  # noqa: E402
from utils.padding import compute_padding, crop, pad  # noqa: E402


class Variant(NamedTuple):
    """One way of padding: ``utils.padding.pad``'s mode and ``compute_padding``'s placement."""

    name: str
    mode: str
    placement: str


VARIANTS = (
    Variant("zeros centred (original)", "constant", "centre"),
    Variant("zeros bottom/right", "constant", "bottom-right"),
    Variant("replicate bottom/right", "replicate", "bottom-right"),
    Variant("replicate centred", "replicate", "centre"),
    Variant("reflect bottom/right", "reflect", "bottom-right"),
)

@dataclass
class Measurement:
    """One image coded with one variant."""

    image: str
    variant: str
    height: int
    width: int
    num_bytes: int
    psnr: float


def default_images() -> list[tuple[str, np.ndarray]]:
    """``tools.photo_crops.PADDING_CROPS`` as (``photo HxW``, HxWx3 uint8) pairs."""
    return [(crop.label, crop.pixels()) for crop in PADDING_CROPS]


def code_padded(model: nn.Module, rgb_uint8: np.ndarray, variant: Variant, multiple: int) -> tuple[int, np.ndarray]:
    """Pad with ``variant``, compress, and return (bytes of the strings, 8-bit cropped reconstruction)."""
    device = next(model.parameters()).device
    x = to_tensor(rgb_uint8).to(device)
    padding = compute_padding(x.shape[-2], x.shape[-1], multiple, variant.placement)
    with torch.inference_mode():
        out = model.compress(pad(x, padding, variant.mode), return_y_hat=True)
        x_hat = model.synthesis(out["y_hat"], clamp=True)  # what decompress returns for these strings
    num_bytes = sum(len(string) for strings in out["strings"] for string in strings)
    return num_bytes, to_uint8(crop(x_hat, padding))


def study(model: nn.Module, images: Sequence[tuple[str, np.ndarray]], variants: Sequence[Variant] = VARIANTS,
          log: Callable[[str], None] = print) -> list[Measurement]:
    """Every image with every variant (the model in eval mode with its coder tables built)."""
    multiple = model.downsampling_factor
    measurements = []
    for index, (label, rgb) in enumerate(images):
        started = time.perf_counter()
        original = to_tensor(rgb)
        for variant in variants:
            num_bytes, reconstruction = code_padded(model, rgb, variant, multiple)
            measurements.append(Measurement(label, variant.name, rgb.shape[0], rgb.shape[1], num_bytes,
                                            psnr(original, to_tensor(reconstruction))))
        log(f"[{index + 1}/{len(images)}] {label}: {time.perf_counter() - started:.1f} s")
    return measurements


def totals(measurements: Sequence[Measurement]) -> list[dict]:
    """Per variant (in study order): total bytes, bpp over all pixels, mean PSNR, and bytes against the first."""
    variants = list(dict.fromkeys(m.variant for m in measurements))
    rows = []
    for variant in variants:
        mine = [m for m in measurements if m.variant == variant]
        num_bytes = sum(m.num_bytes for m in mine)
        pixels = sum(m.height * m.width for m in mine)
        rows.append({"variant": variant, "bytes": num_bytes, "bpp": 8.0 * num_bytes / pixels,
                     "psnr": float(np.mean([m.psnr for m in mine]))})
    for row in rows:
        row["bytes_vs_first_pct"] = 100.0 * (row["bytes"] / rows[0]["bytes"] - 1.0)
    return rows


def format_report(measurements: Sequence[Measurement]) -> list[str]:
    """Per-image bytes and PSNR for every variant, then the totals and the cheapest variant."""
    rows = totals(measurements)
    variants = [row["variant"] for row in rows]
    images = list(dict.fromkeys(m.image for m in measurements))
    found = {(m.image, m.variant): m for m in measurements}
    width = max(len("image"), *(len(image) for image in images))
    cell = max(16, *(len(v) for v in variants))
    lines = ["bytes (PSNR dB) per image:", f"{'image':<{width}}" + "".join(f" | {v:>{cell}}" for v in variants)]
    for image in images:
        cells = [f"{found[image, v].num_bytes} ({found[image, v].psnr:.2f})" for v in variants]
        lines.append(f"{image:<{width}}" + "".join(f" | {c:>{cell}}" for c in cells))
    lines += ["", f"totals over {len(images)} images:",
              f"{'variant':<{cell}} {'bytes':>9} {'vs first':>9} {'bpp':>7} {'mean PSNR':>10}"]
    for row in rows:
        lines.append(f"{row['variant']:<{cell}} {row['bytes']:>9} {row['bytes_vs_first_pct']:>+8.2f}% "
                     f"{row['bpp']:>7.4f} {row['psnr']:>10.3f}")
    best = min(rows, key=lambda row: row["bytes"])
    wins = sum(min(variants, key=lambda v: found[image, v].num_bytes) == best["variant"] for image in images)
    lines.append(f"\ncheapest: {best['variant']} ({best['bytes_vs_first_pct']:+.2f}% bytes against {variants[0]}, "
                 f"mean PSNR {best['psnr'] - rows[0]['psnr']:+.3f} dB; cheapest on {wins} of {len(images)} images)")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="ICWEM checkpoint")
    parser.add_argument("images", nargs="*", type=Path,
                        help="images or folders (default: crops of scikit-image's photos, sides not multiples of 64)")
    parser.add_argument("--json", type=Path, help="also write every measurement and the totals to this file")
    args = parser.parse_args(argv)

    if args.images:
        images = []
        for path in (p for root in args.images for p in find_images(root)):
            rgb, notices = read_image(path)
            for notice in notices:
                print(f"{path}: {notice}", file=sys.stderr)
            images.append((f"{path.name} {rgb.shape[0]}x{rgb.shape[1]}", rgb))
    else:
        images = default_images()
    model = load_checkpoint(args.checkpoint)
    print(f"{len(images)} images, {args.checkpoint}; bytes: model.compress strings (no file header), "
          f"PSNR of the cropped 8-bit reconstruction")
    measurements = study(model, images, log=lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(format_report(measurements)))
    if args.json is not None:
        document = {"checkpoint": str(args.checkpoint), "totals": totals(measurements),
                    "measurements": [dataclasses.asdict(m) for m in measurements]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
