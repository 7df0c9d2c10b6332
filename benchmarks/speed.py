"""Speed and memory of ICWEM: forward, a training step, compress and decompress, with FLOPs and the
machine's own fp32 matmul rate measured in the same run.

    python benchmarks/speed.py                                  # published model, 768x512 and 2048x1365
    python benchmarks/speed.py --config tiny --sizes 256x256 --runs 3
    python benchmarks/speed.py --ablate                         # also time the model with each speed-up undone

Each timing is the median of --runs runs after one warm-up. Peak memory is the process's peak resident
set size (VmHWM, reset before each measurement) on the CPU and ``torch.cuda.max_memory_allocated`` on a
GPU. FLOPs come from ``torch.utils.flop_counter`` (convolutions, matrix products, attention) and count a
multiply-add as 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ICWEM, get_config  # noqa: E402
from losses import RateDistortionLoss  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.training import TrainConfig, train_step  # noqa: E402
from utils.training.setup import new_state  # noqa: E402

import ablations  # noqa: E402  (benchmarks/ablations.py)
import machine  # noqa: E402  (benchmarks/machine.py)


# ----------------------------------------------------------------------------- measurement helpers
# Under these names too: train_throughput.py imports them from speed.py, its own or a --baseline checkout's.
_reset_peak_memory, _peak_memory_gib = machine.reset_peak_memory, machine.peak_memory_gib


def time_runs(fn: Callable[[], object], runs: int, device: torch.device) -> Dict[str, float]:
    """One warm-up, then ``runs`` timed calls; returns median/min seconds and the peak memory."""
    fn()
    machine.synchronize(device)
    gc.collect()
    machine.reset_peak_memory(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        machine.synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_gib": machine.peak_memory_gib(device)}


# The context the inference operations run under; FLOP counting swaps in no_grad because
# FlopCounterMode's module tracking cannot follow inference-mode tensors.
_inference = torch.inference_mode


def count_flops(fn: Callable[[], object]) -> float:
    global _inference
    from torch.utils.flop_counter import FlopCounterMode

    _inference = torch.no_grad
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        _inference = torch.inference_mode
    return float(counter.get_total_flops())


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{machine.cpu_info()['model']}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


# ----------------------------------------------------------------------------- the operations
def build_model(config: str, device: torch.device) -> ICWEM:
    torch.manual_seed(0)
    model = ICWEM(**get_config(config)).to(device).eval()
    model.update(force=True)
    return model


def make_ops(model: ICWEM, size: Sequence[int], device: torch.device, amp: Optional[torch.dtype]) -> Dict[str, Callable]:
    """The measured operations at one image size (W×H), sharing one compressed result for decompress."""
    w, h = size
    x = torch.rand(1, 3, h, w, device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext
    with torch.inference_mode():
        encoded = model.compress(x)

    def forward():
        with _inference(), autocast():
            return model(x)

    def compress():
        with _inference():
            return model.compress(x)

    def decompress():
        with _inference():
            return model.decompress(encoded["strings"], encoded["shape"])

    return {"forward": forward, "compress": compress, "decompress": decompress}


def make_train_step(model: ICWEM, device: torch.device, amp: Optional[torch.dtype], batch: int = 2, patch: int = 256) -> Callable:
    """One optimisation step, the one train.py runs (``utils.training.train_step``: main Adam + clip, then aux Adam)."""
    criterion = RateDistortionLoss(lmbda=0.013)
    state = new_state(TrainConfig(dataset="", learning_rate=1e-4, aux_learning_rate=1e-3), model, model.config)
    x = torch.rand(batch, 3, patch, patch, device=device)
    autocast = torch.autocast(device.type, dtype=amp) if amp else None

    def step():
        model.train()
        train_step(model, x, criterion, state, clip_max_norm=1.0, autocast=autocast)
        model.eval()

    return step


# ----------------------------------------------------------------------------- report
def run(args: argparse.Namespace) -> List[dict]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    rate = machine.matmul_rate(torch.float32, runs=10, device=device)
    print(f"# machine: {machine_description(device)}")
    print(f"# measured fp32 matmul rate: {rate:.1f} GFLOP/s (2048x2048, median of 10)")
    print(f"# model: {args.config}, runs: median of {args.runs} after 1 warm-up, amp: {args.amp}")
    model = build_model(args.config, device)
    rows = []
    variants = [("ours", contextlib.nullcontext)]
    if args.ablate:
        variants += [(name, patch) for name, patch in ablations.ABLATIONS.items()]

    def measure(name: str, size: str, fn: Callable, variant: str) -> None:
        stats = time_runs(fn, args.runs, device)
        flops = count_flops(fn) if variant == "ours" else float("nan")
        row = dict(variant=variant, op=name, size=size, **stats, gflop=flops / 1e9)
        row["gflops_s"] = row["gflop"] / row["median_s"]
        row["pct_matmul"] = 100 * row["gflops_s"] / rate
        rows.append(row)
        print(_format_row(row), flush=True)

    print(_HEADER)
    for variant, patch in variants:
        with patch():
            if "train" in args.ops:
                measure("train step (2x256x256)", "256x256", make_train_step(model, device, amp), variant)
            for size in args.sizes:
                w, h = (int(v) for v in size.lower().split("x"))
                ops = make_ops(model, (w, h), device, amp)
                for name in ("forward", "compress", "decompress"):
                    if name in args.ops and not (variant != "ours" and size not in args.sizes[:1]):
                        measure(name, size, ops[name], variant)
    return rows


_HEADER = (
    "| variant | operation | size | median s | min s | GFLOP | GFLOP/s | % of matmul | peak memory GiB |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|"
)


def _format_row(r: dict) -> str:
    gflop = "" if r["gflop"] != r["gflop"] else f"{r['gflop']:.0f}"
    rate = "" if r["gflop"] != r["gflop"] else f"{r['gflops_s']:.1f}"
    pct = "" if r["gflop"] != r["gflop"] else f"{r['pct_matmul']:.0f}%"
    return (
        f"| {r['variant']} | {r['op']} | {r['size']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {gflop} | {rate} | {pct} | "
        f"{r['peak_gib']:.2f} |"
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="icwem", help="model preset or JSON (default: the published model)")
    p.add_argument("--sizes", nargs="+", default=["768x512", "2048x1365"], help="image sizes WxH (multiples of 64 are coded as is; others are measured at that size after padding by the model's caller)")
    p.add_argument("--ops", nargs="+", default=["train", "forward", "compress", "decompress"], choices=["train", "forward", "compress", "decompress"])
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast for forward and the training step")
    p.add_argument("--ablate", action="store_true", help="also measure, at the first size, the model with each speed-up undone")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        if w % 64 or h % 64:
            pw, ph = -(-w // 64) * 64, -(-h // 64) * 64
            print(f"# {size} is coded as {pw}x{ph} (padded to a multiple of 64, as codec.py does)")
    args.sizes = [f"{-(-int(s.split('x')[0]) // 64) * 64}x{-(-int(s.split('x')[1]) // 64) * 64}" for s in (x.lower() for x in args.sizes)]
    run(args)
    return 0


if __name__ == "__main__":
    run_cli(main)
