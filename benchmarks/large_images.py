"""Peak memory and seconds per megapixel of encoding and decoding large images, streamed in row bands
(``ICWEM.tile``) and whole, beside the machine's measured fp32 matmul rate.

    python benchmarks/large_images.py                                  # 0.4, 2.8, 12.6 and 24 MP
    python benchmarks/large_images.py --sizes 768x512 2048x1365 --modes tiled whole --log runs.jsonl
    python benchmarks/large_images.py --config tiny --sizes 512x384 --tile 128
    python benchmarks/large_images.py --compare --sizes 768x512 2048x1365   # tiled vs whole: bytes, x̂, PSNR

Each operation runs in a fresh Python process, so its peak resident set size (VmHWM) is its
own: model, image and coding included. Encoding is ``utils.codec.encode_image`` (pixels -> .icwem
bytes, as ``codec.py encode``); decoding is ``decode_bitstream`` on those bytes, in another process.
Timing covers that call only, not building the model or the image: wall-clock seconds and the
process's CPU seconds (on a shared machine the CPU time is the steadier measure of work; with one
thread it is the wall time the operation would take alone). The image is scikit-image's
``astronaut`` photo resized (bicubic) to the size asked for. The model has random weights (seed 0):
time and memory do not depend on the values. Whole-image runs whose estimated peak is above
``--max-whole-gib`` are skipped and shown as such. One thread unless ``--threads``.

"tiled" is the model's default (bands of about ``BAND_PIXELS`` pixels; an image that fits in one
band runs whole) or ``--tile N``; "whole" is ``--tile 0``.

``--synthetic-latent`` times the decoder alone: the bitstream it decodes is coded from a latent made
cheaply from the picture (pooled to 1/16, random channel mix) instead of the analysis transform, so
its encode column is not a measurement of encoding.

``--overhead`` prints, without running the model, how much work the bands repeat: per stage, the rows
it computes over the rows of its output map, weighted by the stage's FLOPs per row (counted with
``torch.utils.flop_counter`` on a 256×256 image).

``--entropy`` measures the entropy-parameter path alone (ẑ's hyper-synthesis, then every slice's
SWAtten and mean / scale / LRP networks, portable float64, rounding in place of the coder) on a random
latent of 1/16 of each size, streamed over latent rows (``--latent-tile`` rows, or the model's automatic
bands) and whole: its peak resident memory, the process's memory before it (model and float64 copy),
and seconds. Heights growing at a fixed width show whether memory grows with the area or the width.

``--compare`` instead codes each image both ways in one process: are the y and z strings identical,
how far apart are the decoded pictures before 8-bit rounding, and their PSNR against the input
(bands of ``--tile`` rows, 128 if not given, so that small images are streamed too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = ("768x512", "2048x1365", "4096x3072", "6000x4000")
# Whole-image peak memory measured on this machine for the published model (benchmarks/RESULTS.md):
# about 5.5 GiB at 2.9 MP and 18.7 GiB at 12.6 MP, i.e. ~1.4 GiB per megapixel above ~1.4 GiB.
_WHOLE_GIB_PER_MP, _WHOLE_GIB_BASE = 1.4, 1.4


def _size(text: str) -> tuple:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT") from None
    return w, h


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=_size, default=[_size(s) for s in DEFAULT_SIZES], help="WIDTHxHEIGHT")
    p.add_argument("--modes", nargs="+", choices=("tiled", "whole"), default=["tiled", "whole"])
    p.add_argument("--tile", type=int, default=None, help="rows per band when tiled (default: the model's automatic bands)")
    p.add_argument("--config", default="icwem", help="model preset or JSON (default: the published one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--max-whole-gib", type=float, default=10.0, help="skip whole-image runs estimated above this")
    p.add_argument("--log", type=Path, help="append each measurement as a JSON line to this file")
    p.add_argument("--compare", action="store_true", help="tiled vs whole: bitstreams and decoded pictures")
    p.add_argument("--overhead", action="store_true", help="FLOPs the bands repeat (no model run)")
    p.add_argument("--entropy", action="store_true", help="the entropy-parameter path alone: peak memory, seconds")
    p.add_argument("--latent-tile", type=int, default=None, help="latent rows per band of the entropy path (--entropy)")
    p.add_argument("--synthetic-latent", action="store_true",
                   help="encode a latent made from the pooled picture instead of running the analysis "
                        "(only the decode is then a real measurement)")
    p.add_argument("--worker", nargs=5, metavar=("OP", "W", "H", "TILE", "FILE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ one operation
def _photo(width: int, height: int):
    import numpy as np
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC))


def _compare(model, rgb, tile: int) -> dict:
    """Code ``rgb`` whole and in bands of ``tile`` rows; decode the whole-coded strings both ways."""
    import torch

    from utils.image_io import to_tensor, to_uint8
    from utils.metrics import psnr
    from utils.padding import crop, pad_image

    x, padding = pad_image(to_tensor(rgb))
    strings, pictures, latents, unclamped = {}, {}, {}, {}
    with torch.inference_mode():
        for mode, rows in (("whole", 0), ("tiled", tile)):
            model.tile = rows
            out = model.compress(x)
            strings[mode] = out["strings"]
            decoded = model.decompress(strings["whole"], out["shape"])
            pictures[mode] = crop(decoded["x_hat"], padding)
            latents[mode] = model.analysis(x)
            unclamped[mode] = model.synthesis(decoded["y_hat"])  # the decoder clamps; this shows the float error
    original = to_tensor(rgb)
    quality = {mode: psnr(original, to_tensor(to_uint8(p))) for mode, p in pictures.items()}
    return {
        "identical_strings": strings["whole"] == strings["tiled"],
        "max_abs_x_hat": float((pictures["whole"] - pictures["tiled"]).abs().max()),
        "max_abs_y": float((latents["whole"] - latents["tiled"]).abs().max()),
        "max_abs_x_hat_unclamped": float((unclamped["whole"] - unclamped["tiled"]).abs().max()),
        "psnr_whole": quality["whole"],
        "psnr_tiled": quality["tiled"],
        "pixels_differing_8bit": int((to_uint8(pictures["whole"]) != to_uint8(pictures["tiled"])).sum()),
    }


def _stage_flops(stages, x) -> List[float]:
    """FLOPs of each stage on the whole map (one pass of ``x`` through the chain)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    flops = []
    with torch.no_grad():
        for stage in stages:
            with FlopCounterMode(display=False) as counter:
                x = stage.fn(x)
            flops.append(float(counter.get_total_flops()))
    return flops


def overhead(config: str, size: tuple, tile: Optional[int]) -> dict:
    """Repeated work of streaming a ``size`` image: rows each stage computes vs its output rows,
    weighted by FLOPs per output row; the stages run on empty tensors of the right height only."""
    import math

    import torch

    from models import ICWEM, get_config
    from models.tiling import Stage, band_rows, stream_rows

    torch.manual_seed(0)
    model = ICWEM(**get_config(config)).eval()
    height, width = (-(-side // 64) * 64 for side in (size[1], size[0]))
    rows = band_rows(tile, width)
    result = {"rows": rows}
    for name, stages, probe in (
        ("analysis", model.analysis_stages(), torch.rand(1, 3, 256, 256)),
        ("synthesis", model.synthesis_stages(clamp=True), torch.rand(1, model.config["M"], 16, 16)),
    ):
        flops = _stage_flops(stages, probe)
        out_rows, scale = [], 1.0
        for stage in stages:
            scale *= float(stage.scale)
            out_rows.append(256 * scale if name == "analysis" else 16 * scale)
        computed = [0] * len(stages)

        def counting(i: int, stage: Stage) -> Stage:
            def fn(band):
                out = math.ceil(band.shape[-2] * stage.scale)
                computed[i] += out
                return band.new_zeros(1, 1, out, 1)
            return Stage(fn, stage.rule, stage.align, stage.scale)

        chain_height = height if name == "analysis" else height // 16
        unit = 1 if name == "analysis" else 16
        stream_rows([counting(i, s) for i, s in enumerate(stages)], torch.zeros(1, 1, chain_height, 1), rows, unit)
        whole_rows = [r * chain_height / (256 if name == "analysis" else 16) for r in out_rows]
        per_row = [f / r for f, r in zip(flops, out_rows)]
        result[name] = sum(p * c for p, c in zip(per_row, computed)) / sum(p * w for p, w in zip(per_row, whole_rows)) - 1
    return result


def entropy_path(model, width: int, height: int, latent_tile: Optional[int]) -> dict:
    """Peak memory and seconds of the portable entropy-parameter path on a random latent of a
    ``width``×``height`` image (``latent_tile``: 0 whole, None automatic bands, else rows per band)."""
    import torch

    import machine  # benchmarks/machine.py, beside this script
    from models.entropy import parameter_nets, scale_indexes

    model.latent_tile = latent_tile
    y_h, y_w = -(-height // 64) * 4, -(-width // 64) * 4
    y = 4 * torch.randn(1, model.config["M"], y_h, y_w)
    z_hat = torch.round(3 * torch.randn(1, model.config["Z"], y_h // 4, y_w // 4))
    parameter_nets(model)  # built before the baseline: it belongs to the model, not to the path
    before = machine.rss_gib()
    slices = y.chunk(model.num_slices, dim=1)

    def round_slice(i: int, mu, sigma):
        scale_indexes(sigma)
        return torch.round(slices[i].to(mu.dtype) - mu) + mu

    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        nets, z_in = model._parameter_path(z_hat)
        rows = model._latent_rows(y_h, y_w, z_in.device)
        model._code_slices(*model._hyper(nets, z_in), (y_h, y_w), round_slice, nets, keep_parameters=False, rows=rows)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = machine.peak_rss_gib()
    return {"latent": f"{y_w}x{y_h}", "rows": rows, "seconds": seconds, "cpu_seconds": cpu, "before_gib": before,
            "peak_gib": peak}


def _log_bands(path: str) -> None:
    """Append a line per band of the first streamed stage to ``path`` (wall s, CPU s, its input
    rows), so that a run stopped before the end still shows how far it got and at what rate."""
    import models.icwem as icwem

    stream_rows = icwem.stream_rows
    start, cpu = time.perf_counter(), time.process_time()

    def logged(stages, x, rows, unit=1):
        first = stages[0]
        fn = first.fn

        def fn_logged(band):
            out = fn(band)
            with open(path, "a") as f:
                f.write(f"{time.perf_counter() - start:.1f} {time.process_time() - cpu:.1f} {band.shape[-2]}\n")
            return out

        first.fn = fn_logged
        return stream_rows(stages, x, rows, unit)

    icwem.stream_rows = logged


def _worker(args: argparse.Namespace) -> None:
    """Runs in its own process: one encode, decode or comparison, then one JSON line on stdout."""
    import torch

    import machine  # benchmarks/machine.py, beside this script
    from models import ICWEM, get_config
    from utils.coding.bitstream import pack, unpack
    from utils.coding.codec import decode_bitstream, encode_image

    op, width, height, tile, path = args.worker
    width, height, tile = int(width), int(height), None if tile == "auto" else int(tile)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ICWEM(**get_config(args.config)).eval()
    model.update(force=True)
    model.tile = tile
    if op == "compare":
        print(json.dumps(_compare(model, _photo(width, height), tile)))
        return
    if op == "entropy":
        print(json.dumps(entropy_path(model, width, height, tile)))
        return
    if op == "encode-latent":
        # The coder on a latent made cheaply from the picture (pooled to 1/16, random channel mix):
        # a bitstream of the right size for timing the decoder, without the analysis transform.
        mix = 8 * torch.randn(model.config["M"], 3)
        model.analysis = lambda x: torch.einsum("mc,bchw->bmhw", mix, torch.nn.functional.avg_pool2d(x, 16) - 0.5)
        op = "encode"
    _log_bands(f"{path}.{op}.bands")
    if op == "encode":
        rgb = _photo(width, height)
        start, cpu = time.perf_counter(), time.process_time()
        bs, _ = encode_image(model, rgb)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        Path(path).write_bytes(pack(bs))
    else:
        bs = unpack(Path(path).read_bytes())
        start, cpu = time.perf_counter(), time.process_time()
        decode_bitstream(model, bs)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_gib = machine.peak_rss_gib()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_gib": peak_gib}))


def _run(args: argparse.Namespace, op: str, size: tuple, tile: Optional[int], path: str) -> dict:
    command = [sys.executable, __file__, "--config", args.config, "--threads", str(args.threads),
               "--worker", op, str(size[0]), str(size[1]), "auto" if tile is None else str(tile), path]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ the table
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    from models.tiling import band_rows

    tile = args.tile
    if args.overhead:
        for size in args.sizes:
            result = overhead(args.config, size, tile)
            print(f"{size[0]}x{size[1]}: bands of {result['rows']} rows repeat {100 * result['analysis']:.1f} % of the "
                  f"analysis FLOPs and {100 * result['synthesis']:.1f} % of the synthesis FLOPs", flush=True)
        return 0
    if args.entropy:
        print("entropy-parameter path alone (portable, float64): peak resident memory, memory before it, seconds")
        print(f"{'size':>10} {'latent':>9} {'rows':>5} {'peak GiB':>9} {'before GiB':>10} {'path GiB':>9} {'s':>7}")
        for size in args.sizes:
            for mode in args.modes:
                result = _run(args, "entropy", size, args.latent_tile if mode == "tiled" else 0, "-")
                if "error" in result:
                    print(f"{size[0]}x{size[1]} {mode}: error {result['error']}", flush=True)
                    continue
                print(f"{size[0]}x{size[1]:<5} {result['latent']:>9} {result['rows']:>5} {result['peak_gib']:>9.2f} "
                      f"{result['before_gib']:>10.2f} {result['peak_gib'] - result['before_gib']:>9.2f} "
                      f"{result['seconds']:>7.1f}", flush=True)
                if args.log is not None:
                    with args.log.open("a") as f:
                        f.write(json.dumps({"size": f"{size[0]}x{size[1]}", "mode": mode, **result}) + "\n")
        return 0
    if args.compare:
        for size in args.sizes:
            result = _run(args, "compare", size, tile or 128, "-")
            print(json.dumps({"size": f"{size[0]}x{size[1]}", "tile": tile, "config": args.config, **result}), flush=True)
        return 0
    import torch

    import machine  # benchmarks/machine.py, beside this script

    torch.set_num_threads(args.threads)
    print(f"machine: {machine.cpu_info()['model']}, {os.cpu_count()} cores; {args.threads} torch thread(s); "
          f"fp32 matmul {machine.matmul_rate(torch.float32, runs=10):.1f} GFLOP/s; model {args.config}")
    print("s/MP: wall-clock (CPU) seconds per megapixel; rows: image rows per band (0: whole image)")
    print(f"{'size':>10} {'MP':>6} {'mode':>6} {'rows':>5} | {'encode s/MP':>15} {'peak GiB':>8} | "
          f"{'decode s/MP':>15} {'peak GiB':>8}")
    rows: List[dict] = []
    for size in args.sizes:
        mp = size[0] * size[1] / 1e6
        for mode in args.modes:
            row_tile = tile if mode == "tiled" else 0
            padded_height, padded_width = (-(-side // 64) * 64 for side in (size[1], size[0]))
            band = band_rows(row_tile, padded_width)
            row = {"size": f"{size[0]}x{size[1]}", "mp": mp, "mode": mode, "tile": row_tile,
                   "rows": band if band < padded_height else 0, "config": args.config, "threads": args.threads,
                   "synthetic_latent": args.synthetic_latent}
            if mode == "whole" and _WHOLE_GIB_BASE + _WHOLE_GIB_PER_MP * mp > args.max_whole_gib:
                row["skipped"] = f"whole image estimated above {args.max_whole_gib} GiB"
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    path = str(Path(tmp) / "image.icwem")
                    for op in ("encode", "decode"):
                        result = _run(args, "encode-latent" if op == "encode" and args.synthetic_latent else op,
                                      size, row_tile, path)
                        row[op] = result
                        if "error" in result:
                            break
            rows.append(row)
            print(_format(row), flush=True)
            if args.log is not None:
                with args.log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


def _format(row: dict) -> str:
    cells = []
    for op in ("encode", "decode"):
        r = row.get(op)
        if r is None:
            cells.append(f"{row.get('skipped', 'not run'):>20}" if op == "encode" else "")
        elif "error" in r:
            cells.append(f"error: {r['error']}")
        else:
            timing = f"{r['seconds'] / row['mp']:.1f} ({r['cpu_seconds'] / row['mp']:.1f})"
            cells.append(f"{timing:>15} {r['peak_gib']:>8.2f}")
    return f"{row['size']:>10} {row['mp']:>6.2f} {row['mode']:>6} {row['rows']:>5} | " + " | ".join(c for c in cells if c)


if __name__ == "__main__":
    sys.exit(main())
