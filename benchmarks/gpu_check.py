"""The one script a lent GPU runs: training speed and memory, GPU coding, files across CPU and GPU, DDP.

    python3 benchmarks/gpu_check.py --out DIR                    # on the GPU machine (../shared/GPU.md), <= 8 min
    python3 benchmarks/gpu_check.py --out DIR --original .ref/ICWEM-original   # + the original's training speed
    python3 benchmarks/gpu_check.py --out DIR --smoke            # every step on the CPU, tiny preset (the tests)

Device time is short and lent rarely, so everything is measured in one run, each section in order of
importance and written to ``DIR/gpu_check.json`` as soon as it is done (a run cut short keeps what it
had); a section that fails records its error and the next one runs. ``DIR/gpu_check.md`` is the table
for ``benchmarks/RESULTS.md``.

1. ``machine``: GPU, CUDA, torch, CPU, matmul rates (TF32 off and on, bf16, float64), and where coding
   computes the float64 entropy parameters (``models.entropy.parameter_device``) with the timings
   that decided it.
2. ``training``: the published configuration, batch 8 of 256², ``train_step`` (what train.py runs, set up
   by its own ``training_device``: TF32 and cuDNN autotuning) in fp32, bf16 and fp16: images/s (median
   step), peak memory, skipped steps, the fp16 scaler's scale; host reads per step (operators that make
   the host wait for the device, counted in one extra fp32 step).
3. ``coding``: the published configuration (seeded weights), compress and decompress of a 768×512 and
   a 2048×1365 photo through ``encode_image`` / ``decode_bitstream`` (median of runs after a first one
   that also builds the float64 copy), peak memory; at 768×512 the float64 parameters computed on the
   CPU and on the GPU, timed against each other.
4. ``across_devices``: the shipped ``small`` q3 model (trained: its scales spread over the coder's
   tables) on a 768×512 photo, encoded on the GPU (float64 parameters on the GPU, then on the CPU) and on
   the CPU; every file decoded on both. Recorded: whether decodes succeeded (the coder check compares
   every symbol and scale index with the encoder's), whether files are identical, and how far the
   pictures of one file decoded on the two devices are apart, in 8-bit levels.
5. ``original``: with ``--original DIR``, the original implementation's training step in its own
   process, same configuration, batch and precision (fp32), images/s beside ours.
6. ``ddp``: with two GPUs, one step of two DDP ranks (NCCL): the replicas' parameters agree afterwards.

``--smoke`` runs every section on the CPU with the tiny preset, 64² crops, small images and two gloo
ranks, in a few minutes at most; ``tests/test_cuda_path.py`` runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import machine  # noqa: E402  (benchmarks/machine.py)

PRECISIONS = ("none", "bf16", "fp16")
WAITING_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero")


@dataclass
class Check:
    """The run's settings (GPU or smoke) and its results so far, written out after every section."""

    out: Path
    smoke: bool
    device: torch.device
    preset: str
    batch: int
    patch: int
    warmup: int
    steps: int
    runs: int
    sizes: Tuple[Tuple[int, int], ...]
    deadline: float
    original: Optional[Path] = None
    results: Dict[str, object] = field(default_factory=dict)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(table(self.results))


def settings(args: argparse.Namespace) -> Check:
    deadline = time.monotonic() + args.budget_s
    if args.smoke:
        return Check(Path(args.out), True, torch.device("cpu"), "tiny", batch=1, patch=64, warmup=0, steps=1, runs=1,
                     sizes=((128, 64), (192, 128)), deadline=deadline, original=args.original)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --smoke to run every step on the CPU)")
    return Check(Path(args.out), False, torch.device("cuda", 0), "icwem", batch=8, patch=256, warmup=2, steps=5,
                 runs=2, sizes=((768, 512), (2048, 1365)), deadline=deadline, original=args.original)


# ----------------------------------------------------------------------------------------- helpers
def photo(width: int, height: int) -> np.ndarray:
    """scikit-image's coffee photo, bicubic to ``width`` × ``height`` (H×W×3 uint8)."""
    import skimage.data
    from PIL import Image

    return np.asarray(Image.fromarray(skimage.data.coffee()).resize((width, height), Image.BICUBIC))


def seeded_model(preset: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """``preset`` with seeded weights, eval mode, coder tables built."""
    from models import ICWEM, get_config

    torch.manual_seed(seed)
    model = ICWEM(**get_config(preset)).to(device).eval()
    model.update(force=True)
    return model


class HostReads(TorchDispatchMode):
    """Counts the operators that make the host wait for the device (a value or a data-dependent shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(WAITING_OPS):
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def section(check: Check, name: str, run: Callable[[Check], object], needs_s: float = 0.0) -> None:
    """Run one section, record its result (or its error, or that time ran out) and write the files."""
    if check.seconds_left() < needs_s:
        check.results[name] = {"skipped": f"time budget: {check.seconds_left():.0f} s left, needs ~{needs_s:.0f} s"}
    else:
        started = time.monotonic()
        try:
            check.results[name] = run(check)
        except Exception as exc:  # a failed section is a result too; the next one still runs
            check.results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        if isinstance(check.results[name], dict):
            check.results[name]["section_s"] = round(time.monotonic() - started, 1)
    print(f"gpu_check: {name}: {json.dumps(check.results[name], default=str)[:400]}", flush=True)
    check.save()


# ----------------------------------------------------------------------------------------- 1. machine
def machine_section(check: Check) -> Dict[str, object]:
    from models.entropy.parameters import _FLOAT64_FASTER, _float64_seconds, parameter_device
    from utils.device import full_float32, set_tf32

    import compressai.ans  # noqa: F401  (the coder's extension: fails here, not in the middle of coding)

    out: Dict[str, object] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "host": socket.gethostname(), "cpu": machine.cpu_info()["model"], "cpu_threads": torch.get_num_threads(),
        "device": str(check.device), "smoke": check.smoke,
    }
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        out.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=props.total_memory / 2**30,
                   gpus=torch.cuda.device_count(), bf16_supported=torch.cuda.is_bf16_supported())
        with full_float32():
            out["fp32_tflops"] = machine.matmul_rate(torch.float32, 4096, device=check.device) / 1e3
        set_tf32(True)
        out["tf32_tflops"] = machine.matmul_rate(torch.float32, 4096, device=check.device) / 1e3
        set_tf32(False)
        out["bf16_tflops"] = machine.matmul_rate(torch.bfloat16, 4096, device=check.device) / 1e3
        out["fp64_tflops"] = machine.matmul_rate(torch.float64, 2048, device=check.device) / 1e3
    out["cpu_fp64_gflops"] = machine.matmul_rate(torch.float64, 512 if check.smoke else 1024, runs=2)
    chosen = parameter_device(check.device)
    out["parameter_device"] = str(chosen)
    out["float64_conv_ms"] = {"cpu": 1e3 * _float64_seconds(torch.device("cpu"))}
    if check.device.type == "cuda":
        out["float64_conv_ms"]["gpu"] = 1e3 * _float64_seconds(check.device)
        out["float64_faster_on_gpu"] = _FLOAT64_FASTER.get(check.device)
    return out


# ----------------------------------------------------------------------------------------- 2. training
def training_section(check: Check) -> Dict[str, object]:
    out: Dict[str, object] = {"preset": check.preset, "batch": check.batch, "patch": check.patch,
                              "timed_steps": check.steps, "warmup_steps": check.warmup}
    for amp in PRECISIONS:
        try:
            out[amp] = train_speed(check, amp)
        except Exception as exc:
            out[amp] = {"error": f"{type(exc).__name__}: {exc}"}
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
    out["host_reads_per_step"] = host_reads_per_step(check)
    return out


def training_setup(check: Check, amp: str):
    """A fresh model, state, loss and autocast as ``train`` builds them (``training_device`` sets the TF32
    policy and cuDNN's autotuning on CUDA); returns them with a batch on the device."""
    from losses import RateDistortionLoss
    from models import ICWEM, get_config
    from utils.training import TrainConfig
    from utils.training.distributed import distributed_context
    from utils.training.setup import autocast_for, new_state, training_device

    cfg = TrainConfig(dataset="", amp=amp, device=str(check.device), model_config=check.preset,
                      batch_size=check.batch, patch_size=(check.patch, check.patch), lmbda=0.013)
    device = training_device(cfg, distributed_context())
    torch.manual_seed(0)
    model = ICWEM(**get_config(check.preset)).to(device).train()
    state = new_state(cfg, model, model.config)
    x = torch.rand(check.batch, 3, check.patch, check.patch, generator=torch.Generator().manual_seed(1)).to(device)
    return state, x, RateDistortionLoss(cfg.lmbda), autocast_for(cfg, device)


def train_speed(check: Check, amp: str) -> Dict[str, object]:
    from utils.training import train_step

    state, x, criterion, autocast = training_setup(check, amp)
    machine.reset_peak_memory(check.device)
    times, skipped, losses = [], 0, []
    for i in range(check.warmup + check.steps):
        machine.synchronize(check.device)
        start = time.perf_counter()
        result = train_step(state.model, x, criterion, state, autocast=autocast)
        machine.synchronize(check.device)
        if i >= check.warmup:
            times.append(time.perf_counter() - start)
        skipped += result.skipped
        losses.append(float(result.terms["loss"].detach()))
    step_s = statistics.median(times)
    finite = all(torch.isfinite(p).all() for p in state.model.parameters())
    return {"images_per_s": check.batch / step_s, "step_s": step_s, "peak_gib": machine.peak_memory_gib(check.device),
            "skipped_steps": skipped, "losses": losses, "weights_finite": bool(finite),
            "scale": state.scaler.get_scale() if state.scaler.is_enabled() else None}


def host_reads_per_step(check: Check) -> Dict[str, int]:
    """Host-waiting operators in one fp32 step (after a warm-up step: the attention caches are built)."""
    from utils.training import train_step

    state, x, criterion, autocast = training_setup(check, "none")
    train_step(state.model, x[:1], criterion, state, autocast=autocast)
    with HostReads() as reads:
        train_step(state.model, x[:1], criterion, state, autocast=autocast)
    return reads.counts


# ----------------------------------------------------------------------------------------- 3. coding
def coding_section(check: Check) -> Dict[str, object]:
    from models.entropy import parameter_device
    from utils.coding.bitstream import pack, unpack
    from utils.coding.codec import decode_bitstream, encode_image
    from utils.metrics import psnr
    from utils.image_io import to_tensor

    model = seeded_model("icwem" if not check.smoke else check.preset, check.device)
    out: Dict[str, object] = {"model": "published configuration, seeded weights" if not check.smoke else check.preset,
                              "parameter_device": str(parameter_device(check.device))}
    for width, height in check.sizes:
        rgb = photo(width, height)
        machine.reset_peak_memory(check.device)
        first = time.perf_counter()
        bs, _ = encode_image(model, rgb)
        first_s = time.perf_counter() - first
        encode_s, decode_s = [], []
        for _ in range(check.runs):
            bs, stats = encode_image(model, rgb)
            picture, decoded = decode_bitstream(model, unpack(pack(bs)))
            encode_s.append(stats["encode_s"])
            decode_s.append(decoded["decode_s"])
        out[f"{width}x{height}"] = {
            "encode_s": statistics.median(encode_s), "decode_s": statistics.median(decode_s), "first_encode_s": first_s,
            "bytes": stats["bytes"], "psnr": psnr(to_tensor(rgb), to_tensor(picture)),
            "peak_gib": machine.peak_memory_gib(check.device),
        }
    width, height = check.sizes[0]
    rgb = photo(width, height)
    for where in ("cpu", "model"):  # the float64 parameters on the CPU, then on the model's device
        model.parameter_device = where
        encode_image(model, rgb)  # builds that copy
        bs, stats = encode_image(model, rgb)
        _, decoded = decode_bitstream(model, bs)
        out[f"{width}x{height}, parameters on {'the cpu' if where == 'cpu' else str(check.device)}, forced"] = {
            "encode_s": stats["encode_s"], "decode_s": decoded["decode_s"]}
    model.parameter_device = None
    return out


# ----------------------------------------------------------------------------------------- 4. across devices
def across_devices_section(check: Check) -> Dict[str, object]:
    from models import load_checkpoint
    from models.zoo import shipped_by_quality
    from utils.coding.bitstream import pack, unpack
    from utils.coding.codec import decode_bitstream, encode_image
    from utils.errors import UserError

    cpu = torch.device("cpu")
    if check.smoke:
        models = {"cpu": seeded_model(check.preset, cpu), "gpu": seeded_model(check.preset, check.device)}
        name, (width, height) = check.preset, check.sizes[0]
    else:
        path, _ = shipped_by_quality(3)
        models = {"cpu": load_checkpoint(path), "gpu": load_checkpoint(path, map_location=check.device)}
        name, (width, height) = path.name, (768, 512)
    rgb = photo(width, height)
    files: Dict[str, bytes] = {}
    models["gpu"].parameter_device = "model"
    files["gpu (parameters on the gpu)"] = pack(encode_image(models["gpu"], rgb)[0])
    models["gpu"].parameter_device = "cpu"
    files["gpu (parameters on the cpu)"] = pack(encode_image(models["gpu"], rgb)[0])
    models["gpu"].parameter_device = None
    files["cpu"] = pack(encode_image(models["cpu"], rgb)[0])
    out: Dict[str, object] = {"model": name, "image": f"coffee {width}x{height}",
                              "files_identical": len(set(files.values())) == 1}
    for encoder, data in files.items():
        pictures, row = {}, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16]}
        for decoder in ("cpu", "gpu"):
            try:
                pictures[decoder], _ = decode_bitstream(models[decoder], unpack(data))
                row[f"decoded_on_{decoder}"] = "ok: symbols and scale indexes as encoded"
            except UserError as exc:
                row[f"decoded_on_{decoder}"] = f"FAILED: {exc}"
        if len(pictures) == 2:
            diff = np.abs(pictures["cpu"].astype(np.int16) - pictures["gpu"].astype(np.int16))
            row.update(max_level_difference=int(diff.max()), values_differing=int((diff > 0).sum()),
                       values=int(diff.size), pictures_identical=bool(diff.max() == 0))
        out[f"encoded on {encoder}"] = row
    return out


# ----------------------------------------------------------------------------------------- 5. the original
def original_section(check: Check) -> Dict[str, object]:
    """The original's training step, in a process of its own (its ``models`` package shadows ours)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--original-worker", str(check.original),
           "--device", str(check.device), "--batch", str(check.batch), "--patch", str(check.patch),
           "--warmup", str(check.warmup), "--steps", str(check.steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, check.seconds_left()))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def original_worker(args: argparse.Namespace) -> int:
    """Build the original's published configuration (its default constructor) and time its training
    step: λ·255²·MSE + bpp, Adam on the weights with gradient clipping, Adam on the quantiles (aux loss)."""
    sys.path.insert(0, str(Path(args.original_worker).resolve()))  # before ours: the original's ``models``
    from models import ICWEM  # the original's package

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = ICWEM().to(device).train()
    x = torch.rand(args.batch, 3, args.patch, args.patch, generator=torch.Generator().manual_seed(1)).to(device)
    quantiles = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    weights = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    main, aux = torch.optim.Adam(weights, lr=1e-4), torch.optim.Adam(quantiles, lr=1e-3)
    machine.reset_peak_memory(device)
    times = []
    for i in range(args.warmup + args.steps):
        machine.synchronize(device)
        start = time.perf_counter()
        main.zero_grad(set_to_none=True)
        aux.zero_grad(set_to_none=True)
        out = model(x)
        bits = sum(-torch.log2(p).sum() for p in out["likelihoods"].values())
        loss = 0.013 * 255**2 * torch.nn.functional.mse_loss(out["x_hat"], x) + bits / x[:, 0].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        main.step()
        model.aux_loss().backward()
        aux.step()
        machine.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(json.dumps({"images_per_s": args.batch / step_s, "step_s": step_s, "peak_gib": machine.peak_memory_gib(device),
                      "precision": "fp32 (the original has no mixed precision)", "loss": loss.item()}))
    return 0


# ----------------------------------------------------------------------------------------- 6. DDP
def ddp_section(check: Check) -> Dict[str, object]:
    """Two ranks of one DDP step, as torchrun would start them: NCCL on two GPUs, gloo on the CPU (smoke)."""
    if check.device.type == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU: a two-rank step needs two"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", "--device", check.device.type,
               "--preset", check.preset, "--batch", str(check.batch), "--patch", str(check.patch)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ranks = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(60.0, check.seconds_left()))
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            ranks.append(json.loads(lines[-1]) if proc.returncode == 0 and lines else
                         {"error": f"exit {proc.returncode}: {stderr.strip()[-2000:]}"})
    finally:
        for proc in procs:
            proc.kill()
    in_sync = all(r.get("parameters_in_sync") for r in ranks)
    return {"ranks": ranks, "parameters_in_sync": in_sync}


def ddp_worker(args: argparse.Namespace) -> int:
    """One rank: ``train``'s own DDP setup (``distribute``) and one ``train_step``, then the check that
    every parameter agrees across ranks."""
    from losses import RateDistortionLoss
    from models import ICWEM, get_config
    from utils.training import TrainConfig, train_step
    from utils.training.distributed import all_reduce_max, destroy_process_group, distributed_context, parameters_in_sync
    from utils.training.setup import distribute, new_state, training_device

    ctx = distributed_context()
    cfg = TrainConfig(dataset="", cuda=args.device == "cuda", model_config=args.preset, batch_size=args.batch,
                      patch_size=(args.patch, args.patch), lmbda=0.013)
    device = training_device(cfg, ctx)
    torch.manual_seed(0)
    model = ICWEM(**get_config(args.preset)).to(device).train()
    state = new_state(cfg, model, model.config)
    criterion = RateDistortionLoss(cfg.lmbda)
    wrapped = distribute(model, criterion, cfg, ctx, device)
    x = torch.rand(args.batch, 3, args.patch, args.patch, generator=torch.Generator().manual_seed(10 + ctx.rank)).to(device)
    machine.synchronize(device)
    start = time.perf_counter()
    result = train_step(wrapped, x, criterion, state, agree=lambda flags: all_reduce_max(flags, ctx, device))
    machine.synchronize(device)
    step_s = time.perf_counter() - start
    drifted = [name for name, same in parameters_in_sync(state.model, ctx, device).items() if not same]
    destroy_process_group(ctx)
    print(json.dumps({"rank": ctx.rank, "device": str(device), "step_s": step_s, "skipped": result.skipped,
                      "parameters_in_sync": not drifted, "drifted": drifted[:3]}))
    return 0


# ----------------------------------------------------------------------------------------- the table
def table(results: Dict[str, object]) -> str:
    """The results as the Markdown table RESULTS.md takes (what is there so far)."""
    m = results.get("machine", {})
    lines = [f"# gpu_check on {m.get('gpu', m.get('device', '?'))} (torch {m.get('torch', '?')}, "
             f"CUDA {m.get('cuda', '-')}){' — smoke run on the CPU' if m.get('smoke') else ''}", ""]
    t = results.get("training", {})
    if isinstance(t, dict) and "preset" in t:
        lines += [f"Training, {t['preset']}, batch {t['batch']} × {t['patch']}²:", "",
                  "| precision | images/s | step s | peak GiB | skipped |", "|---|---:|---:|---:|---:|"]
        rows = [(amp, t.get(amp, {})) for amp in PRECISIONS]
        original = results.get("original", {})
        if isinstance(original, dict) and "images_per_s" in original:
            rows.append(("original, fp32", original))
        for name, r in rows:
            if "images_per_s" in r:
                lines.append(f"| {name} | {r['images_per_s']:.2f} | {r['step_s']:.3f} | {r['peak_gib']:.2f} | "
                             f"{r.get('skipped_steps', '-')} |")
            else:
                lines.append(f"| {name} | {r.get('error', r.get('skipped', '-'))} | | | |")
        lines.append("")
    c = results.get("coding", {})
    if isinstance(c, dict):
        sized = [(k, v) for k, v in c.items() if isinstance(v, dict) and "encode_s" in v]
        if sized:
            lines += [f"Coding ({c.get('model')}; float64 parameters on {c.get('parameter_device')} by default):", "",
                      "| image | encode s | decode s | peak GiB |", "|---|---:|---:|---:|"]
            lines += [f"| {k} | {v['encode_s']:.3f} | {v['decode_s']:.3f} | {v.get('peak_gib', float('nan')):.2f} |"
                      for k, v in sized]
            lines.append("")
    a = results.get("across_devices", {})
    if isinstance(a, dict) and "model" in a:
        lines += [f"Across devices ({a['model']}, {a['image']}; files identical: {a['files_identical']}):", "",
                  "| encoded on | decoded on CPU | decoded on GPU | max level difference | values differing |",
                  "|---|---|---|---:|---:|"]
        for key, r in a.items():
            if key.startswith("encoded on"):
                lines.append(f"| {key[len('encoded on '):]} | {r.get('decoded_on_cpu')} | {r.get('decoded_on_gpu')} | "
                             f"{r.get('max_level_difference', '-')} | {r.get('values_differing', '-')} |")
        lines.append("")
    d = results.get("ddp", {})
    if isinstance(d, dict) and d:
        lines += [f"DDP: {d.get('skipped') or ('parameters in sync' if d.get('parameters_in_sync') else d)}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--smoke", action="store_true", help="every step on the CPU with the tiny preset (minutes)")
    p.add_argument("--original", type=Path, help="the original implementation's folder: time its training step too")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip the sections that would not fit in this time")
    # Worker modes (the script starts itself).
    p.add_argument("--original-worker", help=argparse.SUPPRESS)
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="icwem", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--patch", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.original_worker:
        return original_worker(args)
    if args.ddp_worker:
        return ddp_worker(args)
    if not args.out:
        raise SystemExit("gpu_check: --out DIR is required")
    check = settings(args)
    section(check, "machine", machine_section)
    section(check, "training", training_section, needs_s=60)
    section(check, "coding", coding_section, needs_s=60)
    section(check, "across_devices", across_devices_section, needs_s=45)
    if check.original is not None:
        section(check, "original", original_section, needs_s=45)
    section(check, "ddp", ddp_section, needs_s=30)
    failed = [name for name, r in check.results.items() if isinstance(r, dict) and "error" in r]
    print(f"gpu_check: wrote {check.out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
