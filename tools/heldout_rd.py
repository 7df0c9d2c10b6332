"""Held-out RD of ICWEM checkpoints in all six channel orders, against JPEG (and WebP) on the same images.

    python tools/heldout_rd.py shipped                                   # the shipped models, estimated rate
    python tools/heldout_rd.py shipped --real --json out.json            # real .icwem bitstreams
    python tools/heldout_rd.py runs/a/0.004/checkpoint_latest.pth.tar runs/b/0.004/checkpoint_latest.pth.tar

Photos: every image in --data (default: the held-out folder that tools/training_data.py writes, else
scikit-image's chelsea and coffee). Per checkpoint it prints the mean bpp and PSNR over photos x orders,
the PSNR gain over JPEG at the same rate, the rate against JPEG at the same PSNR (geometric mean over the
coded images inside JPEG's sweep; "in" counts them), the training objective bpp + λ·255²·MSE at the
checkpoint's λ (what ranks two runs of one λ), and the worst photo's PSNR spread over its six channel orders. With four
or more checkpoints it also prints the BD-rate of their curve (mean over the coded images) against each
anchor's. Rates are estimated from the likelihoods unless --real. See utils/evaluation/colour.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_checkpoint  # noqa: E402
from models.zoo import expand_shipped  # noqa: E402
from tools.demo_steps import DEFAULT_TEST_PHOTOS, SWEEP, load_photo, shrink  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.evaluation.bd import bd_rate  # noqa: E402
from utils.evaluation.colour import ORDER_NAMES, AnchorCurve, colour_rows, reorder, spread_db, summarise  # noqa: E402
from utils.evaluation.measure import measure_image  # noqa: E402
from utils.image_io import find_images, read_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "runs" / "data" / "heldout"
ANCHORS = ("jpeg", "webp")


def load_photos(data: Path | None, max_side: int | None) -> dict[str, np.ndarray]:
    if data is None and DEFAULT_DATA.is_dir():
        data = DEFAULT_DATA
    if data is None:
        photos = {name: load_photo(name) for name in DEFAULT_TEST_PHOTOS}
    else:
        photos = {path.stem: read_image(path)[0] for path in find_images(data)}
    return {name: shrink(rgb, max_side) for name, rgb in photos.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints, shipped names, or 'shipped' for all shipped models")
    p.add_argument("--data", type=Path, help=f"held-out images (default {DEFAULT_DATA.relative_to(REPO)} if present)")
    p.add_argument("--real", action="store_true", help="code real bitstreams (default: likelihood estimate)")
    p.add_argument("--orders", nargs="+", choices=ORDER_NAMES, default=list(ORDER_NAMES), help="channel orders to code")
    p.add_argument("--max-side", type=int, help="shrink every photo to this longer side first (quicker)")
    p.add_argument("--json", type=Path, help="write every row and summary here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    photos = load_photos(args.data, args.max_side)
    checkpoints = expand_shipped(list(args.checkpoints))
    print(f"{len(photos)} photos ({', '.join(photos)}) x {len(args.orders)} channel orders; "
          f"rate {'from real bitstreams' if args.real else 'estimated from the likelihoods'}")
    anchors = {codec: {(name, order): AnchorCurve.sweep(codec, reorder(rgb, [ "RGB".index(c) for c in order]), SWEEP)
                       for name, rgb in photos.items() for order in args.orders} for codec in ANCHORS}

    report = {"photos": list(photos), "orders": args.orders, "real": args.real, "models": []}
    print(f"{'checkpoint':<58} {'bpp':>7} {'PSNR':>7} {'ΔPSNR JPEG':>10} {'rate vs JPEG':>12} {'vs WebP':>8} {'spread':>7} {'in':>3} {'R+λD':>7}")
    for checkpoint in checkpoints:
        model = load_checkpoint(checkpoint, map_location="cpu")

        def code(rgb: np.ndarray) -> tuple[float, np.ndarray]:
            fields, decoded = measure_image(model, rgb, args.real)
            return fields["bpp"], decoded

        rows = colour_rows(code, photos, anchors["jpeg"], args.orders)
        webp = [np.log(r.bpp / anchors["webp"][(r.photo, r.order)].rate_at(r.psnr)) for r in rows]
        webp = [w for w in webp if np.isfinite(w)]
        summary = summarise(rows, getattr(model, "lmbda", None)) | {"rate_vs_webp_pct": float(100 * np.expm1(np.mean(webp))) if webp else float("nan"),
                                     "spread_db": spread_db(rows)}
        report["models"].append(dict(checkpoint=str(checkpoint), summary=summary, rows=[vars(r) for r in rows]))
        print(f"{str(checkpoint)[-58:]:<58} {summary['bpp']:>7.4f} {summary['psnr']:>7.3f} "
              f"{summary['delta_psnr_vs_anchor']:>+10.2f} {summary['rate_vs_anchor_pct']:>+11.1f}% "
              f"{summary['rate_vs_webp_pct']:>+7.1f}% {summary['worst_spread_db']:>6.2f} {summary['rows_in_anchor_range']:>3} "
              f"{summary['rd_loss']:>7.4f}")
        print("    spread per photo (dB): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["spread_db"].items()))
        del model
    if len(checkpoints) >= 4:
        curve = sorted((m["summary"]["bpp"], m["summary"]["psnr"]) for m in report["models"])
        for codec in ANCHORS:
            sweeps = list(anchors[codec].values())
            rate = np.mean([s.bpp for s in sweeps], axis=0)
            quality = np.mean([s.psnr for s in sweeps], axis=0)
            try:
                value = bd_rate(rate, quality, [c[0] for c in curve], [c[1] for c in curve])
            except Exception as exc:  # curves that do not overlap have no BD-rate
                value, why = float("nan"), str(exc)
                print(f"BD-rate vs {codec}: undefined ({why})")
            else:
                print(f"BD-rate vs {codec} (PSNR, mean curve over photos x orders): {value:+.1f} %")
            report[f"bd_rate_vs_{codec}_pct"] = value
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
