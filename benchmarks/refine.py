"""Encode-time refinement (models/refine.py): BD-rate against plain encoding, and its cost, on held-out crops.

    python benchmarks/refine.py                                    # shipped models, N = 25 100 500
    python benchmarks/refine.py --iterations 25 100 --photos chelsea coffee --size 256x256
    python benchmarks/refine.py --checkpoint tiny --iterations 25 100 500 --photos chelsea   # cost only
    python benchmarks/refine.py --memory --sizes 256x256 512x512 1024x512                   # peak memory
    python benchmarks/refine.py --table                            # the table of what --log holds
    python benchmarks/refine.py --checkpoint icwem-small-vr --quality 1 2 3 4 5 --iterations 50

For every checkpoint and every photo's centre crop: the plain file (``encode_image``) and the refined file
of each N (``encode_image(..., RefineOptions(N))``), both real ``.icwem`` bytes decoded by the plain
decoder; bpp counts every byte of the file, PSNR is measured on the decoded 8-bit picture, as
``test.py --real`` does. A rate point per checkpoint is the mean bpp and mean PSNR over the crops, and
BD-rate (``utils/evaluation/bd.py``, cubic fit) compares the refined curve of each N with the plain
curve over the checkpoints' qualities (negative: refined files need fewer bits at equal PSNR); a
per-photo BD-rate is printed beside it. Cost is the refinement's seconds per megapixel of the crop,
wall-clock and the process's CPU time (steadier on a shared machine: with one thread it is what the run
would take alone).

Held-out photos: scikit-image's ``chelsea`` and ``coffee`` (never trained on) and, where
``runs/data/heldout/`` exists, the two wallpaper photos held out of the training set. Every measurement
is appended to ``--log`` (JSON lines) as it is made, and a run skips what the log already holds: an
interrupted run resumes, runs for other ``--photos`` may share a log, and ``--table`` reprints the
table without coding anything.

A variable-rate checkpoint gives one rate point per ``--quality`` (named ``CHECKPOINT@Q``), refined
for λ(Q), the λ it was trained for at that quality; a fixed-rate checkpoint is one rate point.

``--checkpoint tiny`` is the tiny preset with the test fixture's synthetic weights (tests/fixtures):
its files and timings are real, but an untrained model has no rate-distortion curve to compare, so
it is reported for cost (and objective) only, at ``--lambda`` (default 0.004).

``--memory`` refines each size (random weights of ``--config``, 2 iterations) in a fresh process and
prints its peak resident memory (``ru_maxrss``) beside the process's memory before refining: the
growth per megapixel is what ``models.refine.GIB_PER_MEGAPIXEL`` holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELDOUT_DIR = ROOT / "runs" / "data" / "heldout"
HELDOUT_FILES = ("plasma-Path.png", "plasma-EveningGlow.png")
TINY_WEIGHTS = ROOT / "tests" / "fixtures" / "icwem-tiny" / "weights.pt"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", default=["shipped"],
                   help="checkpoints or shipped names ('shipped' = all; 'tiny' = the tiny preset, cost only)")
    p.add_argument("--iterations", type=int, nargs="+", default=[25, 100, 500])
    p.add_argument("--photos", nargs="+", default=None,
                   help="chelsea, coffee, plasma-Path, plasma-EveningGlow (default: all that are here)")
    p.add_argument("--quality", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0],
                   help="the qualities of a variable-rate checkpoint, one rate point each")
    p.add_argument("--size", default="256x256", help="centre crop WxH")
    p.add_argument("--lambda", dest="lmbda", type=float, default=0.004, help="λ for checkpoints that record none")
    p.add_argument("--surrogate", default=None, help="rounding surrogate, ste or sga (default: models.refine.SURROGATE)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", type=Path, default=ROOT / "runs" / "refine_bench.jsonl")
    p.add_argument("--table", action="store_true", help="print the table of the log only")
    p.add_argument("--memory", action="store_true", help="peak memory of refinement per size (fresh processes)")
    p.add_argument("--sizes", nargs="+", default=["256x256", "512x512", "1024x512"])
    p.add_argument("--config", default="small", help="--memory: the preset to build (random weights)")
    return p.parse_args(argv)


def _size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


# ---------------------------------------------------------------------------------------------- photos
def held_out_photos(names: Optional[Sequence[str]]) -> Dict[str, "np.ndarray"]:
    """The held-out photos by name, uint8 H×W×3."""
    import numpy as np
    from skimage import data

    from utils.image_io import read_image

    photos = {"chelsea": data.chelsea(), "coffee": data.coffee()}
    for file in HELDOUT_FILES:
        if (HELDOUT_DIR / file).is_file():
            photos[Path(file).stem] = read_image(HELDOUT_DIR / file)[0]
    if names:
        missing = [n for n in names if n not in photos]
        if missing:
            raise SystemExit(f"unknown or missing photos: {', '.join(missing)} (have {', '.join(photos)})")
        photos = {n: photos[n] for n in names}
    return {n: np.ascontiguousarray(img[..., :3]) for n, img in photos.items()}


def centre_crop(img, width: int, height: int):
    import numpy as np

    h, w = img.shape[:2]
    if h < height or w < width:
        raise SystemExit(f"a {w}x{h} photo is smaller than the crop {width}x{height}")
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(img[top:top + height, left:left + width])


# ---------------------------------------------------------------------------------------------- coding
def load_model(name: str, lmbda: float):
    """A loaded model with its λ (``lmbda`` where it records none); ``tiny``: the tiny preset with the
    fixture's synthetic weights."""
    import torch

    from models import ICWEM, get_config, load_checkpoint

    if name != "tiny":
        model = load_checkpoint(name)
    else:
        model = ICWEM(**get_config("tiny"))
        model.load_state_dict(torch.load(TINY_WEIGHTS, weights_only=True))
        model.eval()
        model.update(force=True)
    if model.lmbda is None:
        model.lmbda = lmbda
    return model


def measure(model, rgb, iterations: int, surrogate: str, quality: Optional[float] = None) -> dict:
    """One file (plain when ``iterations`` is 0) coded, decoded by the plain decoder and measured."""
    import torch

    from models.refine import RefineOptions
    from utils.coding.bitstream import pack, unpack
    from utils.coding.codec import decode_bitstream, encode_image
    from utils.image_io import to_tensor
    from utils.metrics import bpp_from_bytes, psnr

    wall, cpu = time.perf_counter(), time.process_time()
    bs, stats = encode_image(model, rgb, RefineOptions(iterations, surrogate=surrogate) if iterations else None,
                             quality)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    data = pack(bs)
    decoded, _ = decode_bitstream(model, unpack(data))
    height, width = rgb.shape[:2]
    row = {"bytes": len(data), "bpp": bpp_from_bytes(len(data), height, width),
           "psnr": psnr(to_tensor(rgb), to_tensor(decoded)), "encode_s": wall, "encode_cpu_s": cpu,
           "megapixels": height * width / 1e6, "threads": torch.get_num_threads()}
    if "refine" in stats:
        r = stats["refine"]
        row.update(objective=r.objective, initial=r.initial, best_iteration=r.best_iteration, refine_s=r.seconds,
                   ran=r.iterations)
    return row


def _surrogate(args: argparse.Namespace) -> str:
    from models.refine import SURROGATE

    return args.surrogate or SURROGATE


def _key(row: dict) -> tuple:
    return row["checkpoint"], row["photo"], row["size"], row["iterations"], row.get("surrogate", "sga" if row["iterations"] else "")


def read_log(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: argparse.Namespace) -> None:
    import torch

    from models.refine import trained_lambda_at
    from models.zoo import expand_shipped

    torch.set_num_threads(args.threads)
    surrogate = _surrogate(args)
    width, height = _size(args.size)
    photos = held_out_photos(args.photos)
    done = {_key(r) for r in read_log(args.log)}
    args.log.parent.mkdir(parents=True, exist_ok=True)
    models = {checkpoint: load_model(checkpoint, args.lmbda) for checkpoint in expand_shipped(args.checkpoint)}
    points = [(checkpoint, quality) for checkpoint, model in models.items()
              for quality in (args.quality if model.rate_points else [None])]
    for iterations in [0, *args.iterations]:  # every rate point at one N before the next: a partial run has curves
        for checkpoint, quality in points:
            name = checkpoint if quality is None else f"{checkpoint}@{quality:g}"
            for photo, img in photos.items():
                key = (name, photo, args.size, iterations, surrogate if iterations else "")
                if key in done or key in {_key(r) for r in read_log(args.log)}:  # or done by another run meanwhile
                    continue
                model, rgb = models[checkpoint], centre_crop(img, width, height)
                lmbda = model.lmbda if quality is None else trained_lambda_at(model, quality)
                row = {"checkpoint": name, "photo": photo, "size": args.size, "iterations": iterations,
                       "surrogate": key[-1], "lambda": lmbda, **measure(model, rgb, iterations, surrogate, quality)}
                with open(args.log, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{name} {photo} N={iterations}: {row['bpp']:.4f} bpp {row['psnr']:.3f} dB "
                      f"{row['encode_s']:.1f} s", flush=True)


# ---------------------------------------------------------------------------------------------- table
def table(rows: List[dict], size: str, surrogate: str) -> List[str]:
    """BD-rate of each N against plain, per photo set and per photo, and seconds per megapixel, per curve."""
    rows = [r for r in rows if r["size"] == size and _key(r)[-1] in ("", surrogate)]
    lines = []
    for model, checkpoints in curves(rows).items():
        lines += curve_table(rows, model, checkpoints, size, surrogate)
    return lines + tiny_table(rows)


def curves(rows: List[dict]) -> Dict[str, List[str]]:
    """The rate points of each curve: the fixed-rate checkpoints together, each variable-rate checkpoint's
    qualities (``CHECKPOINT@Q``) by themselves."""
    found: Dict[str, List[str]] = {}
    for name in sorted({r["checkpoint"] for r in rows if r["checkpoint"] != "tiny"}):
        found.setdefault(name.rpartition("@")[0] or "fixed-rate", []).append(name)
    return found


def curve_table(rows: List[dict], model: str, checkpoints: List[str], size: str, surrogate: str) -> List[str]:
    """One curve's BD-rate against plain per N, and its points plain and refined."""
    import numpy as np

    from utils.evaluation.bd import bd_psnr, bd_rate

    lines = []
    rows = [r for r in rows if r["checkpoint"] in checkpoints]
    counts = sorted({r["iterations"] for r in rows if r["iterations"]})
    photos = sorted({r["photo"] for r in rows})

    def find(checkpoint, photo, n):
        return next((r for r in rows if (r["checkpoint"], r["photo"], r["iterations"]) == (checkpoint, photo, n)), None)

    def curve(n, photo_set):
        if not photo_set:
            return None
        points = []
        for c in checkpoints:
            found = [find(c, p, n) for p in photo_set]
            if any(f is None for f in found):
                return None
            points.append((np.mean([f["bpp"] for f in found]), np.mean([f["psnr"] for f in found])))
        return points

    def bd(n, photo_set, metric=bd_rate, unit="%") -> str:
        plain, refined = curve(0, photo_set), curve(n, photo_set)
        if not plain or not refined or len(plain) < 4:
            return "—"
        return f"{metric([p[0] for p in plain], [p[1] for p in plain], [p[0] for p in refined], [p[1] for p in refined]):+.2f} {unit}"

    def cost(checkpoint_set, n) -> str:
        found = [r for r in rows if r["checkpoint"] in checkpoint_set and r["iterations"] == n]
        if not found:
            return "—", "—"
        mp = sum(r["megapixels"] for r in found)
        return f"{sum(r['refine_s'] for r in found) / mp:,.0f}", f"{sum(r['encode_cpu_s'] for r in found) / mp:,.0f}"

    if checkpoints:
        lines.append(f"{model}: {', '.join(checkpoints)}; centre crops {size} of {', '.join(photos)}; "
                     f"surrogate {surrogate}")
        head = "| N | crops | BD-rate (mean curve) | BD-PSNR | " + " | ".join(f"BD-rate {p}" for p in photos) + \
               " | s/MP refining (wall) | s/MP encoding (CPU) |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for n in counts:
            wall, cpu = cost(checkpoints, n)
            complete = [p for p in photos if curve(0, [p]) and curve(n, [p])]  # a partial run: its finished crops
            lines.append(f"| {n} | {len(complete)} | {bd(n, complete)} | {bd(n, complete, bd_psnr, 'dB')} | "
                         + " | ".join(bd(n, [p]) for p in photos)
                         + f" | {wall} | {cpu} |")
        lines.append("")
        lines.append("| model | N | crops | bpp plain → refined | PSNR plain → refined (dB) | objective change | best at |")
        lines.append("|---|---|---|---|---|---|---|")
        for c in checkpoints:
            for n in counts:
                found = [(find(c, p, 0), find(c, p, n)) for p in photos]
                found = [(a, b) for a, b in found if a is not None and b is not None]
                if not found:
                    continue
                bpp0, bpp1 = (np.mean([f[i]["bpp"] for f in found]) for i in (0, 1))
                psnr0, psnr1 = (np.mean([f[i]["psnr"] for f in found]) for i in (0, 1))
                change = np.mean([100 * (b["objective"] / b["initial"] - 1) for _, b in found])
                best = "/".join(str(b["best_iteration"]) for _, b in found)
                lines.append(f"| {c} | {n} | {len(found)} | {bpp0:.4f} → {bpp1:.4f} | {psnr0:.3f} → {psnr1:.3f} | {change:+.2f} % | {best} |")
        lines.append("")
    return lines


def tiny_table(rows: List[dict]) -> List[str]:
    """The tiny preset's cost and objective change per N (synthetic weights: no curve)."""
    import numpy as np

    lines = []
    tiny = [r for r in rows if r["checkpoint"] == "tiny" and r["iterations"]]
    counts = sorted({r["iterations"] for r in tiny})

    def cost(n) -> tuple:
        found = [r for r in tiny if r["iterations"] == n]
        mp = sum(r["megapixels"] for r in found)
        return f"{sum(r['refine_s'] for r in found) / mp:,.0f}", f"{sum(r['encode_cpu_s'] for r in found) / mp:,.0f}"

    if tiny:
        lines += ["", "tiny preset (fixture weights, synthetic: cost and objective only)",
                  "| N | s/MP refining (wall) | s/MP encoding (CPU) | objective change |", "|---|---|---|---|"]
        for n in counts:
            found = [r for r in tiny if r["iterations"] == n]
            if found:
                wall, cpu = cost(n)
                change = np.mean([100 * (r["objective"] / r["initial"] - 1) for r in found])
                lines.append(f"| {n} | {wall} | {cpu} | {change:+.2f} % |")
    return lines


# ---------------------------------------------------------------------------------------------- memory
_MEMORY_CHILD = """
import resource, sys, time, torch
torch.set_num_threads(1)
from models import ICWEM, get_config
from models.refine import refine_latents
width, height, config = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = ICWEM(**get_config(config)).eval()
model.update(force=True)
x = torch.rand(1, 3, height, width)
with torch.no_grad():
    y = model.analysis(x)
    z = model.h_a(y)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
refine_latents(model, x, y, z, 0.004, 2, pixel_limit=height * width)
seconds = time.perf_counter() - start
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, seconds)
"""


def memory(args: argparse.Namespace) -> None:
    print(f"preset {args.config}, random weights, 2 iterations, 1 thread; peak RSS in MiB (ru_maxrss)")
    print("| size | MP | before refining | peak | growth | growth per MP | s per iteration per MP |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        width, height = _size(size)
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(width), str(height), args.config],
                             cwd=ROOT, capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", **_env()})
        before, peak, seconds = out.stdout.split()
        mp = width * height / 1e6
        growth = (int(peak) - int(before)) / 1024
        print(f"| {size} | {mp:.3f} | {int(before) / 1024:.0f} | {int(peak) / 1024:.0f} | {growth:.0f} | "
              f"{growth / mp:,.0f} | {float(seconds) / 2 / mp:.1f} |", flush=True)


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.memory:
        memory(args)
        return 0
    if not args.table:
        run(args)
    from machine import cpu_info  # benchmarks/machine.py, beside this script

    info = cpu_info()
    print(f"\n{info['model']}, {args.threads} thread(s); log {args.log}")
    print("\n".join(table(read_log(args.log), args.size, _surrogate(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
