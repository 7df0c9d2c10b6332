"""The micro-benchmarks behind three implementation choices, at the shapes a 768×512 image (inference)
or a 2×256² training batch gives them; one process, medians of --runs after a warm-up.

    python benchmarks/micro_choices.py --threads 1

1. Window attention: ``scaled_dot_product_attention`` with the bias as mask vs the explicit
   ``softmax(q·kᵀ/√d + bias)·v`` (the original's einsum form), forward and forward + backward.
2. Swin MLP: ``Linear → GELU`` vs oneDNN's linear with GELU as post-op (``SwinBlock._mlp_inference``).
3. INN coupling: the G and H subnets' first convolutions as two calls vs one (``inn._subnet_pair``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def attention(runs: int) -> None:
    """(windows, heads, tokens, head width) of g_a's stages 0-2 (B·nW for 2×256² training batches)."""
    print("| attention shape (windows, heads, L, d) | SDPA fwd ms | explicit fwd ms | SDPA fwd+bwd ms | explicit fwd+bwd ms |")
    print("|---|---:|---:|---:|---:|")
    for n, h, L, d in [(512, 16, 64, 8), (128, 8, 64, 16), (32, 4, 64, 32)]:
        q, k, v = (torch.randn(n, h, L, d, requires_grad=True) for _ in range(3))
        bias = torch.randn(1, h, L, L)

        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

        def explicit():
            return torch.matmul((torch.matmul(q * d**-0.5, k.transpose(-2, -1)) + bias).softmax(-1), v)

        def both(f):
            return lambda: f().sum().backward()

        with torch.no_grad():
            fwd = median_ms(sdpa, runs), median_ms(explicit, runs)
        bwd = median_ms(both(sdpa), runs), median_ms(both(explicit), runs)
        print(f"| {n}, {h}, {L}, {d} | {fwd[0]:.1f} | {fwd[1]:.1f} | {bwd[0]:.1f} | {bwd[1]:.1f} |")


def mlp(runs: int) -> None:
    """g_a stage 0 at 768×512: 384×256 tokens of width 128, hidden 512."""
    x = torch.randn(384 * 256, 128)
    fc1, fc2 = torch.nn.Linear(128, 512), torch.nn.Linear(512, 128)
    with torch.inference_mode():
        plain = lambda: fc2(F.gelu(fc1(x)))
        fused = lambda: fc2(torch.ops.mkldnn._linear_pointwise(x, fc1.weight, fc1.bias, "gelu", [], "none"))
        diff = (plain() - fused()).abs().max().item()
        a, b = median_ms(plain, runs), median_ms(fused, runs)
    print(f"\nMLP 98304×128→512→128: Linear+GELU {a:.0f} ms, fused {b:.0f} ms ({a / b:.2f}×), largest difference {diff:.3g}")


def inn_pair(runs: int) -> None:
    """One 5×5 coupling's G1/H1 pair on a 768×512 image: two subnets vs the shared first convolution."""
    from models.inn import AffineCoupling, _subnet_pair

    c = AffineCoupling(5)
    for m in c.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
    y1 = torch.rand(1, 1, 512, 768)
    with torch.inference_mode():
        a = median_ms(lambda: (c.G1(y1), c.H1(y1)), runs)
        b = median_ms(lambda: _subnet_pair(c.G1, c.H1, y1), runs)
        diff = max((u - v).abs().max().item() for u, v in zip((c.G1(y1), c.H1(y1)), _subnet_pair(c.G1, c.H1, y1)))
    print(f"INN G1/H1 pair at 768×512: separate {a:.1f} ms, shared first conv {b:.1f} ms ({a / b:.2f}×), largest difference {diff:.3g}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {args.threads} threads, torch {torch.__version__}\n")
    attention(args.runs)
    mlp(args.runs)
    inn_pair(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
