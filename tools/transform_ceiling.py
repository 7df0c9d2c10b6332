"""What the transforms alone can give: the PSNR of g_s(g_a(x)) with y left unquantised, beside the coded PSNR.

    python tools/transform_ceiling.py shipped --max-side 512

If coding at a higher rate no longer raises PSNR, is it the entropy model or the transforms? Synthesis from
the unquantised latent is what the transforms give when quantisation loses nothing. A model whose coded PSNR
reaches it (or passes it a little: g_s was trained on quantised latents, not on these) is limited by its
transforms: more bits at the same transforms cannot buy much. ``--beyond T …`` shows it for a variable-rate
model: it is also coded at its top rate point with the gain raised by T nats (a quantisation step e^T times
finer), rates the model was not trained for and cannot write to a file.

Which half sets the ceiling? ``--optimise N`` also runs N Adam steps on the unquantised latent itself, from
g_a(x), for distortion alone (every weight fixed), and prints the PSNR g_s gives that latent: if it is
well above the ceiling, the synthesis can draw a better picture than the analysis transform asks of it,
and the limit is the analysis (an amortisation gap, which ``codec.py --refine`` narrows per image); if
not, the synthesis is the limit.

How many latent channels does the synthesis use? ``--channels`` holds each channel of g_a(x) at its mean over
the picture, one at a time, and prints per photo how many cost more than 0.01 dB, and what holding all the
others at their means together costs: channels that carry nothing the synthesis uses (the shipped model
leaves about a third of its 80 idle) are capacity the top rate points cannot spend.

Photos: tools/heldout_rd.py's held-out set, cropped to a multiple of 64 pixels; rate from the likelihoods;
PSNR of 8-bit pictures, as a decoded file would give.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_checkpoint  # noqa: E402
from models.zoo import expand_shipped  # noqa: E402
from tools.heldout_rd import add_photo_arguments, load_photos  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.coding.forward import estimate  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.image_io import to_tensor, to_uint8  # noqa: E402
from utils.metrics import psnr  # noqa: E402


def with_top_gain_raised(model: torch.nn.Module, nats: float) -> torch.nn.Module:
    """A copy of a variable-rate ``model`` whose top rate point's gain is e^``nats`` times larger (the gains
    below it unchanged): log g_K − log g_(K−1) = softplus(t) grows by ``nats``."""
    raised = copy.deepcopy(model)
    with torch.no_grad():
        steps = raised.rate_gain.log_steps
        step = torch.nn.functional.softplus(steps[-1].double()) + nats
        steps[-1] = (step + torch.log(-torch.expm1(-step))).to(steps.dtype)
    return raised


def code(model: torch.nn.Module, rgb: np.ndarray, quality) -> tuple[float, float]:
    """(PSNR in dB of the 8-bit picture, rate in bpp from the likelihoods) of ``rgb`` through ``model`` at
    ``quality``: ``utils.coding.forward.estimate``, the forward pass ``eval.py`` reports without ``--real``."""
    bpp, reconstruction, _ = estimate(model, rgb, quality)
    return psnr(to_tensor(rgb), to_tensor(reconstruction)), bpp


def optimised_latent_psnr(model: torch.nn.Module, x: torch.Tensor, steps: int, lr: float = 0.02) -> float:
    """PSNR (dB, 8-bit picture) of g_s(y*), y* found by ``steps`` Adam steps on ||g_s(y) − x||² from
    y = g_a(x); the step size is ``lr`` times the standard deviation of g_a(x)."""
    with torch.no_grad():
        y0 = model.analysis(x, inference=False)
    y = y0.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([y], lr=lr * float(y0.std()))
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            optimiser.zero_grad()
            loss = torch.mean((model.synthesis(y, inference=False) - x) ** 2)
            loss.backward()
            optimiser.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    with torch.inference_mode():
        return psnr(x, to_tensor(to_uint8(model.synthesis(y.detach(), clamp=True))))


def channel_usage(model: torch.nn.Module, x: torch.Tensor, threshold_db: float = 0.01) -> tuple[int, float]:
    """(channels of y = g_a(``x``) whose own mean, in place of the channel, lowers the PSNR of g_s(y) by more
    than ``threshold_db``; the PSNR drop in dB when all the other channels are held at their means at once)."""
    with torch.inference_mode():
        y = model.analysis(x)
        means = y.mean(dim=(2, 3), keepdim=True)
        ceiling = psnr(x, model.synthesis(y, clamp=True))

        def held(channels: list[int]) -> float:
            y_held = y.clone()
            y_held[:, channels] = means[:, channels]
            return ceiling - psnr(x, model.synthesis(y_held, clamp=True))

        idle = [c for c in range(y.shape[1]) if held([c]) <= threshold_db]
        return y.shape[1] - len(idle), held(idle) if idle else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints, shipped names, or 'shipped'")
    add_photo_arguments(p)
    p.add_argument("--beyond", type=float, nargs="+", default=[], metavar="T",
                   help="variable-rate models: also code at the top rate point with its gain raised by T nats")
    p.add_argument("--optimise", type=int, default=0, metavar="N",
                   help="also the PSNR of g_s from a latent optimised for distortion alone, N Adam steps from g_a(x)")
    p.add_argument("--channels", action="store_true",
                   help="also how many latent channels the synthesis uses (see the module docstring)")
    args = p.parse_args(argv)
    photos = load_photos(args.data, args.max_side)
    print(f"{'checkpoint':<24} {'photo':<22} {'ceiling dB':>10} {'coded dB':>9} {'bpp':>7}"
          + "".join(f" {f'+{t:g} nats dB / bpp':>20}" for t in args.beyond)
          + (f" {f'optimised y ({args.optimise}) dB':>22}" if args.optimise else "")
          + (f" {'channels used / idle ones held dB':>34}" if args.channels else ""))
    for checkpoint in expand_shipped(list(args.checkpoints)):
        model = load_checkpoint(checkpoint)
        if args.beyond and not model.rate_points:
            raise UserError(f"--beyond needs a variable-rate model; {checkpoint} is fixed-rate")
        raised = [with_top_gain_raised(model, t) for t in args.beyond]
        for name, rgb in photos.items():
            h, w = rgb.shape[0] // 64 * 64, rgb.shape[1] // 64 * 64
            rgb = np.ascontiguousarray(rgb[:h, :w])
            x = to_tensor(rgb)
            with torch.inference_mode():
                ceiling = to_tensor(to_uint8(model.synthesis(model.analysis(x), clamp=True)))
            coded_db, bpp = code(model, rgb, model.default_quality)
            beyond = "".join(f" {'%.2f / %.3f' % code(m, rgb, float(model.rate_points)):>20}" for m in raised)
            optimised = f" {optimised_latent_psnr(model, x, args.optimise):>22.2f}" if args.optimise else ""
            used = ""
            if args.channels:
                n_used, idle_drop = channel_usage(model, x)
                used = f" {'%d of %d / %.2f' % (n_used, model.config['M'], -idle_drop):>34}"
            print(f"{str(checkpoint)[-24:]:<24} {name[-22:]:<22} {psnr(x, ceiling):>10.2f} {coded_db:>9.2f} "
                  f"{bpp:>7.3f}{beyond}{optimised}{used}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
