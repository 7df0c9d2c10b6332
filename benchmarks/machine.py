"""What the machine can do and what a process holds, for the benchmarks: the CPU's model name and SIMD
flags, fp32 and bf16 matmul rates measured in the run that quotes them, the cores' theoretical fp32 FMA
peak (so a timing can be read against a floor), and the process's resident memory (now, its peak, and
resetting that peak). Every benchmark takes these from here."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import resource
import statistics
import time
from pathlib import Path
from typing import Dict, Optional, Set, Union

import torch


def cpu_info() -> Dict[str, object]:
    """Model name, vendor, core count, nominal clock (MHz) and the feature flags from /proc/cpuinfo."""
    info: Dict[str, object] = {"model": "unknown CPU", "vendor": "", "mhz": float("nan"), "flags": set()}
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and info["model"] == "unknown CPU":
            info["model"] = value
        elif key == "vendor_id":
            info["vendor"] = value
        elif key == "cpu MHz" and info["mhz"] != info["mhz"]:
            info["mhz"] = float(value)
        elif key == "flags" and not info["flags"]:
            info["flags"] = set(value.split())
    return info


def has_bf16(flags: Optional[Set[str]] = None) -> bool:
    """True where the CPU (``flags``, default this one's) computes bfloat16 natively (AVX512-BF16 or AMX);
    elsewhere bf16 is emulated."""
    flags = cpu_info()["flags"] if flags is None else flags  # type: ignore[assignment]
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def fp32_peak_gflops(info: Dict[str, object], threads: int) -> float:
    """Theoretical fp32 FMA peak of ``threads`` cores at the nominal clock.

    Per cycle: 2 FMA pipes × 2 FLOP × fp32 lanes. Lanes are 16 for AVX-512 on Intel; AMD Zen 4 runs
    AVX-512 on 256-bit pipes, so 8 there as for AVX2; 4 for SSE only. The clock is /proc/cpuinfo's
    (nominal; turbo makes the real peak higher, a VM may report the host's base clock)."""
    flags: Set[str] = info["flags"]  # type: ignore[assignment]
    if "avx512f" in flags and info["vendor"] == "GenuineIntel":
        lanes = 16
    elif "fma" in flags or "avx2" in flags:
        lanes = 8
    else:
        lanes = 4
    return threads * float(info["mhz"]) / 1e3 * 2 * 2 * lanes


def matmul_rate(dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 5,
                device: Union[str, torch.device] = "cpu") -> float:
    """Achieved GFLOP/s of an n×n matrix product in ``dtype`` on ``device`` (median of ``runs`` after a
    warm-up), with the threads torch has now."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    synchronize(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def synchronize(device: Union[str, torch.device]) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously; the CPU has nothing to wait for)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(threads: int) -> Dict[str, object]:
    """Everything a results table needs about the machine, measured now."""
    info = cpu_info()
    torch.set_num_threads(threads)
    flags: Set[str] = info["flags"]  # type: ignore[assignment]
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {
        "cpu": info["model"],
        "threads": threads,
        "simd": " ".join(simd),
        "native_bf16": has_bf16(flags),
        "fp32_gflops": matmul_rate(torch.float32),
        # Emulated bf16 (no native support) runs at ~1 GFLOP/s: a 512² product says as much in 0.3 s.
        "bf16_gflops": matmul_rate(torch.bfloat16, *((2048, 5) if has_bf16(flags) else (512, 1))),
        "bf16_n": 2048 if has_bf16(flags) else 512,
        "peak_fp32_gflops": fp32_peak_gflops(info, threads),
        "mhz": info["mhz"],
    }


# ---------------------------------------------------------------------------------------- memory
def reset_peak_memory(device: Union[str, torch.device] = "cpu") -> None:
    """Start a new memory peak on ``device``: CUDA's allocator statistics (its cache emptied first), or
    on the CPU the process's resident memory (``reset_peak_rss``)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def peak_memory_gib(device: Union[str, torch.device] = "cpu") -> float:
    """The peak since ``reset_peak_memory``: memory allocated by tensors on a CUDA device, or on the CPU
    the process's peak resident memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()


def rss_gib() -> float:
    """This process's resident memory now (VmRSS; NaN where there is no /proc)."""
    return _proc_status_gib("VmRSS:")


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM, which ``reset_peak_rss`` resets; else ``ru_maxrss``)."""
    peak = _proc_status_gib("VmHWM:")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_rss() -> None:
    """Start a new peak: hand the memory glibc keeps from freed blocks back to the OS, then reset VmHWM to
    the current resident memory (Linux), so the next peak is the next operation's own and not what an
    earlier, larger one left behind."""
    trim_heap()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def trim_heap() -> None:
    """``malloc_trim(0)``: return freed heap pages to the OS (glibc; nothing elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _proc_status_gib(field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 2**20
    return float("nan")
