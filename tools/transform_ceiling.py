"""What the transforms alone can give: the PSNR of g_s(g_a(x)) with y left unquantised, beside the coded PSNR.

    python tools/transform_ceiling.py shipped --max-side 512

If coding at a higher rate no longer raises PSNR, is it the entropy model or the transforms? Synthesis from
the unquantised latent is what the transforms give when quantisation loses nothing. A model whose coded PSNR
reaches it (or passes it a little: g_s was trained on quantised latents, not on these) is limited by its
transforms: more bits at the same transforms cannot buy much.
Photos: tools/heldout_rd.py's held-out set, cropped to a multiple of 64 pixels; rate from the likelihoods.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_checkpoint  # noqa: E402
from models.zoo import expand_shipped  # noqa: E402
from tools.heldout_rd import add_photo_arguments, load_photos  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.image_io import to_tensor  # noqa: E402
from utils.metrics import psnr  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints, shipped names, or 'shipped'")
    add_photo_arguments(p)
    args = p.parse_args(argv)
    photos = load_photos(args.data, args.max_side)
    print(f"{'checkpoint':<24} {'photo':<22} {'ceiling dB':>10} {'coded dB':>9} {'bpp':>7}")
    for checkpoint in expand_shipped(list(args.checkpoints)):
        model = load_checkpoint(checkpoint)
        for name, rgb in photos.items():
            h, w = rgb.shape[0] // 64 * 64, rgb.shape[1] // 64 * 64
            x = to_tensor(np.ascontiguousarray(rgb[:h, :w]))
            with torch.inference_mode():
                ceiling = model.synthesis(model.analysis(x), clamp=True).clamp(0, 1)
                out = model(x, inference=True, quality=model.default_quality)
                bits = sum(float(-torch.log2(lk).sum()) for lk in out["likelihoods"].values())
            print(f"{str(checkpoint)[-24:]:<24} {name[-22:]:<22} {psnr(x, ceiling):>10.2f} "
                  f"{psnr(x, out['x_hat'].clamp(0, 1)):>9.2f} {bits / (h * w):>7.3f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
