"""Training throughput on the CPU: pixels/s, steps/s, FLOPs per pixel by block and peak memory of one
train.py step, for each preset over batch × patch × threads × precision × torch.compile.

    python benchmarks/train_throughput.py                          # tiny (the old demo) vs small, 1 thread
    python benchmarks/train_throughput.py --presets small --batches 8 16 --patches 64 128 --threads 1 2 --compile

Every configuration runs in its own process (its own thread count and peak memory), one after another,
and the table prints each beside the first row (the reference: the old demo's setting, tiny at batch 4
of 64×64 on one thread) as a ratio. Steps are timed after --warmup steps, median of --runs. bf16 autocast
rows are added only where the CPU has AVX512-BF16 or AMX (read from /proc/cpuinfo). FLOPs count a
multiply-add as 2 and are those of the forward pass (a training step costs about 3×).

``--baseline DIR`` (another checkout of this project, e.g. ``git worktree add ../icwem-before <commit>``)
runs the reference row with that checkout's code, so the ratios compare two versions side by side in
one run; each version's own ``benchmarks/speed.py`` builds its model and its train.py step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# Top-level blocks of ICWEM in data-flow order; everything else (the slice loop's networks) is "entropy".
BLOCKS = ("enh.forw_enh", "inv", "g_a", "h_a", "h_mean_s", "h_scale_s", "g_s", "enh.back_enh")


def flops_by_block(preset: str, patch: int) -> Dict[str, float]:
    """Forward FLOPs per pixel of each block, from torch's FlopCounterMode module tracking."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models import ICWEM, get_config

    torch.manual_seed(0)
    model = ICWEM(**get_config(preset))
    x = torch.rand(1, 3, patch, patch)
    # Under autograd, as in training: outside it the transforms run as stages (models.tiling), not as the
    # modules whose names the counter tracks.
    with FlopCounterMode(display=False) as counter:
        model(x)
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    out = {b: sum(counts.get(f"ICWEM.{b}", {}).values()) / patch**2 for b in BLOCKS}
    out["entropy"] = total / patch**2 - sum(out.values())
    out["total"] = total / patch**2
    return out


def one(preset: str, batch: int, patch: int, threads: int, bf16: bool, compile_: bool, warmup: int, runs: int) -> dict:
    """Time train.py's step in this process (called in a subprocess by ``main``)."""
    import torch

    torch.set_num_threads(threads)
    # From speed.py, not machine.py: a --baseline checkout has these there.
    from speed import _peak_memory_gib, _reset_peak_memory, build_model, make_train_step

    model = build_model(preset, torch.device("cpu")).train()
    if compile_:
        model = torch.compile(model)
    step = make_train_step(model, torch.device("cpu"), torch.bfloat16 if bf16 else None, batch=batch, patch=patch)
    start = time.perf_counter()
    step()  # includes compilation when compile_ is set
    first_s = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        step()
    _reset_peak_memory(torch.device("cpu"))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"preset": preset, "batch": batch, "patch": patch, "threads": threads, "bf16": bf16, "compile": compile_,
            "step_s": step_s, "first_step_s": first_s, "pixels_per_s": batch * patch * patch / step_s,
            "peak_gib": _peak_memory_gib(torch.device("cpu"))}


def run_config(cfg: dict, warmup: int, runs: int, root: Path = REPO) -> dict:
    """One configuration in its own process, importing the project at ``root``."""
    cmd = [sys.executable, __file__, "_one", json.dumps(cfg), str(warmup), str(runs), str(root)]
    env_threads = {"OMP_NUM_THREADS": str(cfg["threads"])}
    import os

    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env_threads}, cwd=REPO)
    if done.returncode:
        return {**cfg, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--batches", nargs="+", type=int, default=[8])
    p.add_argument("--patches", nargs="+", type=int, default=[64, 128])
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--compile", action="store_true", help="also time each configuration under torch.compile")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--baseline", type=Path, help="checkout of another version whose code runs the reference row")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    import machine  # benchmarks/machine.py
    from speed import machine_description

    torch.set_num_threads(1)
    rate = machine.matmul_rate(torch.float32, runs=10)
    print(f"machine: {machine_description(torch.device('cpu'))}; fp32 2048² matmul, 1 thread: {rate:.1f} GFLOP/s")
    bf16_options = [False, True] if machine.has_bf16() else [False]
    if not machine.has_bf16():
        print("bf16 autocast: not measured (this CPU has neither AVX512-BF16 nor AMX)")
    reference = dict(preset="tiny", batch=4, patch=64, threads=1, bf16=False, compile=False)  # the old demo
    configs = [reference]
    if args.baseline:
        if not (args.baseline / "benchmarks" / "speed.py").is_file():
            raise SystemExit(f"error: {args.baseline} is not a checkout of this project (no benchmarks/speed.py)")
        print(f"reference row: {args.baseline}'s code (git {_commit(args.baseline)}); the others: {REPO} "
              f"(git {_commit(REPO)})")
    for preset in args.presets:
        for batch in args.batches:
            for patch in args.patches:
                for threads in args.threads:
                    for bf16 in bf16_options:
                        for compile_ in ([False, True] if args.compile else [False]):
                            cfg = dict(preset=preset, batch=batch, patch=patch, threads=threads, bf16=bf16, compile=compile_)
                            if cfg not in configs:
                                configs.append(cfg)
    print("\nforward FLOPs per pixel by block (k = 1e3):")
    for preset in dict.fromkeys(c["preset"] for c in configs):
        f = flops_by_block(preset, 64)
        parts = "  ".join(f"{k} {v / 1e3:.0f}k" for k, v in f.items() if k != "total")
        print(f"  {preset:6s} total {f['total'] / 1e3:.0f}k: {parts}")
    rows: List[dict] = []
    print(f"\n{'preset':6s} {'batch':>5s} {'patch':>5s} {'thr':>3s} {'bf16':>4s} {'compile':>7s} | {'s/step':>7s} "
          f"{'steps/s':>7s} {'kpx/s':>7s} {'vs ref':>6s} {'peak GiB':>8s} {'1st step s':>10s}")
    for i, cfg in enumerate(configs):
        root = args.baseline if args.baseline and i == 0 else REPO
        r = run_config(cfg, args.warmup, args.runs, root)
        rows.append(r)
        head = f"{r['preset']:6s} {r['batch']:5d} {r['patch']:5d} {r['threads']:3d} {str(r['bf16'])[0]:>4s} {str(r['compile'])[0]:>7s} |"
        if "error" in r:
            print(f"{head} failed: {r['error']}")
            continue
        ratio = r["pixels_per_s"] / rows[0]["pixels_per_s"] if "error" not in rows[0] else float("nan")
        print(f"{head} {r['step_s']:7.2f} {1 / r['step_s']:7.3f} {r['pixels_per_s'] / 1e3:7.1f} {ratio:5.2f}x "
              f"{r['peak_gib']:8.2f} {r['first_step_s']:10.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        root = Path(sys.argv[5])  # this version's models/, losses/, utils/ and benchmarks/speed.py come first
        sys.path[:0] = [str(root), str(root / "benchmarks")]
        cfg = json.loads(sys.argv[2])
        print(json.dumps(one(cfg["preset"], cfg["batch"], cfg["patch"], cfg["threads"], cfg["bf16"], cfg["compile"],
                             int(sys.argv[3]), int(sys.argv[4]))))
    else:
        from utils.cli import run_cli

        run_cli(main)
