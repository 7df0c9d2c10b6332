"""Choosing the device from the scripts' ``--cuda`` / ``--device`` flags: one rule for every script; what
a CPU computes natively; the TF32 policy (``docs/cuda.md``)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from .errors import UserError


def select_device(cuda: bool, device: Optional[str] = None, *, doing: str = "running", warn: bool = True) -> torch.device:
    """``device`` if given, else CUDA with ``cuda`` (the CPU, with a warning, if there is none).

    ``doing`` completes the warning ("... CUDA is not available; <doing> on the CPU") so that each
    script's message stays what its users know; ``warn=False`` keeps the other ranks of a run quiet.
    """
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise UserError(f"--device: not a device: {device!r} (try cpu, cuda, cuda:1)") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        return chosen
    if cuda and torch.cuda.is_available():
        return torch.device("cuda")
    if cuda and warn:
        print(f"warning: --cuda given but CUDA is not available; {doing} on the CPU", file=sys.stderr)
    return torch.device("cpu")


# The /proc/cpuinfo flags of a CPU that computes each 16-bit type natively (elsewhere PyTorch emulates it).
_NATIVE_FLAGS = {"bf16": {"avx512_bf16", "amx_bf16"}, "fp16": {"avx512_fp16", "amx_fp16"}}


def cpu_computes_natively(kind: str) -> bool:
    """Whether this CPU computes ``kind`` ("bf16" or "fp16") natively: AVX512-BF16 or AMX for bf16,
    AVX512-FP16 or AMX-FP16 for fp16 (Linux /proc/cpuinfo flags; False where there is no such file).
    Elsewhere the type is emulated, several times slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool(_NATIVE_FLAGS[kind] & set(flags))


def _tf32_switches() -> list:
    """(namespace, attribute, TF32 value, full-float32 value) for CUDA matmuls and cuDNN convolutions:
    PyTorch's ``fp32_precision`` settings where it has them (2.9 and later; it refuses a mix of these and
    the older flags), else the older ``allow_tf32`` flags."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        return [(torch.backends.cuda.matmul, "fp32_precision", "tf32", "ieee"),
                (torch.backends.cudnn.conv, "fp32_precision", "tf32", "ieee")]
    return [(torch.backends.cuda.matmul, "allow_tf32", True, False), (torch.backends.cudnn, "allow_tf32", True, False)]


def set_tf32(allowed: bool) -> None:
    """Let CUDA's float32 matmuls and convolutions use TF32 (Ampere and later: products of 10-bit
    mantissas, summed in float32), or not. Our policy: training allows it, coding and evaluation do
    not (``full_float32``). It never touches the CPU, nor float64 (the portable entropy parameters)."""
    for namespace, name, tf32, ieee in _tf32_switches():
        setattr(namespace, name, tf32 if allowed else ieee)


@contextmanager
def full_float32() -> Iterator[None]:
    """CUDA float32 without TF32 inside (coding, evaluation): a GPU's pictures then differ from a CPU's
    by float32 rounding only, as between two CPUs; the settings before are restored on leaving."""
    switches = _tf32_switches()
    before = [getattr(namespace, name) for namespace, name, _, _ in switches]
    set_tf32(False)
    try:
        yield
    finally:
        for (namespace, name, _, _), value in zip(switches, before):
            setattr(namespace, name, value)
