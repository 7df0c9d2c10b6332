"""bf16 autocast of the main transforms (``codec.py --bf16``) against float32: speed and picture quality.

    python benchmarks/bf16_codec.py                                   # shipped model, held-out photos, Q 1 3 5
    python benchmarks/bf16_codec.py --checkpoint icwem-small-q3 --max-side 768 --runs 5
    python benchmarks/bf16_codec.py --quality 5 --photos skimage-chelsea

Every photo is coded as ``codec.py`` codes it (``encode_image`` / ``decode_bitstream``, real bytes) in its
own channel order (the order search is the same in both precisions and would only dilute the ratio), with
the encoder in float32 or bf16 and the decoder in float32 or bf16: four pairs. The entropy parameters stay
float64 in both, so every pair decodes its file; what bf16 changes is the latent the encoder writes (its
rate) and the picture the decoder draws from it.

Times are medians over ``--runs`` rounds after one warm-up round; within a round the two precisions
alternate, so a busy machine slows both alike: read the ratios. FLOPs (``torch.utils.flop_counter``) of
one encode and one decode of the first photo, and the machine's measured fp32 and bf16 matmul rates, are
printed beside them. ``--bf16 on`` only pays where the CPU computes bf16 natively (AVX512-BF16 or AMX);
elsewhere it is emulated and several times slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_checkpoint  # noqa: E402
from models.zoo import expand_shipped  # noqa: E402
from tools.heldout_rd import add_photo_arguments, load_photos  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.coding.codec import decode_bitstream, encode_image  # noqa: E402
from utils.image_io import to_tensor  # noqa: E402
from utils.metrics import psnr  # noqa: E402

import machine  # noqa: E402  (benchmarks/machine.py)
from speed import count_flops  # noqa: E402  (benchmarks/speed.py)

PRECISIONS = ("fp32", "bf16")


def _set_precision(model: torch.nn.Module, precision: str) -> None:
    model.bf16_transforms = precision == "bf16"


def code_pairs(model: torch.nn.Module, rgb: np.ndarray, quality: Optional[float]) -> Dict[tuple, dict]:
    """The four (encoder, decoder) precision pairs on one photo: bpp, PSNR and the decoded picture."""
    results = {}
    for enc in PRECISIONS:
        _set_precision(model, enc)
        bs, stats = encode_image(model, rgb, quality=quality, channel_order=0)
        for dec in PRECISIONS:
            _set_precision(model, dec)
            picture, _ = decode_bitstream(model, bs)
            results[enc, dec] = {"bpp": stats["bpp"], "psnr": psnr(to_tensor(rgb), to_tensor(picture)),
                                 "picture": picture}
    return results


def time_precisions(model: torch.nn.Module, rgb: np.ndarray, quality: Optional[float], runs: int) -> Dict[str, dict]:
    """Median encode and decode seconds per precision, the two alternating within each round."""
    streams = {}
    for precision in PRECISIONS:  # warm-up round, and the bitstream each decoder times
        _set_precision(model, precision)
        streams[precision], _ = encode_image(model, rgb, quality=quality, channel_order=0)
        decode_bitstream(model, streams[precision])
    times: Dict[str, Dict[str, List[float]]] = {p: {"encode": [], "decode": []} for p in PRECISIONS}
    for _ in range(runs):
        for precision in PRECISIONS:
            _set_precision(model, precision)
            start = time.perf_counter()
            encode_image(model, rgb, quality=quality, channel_order=0)
            middle = time.perf_counter()
            decode_bitstream(model, streams[precision])
            times[precision]["encode"].append(middle - start)
            times[precision]["decode"].append(time.perf_counter() - middle)
    return {p: {op: statistics.median(v) for op, v in ops.items()} for p, ops in times.items()}


def flops(model: torch.nn.Module, rgb: np.ndarray, quality: Optional[float]) -> Dict[str, float]:
    """GFLOP of one float32 compress and one decompress of ``rgb`` cropped to a multiple of 64 (multiply-add
    = 2; under no_grad: the FLOP counter cannot follow inference-mode tensors)."""
    _set_precision(model, "fp32")
    h, w = rgb.shape[0] // 64 * 64, rgb.shape[1] // 64 * 64
    x = to_tensor(np.ascontiguousarray(rgb[:h, :w]))
    rate = {} if quality is None else {"quality": quality}
    with torch.no_grad():
        out = model.compress(x, **rate)
        encode = count_flops(lambda: model.compress(x, **rate))
        decode = count_flops(lambda: model.decompress(out["strings"], out["shape"], **rate))
    return {"encode": encode / 1e9, "decode": decode / 1e9, "width": w, "height": h}


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    m = machine.describe(args.threads)
    print(f"**Machine**: {m['cpu']} ({m['simd']}; native bf16: {'yes' if m['native_bf16'] else 'no'}), "
          f"{args.threads} thread(s), torch {torch.__version__}; measured matmul fp32 {m['fp32_gflops']:.1f} GFLOP/s, "
          f"bf16 {m['bf16_gflops']:.1f} GFLOP/s ({m['bf16_n']}²)")
    photos = load_photos(args.data, args.max_side)
    if args.photos:
        photos = {name: photos[name] for name in args.photos}
    (checkpoint,) = expand_shipped([args.checkpoint])
    model = load_checkpoint(checkpoint)
    qualities: Sequence[Optional[float]] = args.quality if model.rate_points else [None]
    first = next(iter(photos.values()))
    work = flops(model, first, qualities[-1])
    print(f"**Model**: {checkpoint}; FLOPs of one compress / decompress of {work['width']}×{work['height']}: {work['encode']:.1f} / "
          f"{work['decode']:.1f} GFLOP; times: median of {args.runs} rounds after one warm-up\n")

    print("| photo | Q | bpp fp32 / bf16 enc | PSNR fp32→fp32 | Δ bf16 enc | Δ bf16 dec | Δ both | "
          "pixels changed by bf16 dec | encode s fp32 / bf16 | decode s fp32 / bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    speedups: Dict[str, List[float]] = {"encode": [], "decode": []}
    deltas: Dict[str, List[float]] = {"enc": [], "dec": [], "both": []}
    for name, rgb in photos.items():
        for quality in qualities:
            pairs = code_pairs(model, rgb, quality)
            t = time_precisions(model, rgb, quality, args.runs)
            base = pairs["fp32", "fp32"]["psnr"]
            d = {"enc": pairs["bf16", "fp32"]["psnr"] - base, "dec": pairs["fp32", "bf16"]["psnr"] - base,
                 "both": pairs["bf16", "bf16"]["psnr"] - base}
            changed = float(np.mean(pairs["fp32", "bf16"]["picture"] != pairs["fp32", "fp32"]["picture"])) * 100
            for key, value in d.items():
                deltas[key].append(value)
            for op in speedups:
                speedups[op].append(t["fp32"][op] / t["bf16"][op])
            q = "–" if quality is None else f"{quality:g}"
            print(f"| {name} | {q} | {pairs['fp32', 'fp32']['bpp']:.4f} / {pairs['bf16', 'fp32']['bpp']:.4f} | "
                  f"{base:.2f} | {d['enc']:+.3f} | {d['dec']:+.3f} | {d['both']:+.3f} | {changed:.1f} % | "
                  f"{t['fp32']['encode']:.2f} / {t['bf16']['encode']:.2f} | "
                  f"{t['fp32']['decode']:.2f} / {t['bf16']['decode']:.2f} |", flush=True)
    print(f"\nbf16 speed-up (median over rows): encode {statistics.median(speedups['encode']):.2f}×, "
          f"decode {statistics.median(speedups['decode']):.2f}×; PSNR change (mean over rows): bf16 encoder "
          f"{np.mean(deltas['enc']):+.3f} dB, bf16 decoder {np.mean(deltas['dec']):+.3f} dB, both "
          f"{np.mean(deltas['both']):+.3f} dB (worst {min(deltas['both']):+.3f})")
    return 0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="icwem-small-vr", help="checkpoint file or shipped name")
    add_photo_arguments(p)
    p.add_argument("--photos", nargs="+", help="only these photos (file stems) of --data")
    p.add_argument("--quality", type=float, nargs="+", default=[1.0, 3.0, 5.0],
                   help="qualities of a variable-rate checkpoint")
    p.add_argument("--runs", type=int, default=3, help="timed rounds (median), after one warm-up")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.max_side is None:
        args.max_side = 512
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
