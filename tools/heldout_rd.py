"""Held-out RD of ICWEM checkpoints in all six channel orders, against JPEG (and WebP) on the same images.

    python tools/heldout_rd.py shipped                                   # the shipped models, estimated rate
    python tools/heldout_rd.py shipped --real --json out.json            # real .icwem bitstreams
    python tools/heldout_rd.py runs/a/0.004/checkpoint_latest.pth.tar runs/b/0.004/checkpoint_latest.pth.tar

Photos: every image in --data (default: the held-out folder that tools/training_data.py writes, else
scikit-image's chelsea and coffee). Per checkpoint it prints the mean bpp and PSNR over photos x orders,
the PSNR gain over JPEG at the same rate, the rate against JPEG at the same PSNR (geometric mean over the
coded images inside JPEG's sweep; "in" counts them), the training objective bpp + λ·255²·MSE at the
checkpoint's λ (what ranks two runs of one λ), and the worst photo's PSNR spread over its six channel orders.
A variable-rate checkpoint gives one such point per quality (--quality, default each of its rate points 1 … K),
ranked at λ(Q). The fixed-rate checkpoints form one curve and each variable-rate checkpoint another; a curve of
four or more points gets its BD-rate (mean over the coded images) against each anchor's and a variable-rate
curve also against the fixed-rate one, and each variable-rate point at the λ of a fixed-rate checkpoint gets
the change in R+λD against it (issue 24's comparison at equal training):

    python tools/heldout_rd.py runs/r8/prod/*/checkpoint_latest.pth.tar runs/vr1/prod/0.0003-0.15/checkpoint_latest.pth.tar

Each image is coded as codec.py codes it: in the best of its six channel orders (utils/coding/channel_order.py),
which makes a photo's six orders code alike; --keep-channel-order measures the model alone, each image in its
own order. Rates are estimated from the likelihoods unless --real. See utils/evaluation/colour.py.
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
from models.refine import trained_lambda_at  # noqa: E402
from utils.cli import positive_number, run_cli  # noqa: E402
from utils.evaluation.bd import bd_rate  # noqa: E402
from utils.evaluation.colour import ORDER_NAMES, AnchorCurve, colour_rows, reorder, spread_db, summarise  # noqa: E402
from utils.evaluation.measure import measure_image  # noqa: E402
from utils.image_io import find_images, read_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "runs" / "data" / "heldout"
ANCHORS = ("jpeg", "webp")


def add_photo_arguments(p: argparse.ArgumentParser) -> None:
    """--data and --max-side, which every tool that codes the held-out photos takes (see ``load_photos``)."""
    p.add_argument("--data", type=Path, help=f"held-out images (default {DEFAULT_DATA.relative_to(REPO)} if present)")
    p.add_argument("--max-side", type=int, help="shrink every photo to this longer side first (quicker)")


def load_photos(data: Path | None, max_side: int | None) -> dict[str, np.ndarray]:
    if data is None and DEFAULT_DATA.is_dir():
        data = DEFAULT_DATA
    if data is None:
        photos = {name: load_photo(name) for name in DEFAULT_TEST_PHOTOS}
    else:
        photos = {path.stem: read_image(path)[0] for path in find_images(data)}
    return {name: shrink(rgb, max_side) for name, rgb in photos.items()}


def qualities_of(model, requested: list[float] | None) -> list[float | None]:
    """What one checkpoint is coded at: None (its one rate) for a fixed-rate model; --quality, else each of its
    rate points 1 … K, for a variable-rate one."""
    if not getattr(model, "rate_points", 0):
        return [None]
    return [float(q) for q in (requested or range(1, model.rate_points + 1))]


def print_bd(label: str, anchor: tuple, test: tuple) -> float:
    """BD-rate (PSNR) of ``test`` against ``anchor``, each (rates, PSNRs); NaN, said, where none exists."""
    try:
        value = bd_rate(anchor[0], anchor[1], test[0], test[1])
    except Exception as exc:  # curves that do not overlap, or too few points, have no BD-rate
        print(f"BD-rate {label}: undefined ({exc})")
        return float("nan")
    print(f"BD-rate {label} (PSNR, mean curve over photos x orders): {value:+.1f} %")
    return value


def compare_to_fixed(report: dict) -> None:
    """Each variable-rate point against the fixed-rate checkpoint trained for the same λ: the change in
    R + λD at that λ (negative: the variable-rate model is better there)."""
    fixed = {m["lambda"]: m for m in report["models"] if m["quality"] is None and m["lambda"]}
    for m in report["models"]:
        match = fixed.get(m["lambda"]) if m["quality"] is not None else None
        if match:
            change = 100 * (m["summary"]["rd_loss"] / match["summary"]["rd_loss"] - 1)
            m["rd_loss_vs_fixed_pct"] = change
            print(f"  {m['label'][-40:]} against {match['label'][-40:]} at λ {m['lambda']:g}: R+λD {change:+.2f} %")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints, shipped names, or 'shipped' for all shipped models")
    add_photo_arguments(p)
    p.add_argument("--real", action="store_true", help="code real bitstreams (default: likelihood estimate)")
    p.add_argument("--orders", nargs="+", choices=ORDER_NAMES, default=list(ORDER_NAMES), help="channel orders to code")
    p.add_argument("--quality", type=positive_number("quality"), nargs="+", metavar="Q",
                   help="the qualities to code a variable-rate checkpoint at (default: each of its rate points)")
    p.add_argument("--keep-channel-order", action="store_true",
                   help="code each image in its own channel order: the model's own spread, without the encoder's search")
    p.add_argument("--json", type=Path, help="write every row and summary here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    photos = load_photos(args.data, args.max_side)
    checkpoints = expand_shipped(list(args.checkpoints))
    print(f"{len(photos)} photos ({', '.join(photos)}) x {len(args.orders)} channel orders; "
          f"rate {'from real bitstreams' if args.real else 'estimated from the likelihoods'}")
    anchors = {codec: {(name, order): AnchorCurve.sweep(codec, reorder(rgb, [ "RGB".index(c) for c in order]), SWEEP)
                       for name, rgb in photos.items() for order in args.orders} for codec in ANCHORS}

    report = {"photos": list(photos), "orders": args.orders, "real": args.real,
              "channel_order_search": not args.keep_channel_order, "models": []}
    print(f"{'checkpoint':<58} {'bpp':>7} {'PSNR':>7} {'ΔPSNR JPEG':>10} {'rate vs JPEG':>12} {'vs WebP':>8} {'spread':>7} {'in':>3} {'R+λD':>7}")
    for checkpoint in checkpoints:
        model = load_checkpoint(checkpoint, map_location="cpu")
        for quality in qualities_of(model, args.quality):

            def code(rgb: np.ndarray) -> tuple[float, np.ndarray]:
                fields, decoded = measure_image(model, rgb, args.real, quality=quality,
                                                channel_order=0 if args.keep_channel_order else None)
                return fields["bpp"], decoded

            label = str(checkpoint) if quality is None else f"{checkpoint} Q{quality:g}"
            lmbda = trained_lambda_at(model, quality)
            rows = colour_rows(code, photos, anchors["jpeg"], args.orders)
            webp = [np.log(r.bpp / anchors["webp"][(r.photo, r.order)].rate_at(r.psnr)) for r in rows]
            webp = [w for w in webp if np.isfinite(w)]
            summary = summarise(rows, lmbda) | {"rate_vs_webp_pct": float(100 * np.expm1(np.mean(webp))) if webp else float("nan"),
                                                "spread_db": spread_db(rows)}
            report["models"].append(dict(checkpoint=str(checkpoint), quality=quality, label=label, curve=
                                         str(checkpoint) if quality is not None else "fixed-rate checkpoints",
                                         **{"lambda": lmbda}, summary=summary, rows=[vars(r) for r in rows]))
            print(f"{label[-58:]:<58} {summary['bpp']:>7.4f} {summary['psnr']:>7.3f} "
                  f"{summary['delta_psnr_vs_anchor']:>+10.2f} {summary['rate_vs_anchor_pct']:>+11.1f}% "
                  f"{summary['rate_vs_webp_pct']:>+7.1f}% {summary['worst_spread_db']:>6.2f} {summary['rows_in_anchor_range']:>3} "
                  f"{summary['rd_loss']:>7.4f}")
            print("    spread per photo (dB): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["spread_db"].items()))
        del model

    curves: dict[str, tuple[list[float], list[float]]] = {}
    for m in sorted(report["models"], key=lambda m: m["summary"]["bpp"]):
        rate, quality = curves.setdefault(m["curve"], ([], []))
        rate.append(m["summary"]["bpp"])
        quality.append(m["summary"]["psnr"])
    report["curves"] = {}
    for name, curve in curves.items():
        if len(curve[0]) < 4:
            continue
        print(f"curve: {name} ({len(curve[0])} points)")
        entry = report["curves"][name] = {"bpp": curve[0], "psnr": curve[1]}
        for codec in ANCHORS:
            sweeps = list(anchors[codec].values())
            anchor = (np.mean([s.bpp for s in sweeps], axis=0), np.mean([s.psnr for s in sweeps], axis=0))
            entry[f"bd_rate_vs_{codec}_pct"] = print_bd(f"vs {codec}", anchor, curve)
        if name != "fixed-rate checkpoints" and "fixed-rate checkpoints" in curves:
            entry["bd_rate_vs_fixed_pct"] = print_bd("vs the fixed-rate checkpoints", curves["fixed-rate checkpoints"], curve)
    if "fixed-rate checkpoints" in report["curves"]:  # the keys earlier reports had
        for codec in ANCHORS:
            report[f"bd_rate_vs_{codec}_pct"] = report["curves"]["fixed-rate checkpoints"][f"bd_rate_vs_{codec}_pct"]
    compare_to_fixed(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
