"""Does a model code a photo better whole or cut into tiles? Rate and PSNR of each held-out photo coded in
independent T × T tiles, for several T, beside the whole photo.

    python tools/tile_study.py shipped --max-side 512 --tiles 64 128 256

A model whose entropy model has learned what it sees in training crops of 64 × 64 (4 × 4 latents, every
position at a border) but not the interior of a large latent predicts a whole photo's latent worse than
the same photo's 64-pixel tiles, each coded alone: its rate then rises with the tile size. A well-trained
model shows the opposite (a tile loses its context and pays its own hyper-latent). This measurement is what
led to the entropy stage (``tools/entropy_stage.py``). Photos: tools/heldout_rd.py's held-out set, cropped
to a multiple of 64 pixels, in their own channel order; rate from the likelihoods; PSNR of the tiles put
back together; R+λD at the checkpoint's λ where it records one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_checkpoint  # noqa: E402
from models.zoo import expand_shipped  # noqa: E402
from tools.heldout_rd import add_photo_arguments, load_photos  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.coding.forward import estimate  # noqa: E402


def code_in_tiles(model, rgb: np.ndarray, tile: Optional[int]) -> tuple[float, float]:
    """(bpp, MSE in [0, 1] units) of ``rgb`` coded as independent ``tile``-square tiles (None: whole)."""
    h, w = rgb.shape[:2]
    step = tile or max(h, w)
    bits = squared = 0.0
    for top in range(0, h, step):
        for left in range(0, w, step):
            part = rgb[top:top + step, left:left + step]
            bpp, picture, _ = estimate(model, part)
            bits += bpp * part.shape[0] * part.shape[1]
            squared += float(np.sum((picture.astype(np.float64) - part) ** 2))
    return bits / (h * w), squared / (h * w * 3 * 255.0 ** 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints, shipped names, or 'shipped'")
    p.add_argument("--tiles", type=int, nargs="+", default=[64, 128, 256], help="tile sides (multiples of 64)")
    add_photo_arguments(p)
    args = p.parse_args(argv)
    if any(t < 64 or t % 64 for t in args.tiles):
        p.error("--tiles must be multiples of 64")
    photos = {name: rgb[: rgb.shape[0] // 64 * 64, : rgb.shape[1] // 64 * 64]
              for name, rgb in load_photos(args.data, args.max_side).items()}
    print(f"{len(photos)} photos ({', '.join(photos)}); rate from the likelihoods; means over photos")
    print(f"{'checkpoint':<44} {'tiles':>6} {'bpp':>8} {'PSNR':>7} {'R+λD':>8}")
    for checkpoint in expand_shipped(list(args.checkpoints)):
        model = load_checkpoint(checkpoint)
        for tile in [*args.tiles, None]:
            results: Dict[str, tuple] = {name: code_in_tiles(model, rgb, tile) for name, rgb in photos.items()}
            bpp = float(np.mean([r[0] for r in results.values()]))
            mse = float(np.mean([r[1] for r in results.values()]))
            db = float(np.mean([10 * np.log10(1 / r[1]) for r in results.values()]))
            objective = f"{bpp + model.lmbda * 255 ** 2 * mse:>8.4f}" if model.lmbda else f"{'—':>8}"
            print(f"{str(checkpoint)[-44:]:<44} {tile or 'whole':>6} {bpp:>8.4f} {db:>7.2f} {objective}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
