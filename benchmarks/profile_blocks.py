"""Where compress and decompress spend their time, block by block, against each block's FLOPs.

    python benchmarks/profile_blocks.py                 # published configuration, 768x512 photo
    python benchmarks/profile_blocks.py --ops 25        # also the 25 costliest aten ops (self time)

Why: a speed-up has to go where the time is. Each top-level block (enh, INN, g_a, h_a, h_s, the slice
loop, g_s, and their inverses) is timed with hooks on the shipping code path, including the float64
portable entropy-parameter path as its own items; "coder + rest" is what is left of the total (rANS,
z coding, casts, checks). FLOPs per block come from ``torch.utils.flop_counter`` read before and after
each block; GFLOP/s against the fp32 matmul rate measured in the same run separates the blocks that run
near the machine's rate from the memory-bound and overhead-bound ones. The op table (torch.profiler,
self CPU time) names the memory-bound work: layer norms, copies, concatenations, GDN's elementwise ops.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
from models import ICWEM  # noqa: E402
from models.entropy import parameter_nets  # noqa: E402
from side_by_side import photo_tensor  # noqa: E402


class BlockClock:
    """Accumulates wall time (and, while a FLOP counter is set, FLOPs) per labelled block."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = defaultdict(float)
        self.flops: Dict[str, float] = defaultdict(float)
        self.counter = None
        self._stack: list = []

    def enter(self) -> None:
        total = self.counter.get_total_flops() if self.counter is not None else 0
        self._stack.append((time.perf_counter(), total))

    def leave(self, label: str) -> None:
        t0, f0 = self._stack.pop()
        if self._stack:  # nested hooked block: counted by the outer one only
            return
        self.seconds[label] += time.perf_counter() - t0
        if self.counter is not None:
            self.flops[label] += self.counter.get_total_flops() - f0

    def hook(self, module: torch.nn.Module, label: str) -> None:
        module.register_forward_pre_hook(lambda *_: self.enter())
        module.register_forward_hook(lambda *_: self.leave(label))

    def wrap(self, fn: Callable, label: str) -> Callable:
        def timed(*a, **k):
            self.enter()
            try:
                return fn(*a, **k)
            finally:
                self.leave(label)
        return timed


def instrument(model: ICWEM, clock: BlockClock) -> None:
    """Hook every top-level block of the shipping compress / decompress path. Inference runs the main
    transforms as the blocks' stages (models/tiling.py), so those are timed stage by stage, labelled by block."""
    n_enh, n_inn = len(model.enh.forw_enh.stages()), len(model.inv.stages())

    def labelled(build: Callable, labels: Callable[[int], List[str]]) -> Callable:
        def stages(*args):
            out = build(*args)
            for stage, label in zip(out, labels(len(out))):
                stage.fn = clock.wrap(stage.fn, label)
            return out
        return stages

    model.analysis_stages = labelled(
        model.analysis_stages, lambda n: ["enh (forward)"] * n_enh + ["INN (forward)"] * n_inn + ["g_a"] * (n - n_enh - n_inn))
    model.synthesis_stages = labelled(
        model.synthesis_stages, lambda n: ["g_s"] * (n - n_inn - n_enh) + ["INN (reverse)"] * n_inn + ["enh (back)"] * n_enh)
    clock.hook(model.h_a, "h_a")
    nets = parameter_nets(model)
    tag = " [float64 portable]"
    for name in ("h_mean_s", "h_scale_s"):
        clock.hook(getattr(nets, name), "h_s (mean + scale)" + tag)
    for name in ("atten_mean", "atten_scale"):
        for m in getattr(nets, name):
            clock.hook(m, "slice loop: SWAtten" + tag)
    for name in ("cc_mean_transforms", "cc_scale_transforms", "lrp_transforms"):
        for m in getattr(nets, name):
            clock.hook(m, "slice loop: mean/scale/LRP nets" + tag)


def run_profile(model: ICWEM, x: torch.Tensor, clock: BlockClock, rounds: int) -> Dict[str, Dict[str, float]]:
    """Per-phase (compress / decompress) block seconds (median-free: the mean of ``rounds``) and FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode():
        enc = model.compress(x)  # warm-up (also builds the float64 copy)
        model.decompress(enc["strings"], enc["shape"])
    out: Dict[str, Dict[str, float]] = {}
    for phase in ("compress", "decompress"):
        fn = (lambda: model.compress(x)) if phase == "compress" else (lambda: model.decompress(enc["strings"], enc["shape"]))
        clock.seconds.clear()
        total = 0.0
        for _ in range(rounds):
            with torch.inference_mode():
                t0 = time.perf_counter()
                fn()
                total += time.perf_counter() - t0
        seconds = {k: v / rounds for k, v in clock.seconds.items()}
        seconds["coder + rest"] = total / rounds - sum(seconds.values())
        clock.flops.clear()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            clock.counter = counter
            fn()
        clock.counter = None
        out[phase] = {"total": total / rounds, "seconds": seconds, "flops": dict(clock.flops)}
    return out


def print_blocks(result: Dict[str, Dict], rate: float) -> None:
    print("| block | compress s | decompress s | GFLOP (both) | GFLOP/s | % of fp32 matmul | share of time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    labels = list(dict.fromkeys([*result["compress"]["seconds"], *result["decompress"]["seconds"]]))
    grand = result["compress"]["total"] + result["decompress"]["total"]
    rows = []
    for label in labels:
        c = result["compress"]["seconds"].get(label, 0.0)
        d = result["decompress"]["seconds"].get(label, 0.0)
        g = (result["compress"]["flops"].get(label, 0.0) + result["decompress"]["flops"].get(label, 0.0)) / 1e9
        rows.append((c + d, label, c, d, g))
    for both, label, c, d, g in sorted(rows, reverse=True):
        speed = g / both if both > 0 and g > 0 else float("nan")
        cells = (f"{g:.0f}", f"{speed:.1f}", f"{100 * speed / rate:.0f}%") if g > 0 else ("0", "", "")
        print(f"| {label} | {c:.2f} | {d:.2f} | {cells[0]} | {cells[1]} | {cells[2]} | {100 * both / grand:.0f}% |")
    print(f"| **total** | {result['compress']['total']:.2f} | {result['decompress']['total']:.2f} | | | | |")


def print_ops(model: ICWEM, x: torch.Tensor, top: int) -> None:
    """The costliest aten ops by self CPU time over one compress + decompress."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        enc = model.compress(x)
        model.decompress(enc["strings"], enc["shape"])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("\n| aten op | self s | share | calls |")
    print("|---|---:|---:|---:|")
    for e in events[:top]:
        print(f"| {e.key} | {e.self_cpu_time_total / 1e6:.2f} | {100 * e.self_cpu_time_total / total:.0f}% | {e.count} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="768x512")
    p.add_argument("--image", default=None)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per phase (mean)")
    p.add_argument("--ops", type=int, default=0, help="also print the N costliest aten ops")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--bf16", action="store_true", help="main transforms in bf16 autocast")
    args = p.parse_args(argv)
    m = machine.describe(args.threads)
    print(f"# {m['cpu']}, {args.threads} threads; fp32 matmul {m['fp32_gflops']:.1f} GFLOP/s, "
          f"bf16 {m['bf16_gflops']:.1f}; fp32 FMA peak {m['peak_fp32_gflops']:.0f} GFLOP/s")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    x, name = photo_tensor(size, args.image)
    torch.manual_seed(0)
    model = ICWEM().eval()
    model.update(force=True)
    model.bf16_transforms = args.bf16
    print(f"# photo: {name}; published configuration, seed-0 weights; bf16 transforms: {args.bf16}\n")
    clock = BlockClock()
    instrument(model, clock)
    print_blocks(run_profile(model, x, clock, args.rounds), m["fp32_gflops"])
    if args.ops:
        print_ops(model, x, args.ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
