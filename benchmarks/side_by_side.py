"""Ours against the original implementation, side by side: same machine, same run, same weights, same photo.

    python benchmarks/side_by_side.py                                   # codec + training step, median of 3
    python benchmarks/side_by_side.py --original ../shared/reference/ICWEM-original --runs 5
    python benchmarks/side_by_side.py --ops codec --ours-bf16 on        # our transforms in bfloat16 autocast

Why this shape: a speed-up quoted against timings from another machine or another day measures the
machines as much as the code. Here two worker processes (one imports the original's ``models`` package
by path, the other ours) load the same synthetic weights of the published configuration (N 128, M 320;
written by the parent, loaded by both) and code the same photo; the parent asks them in alternation
(one warm-up each, then ``--runs`` rounds, order swapped every round), so slow phases of a shared
machine hit both. Only one worker computes at a time. Printed: per-op medians, the ratio, the bytes of
both and whether they are equal, the largest and mean absolute difference of the two decoded pictures,
each op's peak resident memory (fresh workers per op), each side's FLOPs (counted by other workers) with
the share of the fp32 matmul rate it reached and the ceiling that rate puts on any speed-up, and the
machine: CPU model, measured 2048² matmul rates in fp32 and bf16, and the cores' theoretical fp32 FMA
peak. Every number is measured in the run that prints it.

The original's code is only imported and timed, in its own process; nothing of it is copied here.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ORIGINAL = REPO.parent / "shared" / "reference" / "ICWEM-original"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402  (benchmarks/machine.py)


# ----------------------------------------------------------------------------- worker side
def _load_model(who: str, original: Path, weights: Path, bf16: bool) -> torch.nn.Module:
    """Build the published configuration from ``who``'s own code and load the shared weights."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if who == "original":
        sys.path.insert(0, str(original))
        from models import ICWEM  # the original's package, found first on the path

        model = ICWEM()
        model.load_state_dict(state)
    else:
        sys.path.insert(0, str(REPO))
        from models import ICWEM

        model = ICWEM()
        model.load_state_dict(state)
        model.bf16_transforms = bf16
    model.eval()
    model.update(force=True)
    return model


def _codec_op(model: torch.nn.Module, x: torch.Tensor, out_dir: Path, who: str) -> Dict:
    """compress then decompress one image; times each and saves the decoded picture."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        enc = model.compress(x)
        t1 = time.perf_counter()
        dec = model.decompress(enc["strings"], enc["shape"])
        t2 = time.perf_counter()
    torch.save(dec["x_hat"].float().cpu(), out_dir / f"{who}_x_hat.pt")
    y_bytes = b"".join(enc["strings"][0])
    z_bytes = b"".join(enc["strings"][1])
    (out_dir / f"{who}_y.bin").write_bytes(y_bytes)
    (out_dir / f"{who}_z.bin").write_bytes(z_bytes)
    return {"compress_s": t1 - t0, "decompress_s": t2 - t1, "codec_s": t2 - t0, "y_bytes": len(y_bytes), "z_bytes": len(z_bytes)}


def _train_step_fn(model: torch.nn.Module, amp: bool, batch: int = 2, patch: int = 256):
    """One step of the published recipe, the same code for both models: λ·255²·MSE + bpp, Adam on the
    weights with gradient clipping, a second Adam on the entropy bottleneck's quantiles (aux loss).
    It trains a copy, so the codec op keeps coding with the shared weights."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, patch, patch, generator=gen)
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(main, lr=1e-4), torch.optim.Adam(aux, lr=1e-3)
    pixels = batch * patch * patch

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        bpp = sum(torch.log(l.float()).sum() for l in out["likelihoods"].values()) / (-np.log(2) * pixels)
        loss = 0.013 * 255**2 * torch.nn.functional.mse_loss(out["x_hat"].float(), x) + bpp
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        opt.step()
        model.aux_loss().backward()
        aux_opt.step()
        model.eval()

    return step


def _count_flops(model: torch.nn.Module, x: torch.Tensor, op: str) -> Dict:
    """The floating-point operations of one op (convolutions and matrix products, 2 per multiply-add, as
    torch.utils.flop_counter counts them), by phase; run in workers of their own, not the timed ones."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> Tuple[int, object]:
        with FlopCounterMode(display=False) as counter:
            result = fn()
        return counter.get_total_flops(), result

    if op == "codec":
        with torch.no_grad():  # the counter's module hooks do not run under inference_mode
            compress, enc = count(lambda: model.compress(x))
            decompress, _ = count(lambda: model.decompress(enc["strings"], enc["shape"]))
        return {"compress_flops": compress, "decompress_flops": decompress, "codec_flops": compress + decompress}
    train, _ = count(_train_step_fn(model, op == "train_bf16"))
    return {"train_flops": train}


def worker(args: argparse.Namespace) -> int:
    """Serve ops read as JSON lines on stdin; answer each with one JSON line on stdout."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out_dir = Path(args.workdir)
    model = _load_model(args.worker, Path(args.original), out_dir / "weights.pt", args.ours_bf16 == "on")
    x = torch.load(out_dir / "image.pt", weights_only=True)
    steps = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        op = json.loads(line)
        if op["op"].startswith("flops:"):
            result = _count_flops(model, x, op["op"].split(":", 1)[1])
        elif op["op"] == "codec":
            result = _codec_op(model, x, out_dir, args.worker)
        else:
            amp = op["op"] == "train_bf16"
            step = steps.setdefault(op["op"], _train_step_fn(model, amp))
            t0 = time.perf_counter()
            step()
            result = {"train_s": time.perf_counter() - t0}
        result["peak_rss_gib"] = machine.peak_rss_gib()
        print(json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent side
def photo_tensor(size: Sequence[int], image: Optional[str]) -> Tuple[torch.Tensor, str]:
    """The photo as a 1×3×H×W tensor in [0, 1] (default: scikit-image's coffee, bicubic to ``size``)."""
    from PIL import Image

    if image:
        pil, name = Image.open(image).convert("RGB"), Path(image).name
    else:
        import skimage.data

        pil, name = Image.fromarray(skimage.data.coffee()), "scikit-image coffee"
    w, h = size
    if pil.size != (w, h):
        name += f" ({pil.size[0]}x{pil.size[1]}, bicubic to {w}x{h})"
        pil = pil.resize((w, h), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    return x, name


def write_inputs(workdir: Path, size: Sequence[int], image: Optional[str], seed: int) -> str:
    """The shared weights (ours, seeded, published configuration) and the photo, for both workers."""
    sys.path.insert(0, str(REPO))
    from models import ICWEM

    torch.manual_seed(seed)
    model = ICWEM()
    model.update(force=True)
    torch.save(model.state_dict(), workdir / "weights.pt")
    x, name = photo_tensor(size, image)
    torch.save(x, workdir / "image.pt")
    return name


class Worker:
    """One worker process, asked one op at a time over a pipe."""

    def __init__(self, who: str, args: argparse.Namespace, workdir: Path) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", who, "--workdir", str(workdir), "--original", str(args.original),
               "--threads", str(args.threads), "--ours-bf16", args.ours_bf16]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        self.who = who
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=workdir)
        self._read()

    def _read(self) -> Dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.who} worker stopped (exit {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def ask(self, op: str) -> Dict:
        self.proc.stdin.write(json.dumps({"op": op}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def with_workers(args: argparse.Namespace, workdir: Path, job: Callable[[List[Worker]], Dict]) -> Dict:
    """``job`` run on a fresh pair of workers (ours, the original's), closed afterwards whatever happens."""
    workers = [Worker("ours", args, workdir), Worker("original", args, workdir)]
    try:
        return job(workers)
    finally:
        for w in workers:
            w.close()


def count_flops(workers: List[Worker], op: str) -> Dict[str, Dict]:
    """Each side's FLOPs of ``op``, counted by its worker."""
    counted = {}
    for w in workers:
        counted[w.who] = w.ask(f"flops:{op}")
        print(f"# FLOPs of {op} counted for {w.who}", flush=True)
    return counted


def alternate(workers: List[Worker], ops: Sequence[str], runs: int) -> Dict[str, Dict[str, List[Dict]]]:
    """One warm-up per op and worker, then ``runs`` rounds; the workers' order flips every round."""
    results: Dict[str, Dict[str, List[Dict]]] = {w.who: {op: [] for op in ops} for w in workers}
    for op in ops:
        for w in workers:
            w.ask(op)
            print(f"# warm-up {op} {w.who} done", flush=True)
    for r in range(runs):
        order = workers if r % 2 == 0 else workers[::-1]
        for op in ops:
            for w in order:
                res = w.ask(op)
                results[w.who][op].append(res)
                print(f"# round {r + 1} {op} {w.who}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items() if k.endswith("_s")), flush=True)
    return results


def _median(rows: List[Dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(results: Dict, workdir: Path, ops: Sequence[str], machine_rows: Dict, photo: str, args: argparse.Namespace) -> None:
    """The side-by-side table, then bytes and picture differences."""
    m = machine_rows
    print(f"\n**Machine**: {m['cpu']} ({m['simd']}; native bf16: {'yes' if m['native_bf16'] else 'no'}), "
          f"{m['threads']} threads, torch {torch.__version__}. Matmul 2048²: fp32 {m['fp32_gflops']:.1f} GFLOP/s, "
          f"bf16 {m['bf16_gflops']:.1f} GFLOP/s ({m['bf16_n']}²); theoretical fp32 FMA peak {m['peak_fp32_gflops']:.0f} GFLOP/s "
          f"({m['mhz']:.0f} MHz nominal).")
    print(f"**Photo**: {photo}; ours' transforms in bf16: {args.ours_bf16}; median of {args.runs} after a warm-up.\n")
    print("| operation | original s | ours s | speed-up | TFLOP original / ours | % of fp32 matmul rate original / "
          "ours | ceiling | original peak GiB | ours peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rate = m["fp32_gflops"] * 1e9
    keys = {"codec": ["compress_s", "decompress_s", "codec_s"], "train": ["train_s"], "train_bf16": ["train_s"]}
    names = {"compress_s": "compress", "decompress_s": "decompress", "codec_s": "compress + decompress",
             "train_s": "train step (2×256², fp32)"}
    for op in ops:
        o, u = results["original"][op], results["ours"][op]
        for key in keys[op]:
            name = names[key] if op != "train_bf16" else "train step (2×256², bf16 autocast)"
            mo, mu = _median(o, key), _median(u, key)
            flops_key = key.replace("_s", "_flops")
            fo, fu = (results[who][f"flops:{op}"][0][flops_key] for who in ("original", "ours"))
            # ceiling: the original's time over the fastest its FLOPs can run, all at the fp32 matmul rate
            print(f"| {name} | {mo:.2f} | {mu:.2f} | {mo / mu:.2f}× | {fo / 1e12:.2f} / {fu / 1e12:.2f} | "
                  f"{100 * fo / mo / rate:.0f} % / {100 * fu / mu / rate:.0f} % | {mo * rate / fo:.2f}× | "
                  f"{max(r['peak_rss_gib'] for r in o):.2f} | {max(r['peak_rss_gib'] for r in u):.2f} |")
    print("\nTFLOP: convolutions and matrix products (2 per multiply-add; torch.utils.flop_counter, a separate pass). "
          "Ceiling: the original's time over its FLOPs at the measured fp32 matmul rate, the speed-up an "
          "implementation running every one of those FLOPs at that rate would reach.")
    if "codec" in ops:
        same = {s: (workdir / f"original_{s}.bin").read_bytes() == (workdir / f"ours_{s}.bin").read_bytes() for s in "yz"}
        a, b = (workdir / "original_y.bin").read_bytes(), (workdir / "ours_y.bin").read_bytes()
        za, zb = (workdir / "original_z.bin").read_bytes(), (workdir / "ours_z.bin").read_bytes()
        xo = torch.load(workdir / "original_x_hat.pt", weights_only=True)
        xu = torch.load(workdir / "ours_x_hat.pt", weights_only=True)
        d = (xo - xu).abs()
        verdict = lambda ok: "identical" if ok else "different"
        print(f"\nBytes: y original {len(a)}, ours {len(b)} ({verdict(same['y'])}); z original {len(za)}, ours {len(zb)} "
              f"({verdict(same['z'])}). "
              f"Decoded pictures: largest difference {d.max().item():.3g}, mean {d.mean().item():.3g}.")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", type=Path, default=DEFAULT_ORIGINAL, help="folder holding the original's models/ package")
    p.add_argument("--ops", nargs="+", default=["codec", "train"], choices=["codec", "train", "train_bf16"])
    p.add_argument("--runs", type=int, default=3, help="timed rounds per op (median), after one warm-up")
    p.add_argument("--size", default="768x512", help="WxH of the photo (multiples of 128: the original's sizes)")
    p.add_argument("--image", default=None, help="photo file (default: scikit-image's coffee, resized)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--ours-bf16", choices=["on", "off"], default="off", help="our main transforms in bf16 autocast")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    p.add_argument("--worker", choices=["ours", "original"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if not (args.original / "models" / "icwem.py").exists():
        sys.exit(f"error: {args.original} does not hold the original's models/icwem.py (--original)")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    m = machine.describe(args.threads)
    with tempfile.TemporaryDirectory(prefix="icwem-sbs-") as tmp:
        workdir = Path(tmp)
        photo = write_inputs(workdir, size, args.image, args.seed)
        results: Dict[str, Dict[str, List[Dict]]] = {"ours": {}, "original": {}}
        for op in args.ops:  # fresh workers per op and for counting: each peak is that op's timed runs alone
            for who, flops in with_workers(args, workdir, lambda ws: count_flops(ws, op)).items():
                results[who][f"flops:{op}"] = [flops]
            for who, rows in with_workers(args, workdir, lambda ws: alternate(ws, [op], args.runs)).items():
                results[who].update(rows)
        report(results, workdir, args.ops, m, photo, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
