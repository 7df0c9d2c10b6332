"""Portable entropy parameters: μ and σ come out the same on every machine.

rANS decodes a symbol only with the exact table the encoder used. The table of each latent element is
chosen by its scale σ (an index into the scale table, ``tables.py``), and σ comes out of float networks
whose last bits depend on the machine: thread count, oneDNN on or off, AVX2 or AVX-512 kernels, CPU or
CUDA. A σ that lands on the other side of a table boundary on the decoder's machine desynchronises the
stream. So ``compress`` and ``decompress`` compute σ with ``parameter_nets(model, device)``: a float64
copy of the networks between ẑ and the coder (``h_mean_s``, ``h_scale_s``, the SWAtten blocks, the
mean / scale / LRP networks), on the CPU, or on the model's GPU where that computes float64 faster than
the CPU (``parameter_device``); the main transforms keep their dtype and device. Measured across thread
counts, oneDNN and SIMD kernels (``benchmarks/portability.py sigma``), float32 σ move by up to 2.6e-4
relative and float64 σ by up to 4.5e-13, so a flip needs σ within ~1e-13 of a boundary instead of
~1e-4 (docs/portability.md has the numbers and the expected flip rate). A GPU's float64 differs from a
CPU's by rounding, as two CPUs' do: the files are the same portable files. The forward pass (training,
estimates) is untouched.
"""

from __future__ import annotations

import copy
import math
import time
import weakref
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor, nn

from ..tiling import Stage, before, then
from torch.nn import functional as F

# The networks between ẑ and the entropy coder: what decides the symbols' tables.
PARAMETER_NETS = (
    "h_mean_s", "h_scale_s", "atten_mean", "atten_scale", "cc_mean_transforms", "cc_scale_transforms", "lrp_transforms",
)
PORTABLE_DTYPE = torch.float64
# The last slice's mean side: its μ and LRP decide no index (see ParameterNets), so it keeps the model's precision.
LAST_MEAN_NETS = ("atten_mean", "cc_mean_transforms", "lrp_transforms")

# ---------------------------------------------------------------------------------------- networks
class ParameterNets(nn.Module):
    """A float64 copy of a model's entropy-parameter networks on ``device``, with the model's attribute
    names, so ``ICWEM._code_slices`` runs on it unchanged.

    One exception, by what decides the coder's inputs: the last slice's mean side (its SWAtten,
    mean and LRP networks) runs in the model's own dtype: the model's own networks where they are on
    ``device``, else a copy of them there (a model on a GPU coding on the CPU: no trips between the
    two). Its μ and LRP reach only ŷ of the last slice, which conditions no later slice and goes to g_s;
    the decoder's symbols depend on σ alone (its indexes). So they move no index on any machine, and
    their float32 rounding reaches only the picture, like g_s's own. This saves about a seventh of
    the float64 work (``benchmarks/portability.py cost`` measures the path with and without it).
    """

    def __init__(self, model: nn.Module, device: Union[str, torch.device] = "cpu") -> None:
        super().__init__()
        device = torch.device(device)
        for name in PARAMETER_NETS:
            setattr(self, name, copy.deepcopy(getattr(model, name)).to(device, PORTABLE_DTYPE))
        for name in LAST_MEAN_NETS:
            own = getattr(model, name)[-1]
            here = own if next(own.parameters()).device == device else copy.deepcopy(own).to(device)
            getattr(self, name)[-1] = NativeNet(here)
        self.requires_grad_(False)
        self.eval()

    def hyper_synthesis(self, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        return self.h_mean_s(z_hat), self.h_scale_s(z_hat)


class NativeNet(nn.Module):
    """Runs a network in its own dtype (the model's own network, or its copy on the device of the
    float64 path) on float64 inputs and hands back float64 outputs. Held outside the module tree, so
    ``.to()`` leaves it alone."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._net = [net]

    @property
    def net(self) -> nn.Module:
        return self._net[0]

    def inward(self, x: Tensor) -> Tensor:
        weight = next(self.net.parameters())
        return x.to(weight.device, weight.dtype)

    @staticmethod
    def outward(x: Tensor) -> Tensor:
        return x.to(PORTABLE_DTYPE)

    def forward(self, x: Tensor) -> Tensor:
        return self.outward(self.net(self.inward(x)))

    def stages(self) -> List[Stage]:
        """The network's own stages, taking and giving float64 maps."""
        stages = self.net.stages()
        stages[0] = before(stages[0], self.inward)
        stages[-1] = then(stages[-1], self.outward)
        return stages


# Per model, its float64 copies by device, each with the weights token it was built from.
_NETS: "weakref.WeakKeyDictionary[nn.Module, Dict[torch.device, Tuple[tuple, ParameterNets]]]" = (
    weakref.WeakKeyDictionary())


def _weights_token(model: nn.Module) -> tuple:
    """Changes whenever a weight of the parameter networks is replaced or updated in place."""
    return tuple((p.data_ptr(), p._version, p.dtype) for name in PARAMETER_NETS for p in getattr(model, name).parameters())


def parameter_nets(model: nn.Module, device: Union[str, torch.device] = "cpu") -> ParameterNets:
    """The float64 copy of ``model``'s entropy-parameter networks on ``device``, rebuilt when its weights change."""
    device = torch.device(device)
    token = _weights_token(model)
    copies = _NETS.setdefault(model, {})
    cached = copies.get(device)
    if cached is None or cached[0] != token:
        # Built outside inference mode: the copy must stay usable after an inference_mode block ends.
        with torch.inference_mode(False), torch.no_grad():
            cached = (token, ParameterNets(model, device=device))
        copies[device] = cached
    return cached[1]


def release_parameter_nets(model: nn.Module) -> None:
    """Drop ``model``'s float64 copies (the next ``parameter_nets`` call builds one again)."""
    _NETS.pop(model, None)


# ---------------------------------------------------------------------------------------- where
def parameter_device(device: Union[str, torch.device]) -> torch.device:
    """Where coding runs the float64 parameter networks for a model on ``device``: the CPU, or the
    model's GPU where float64 convolution is faster there than on this CPU with its threads (measured
    once per GPU, ``_float64_faster``): datacenter GPUs compute float64 at half their float32 rate,
    consumer ones at 1/32 to 1/64. The choice is one of speed only: the parameters are float64 either
    way, and the file the same portable file."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.device("cpu")
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _FLOAT64_FASTER:
        _FLOAT64_FASTER[device] = _float64_seconds(device) < _float64_seconds(torch.device("cpu"))
    return device if _FLOAT64_FASTER[device] else torch.device("cpu")


_FLOAT64_FASTER: Dict[torch.device, bool] = {}


def _float64_seconds(device: torch.device, repeats: int = 4) -> float:
    """Best time of a float64 3×3 convolution shaped like the slice networks' (192 → 192 channels on a
    16×16 latent, 0.17 GFLOP: tens of milliseconds on a CPU thread), the first run included as warm-up."""
    with torch.inference_mode(False), torch.no_grad():
        x = torch.randn(1, 192, 16, 16, dtype=PORTABLE_DTYPE, device=device)
        weight = torch.randn(192, 192, 3, 3, dtype=PORTABLE_DTYPE, device=device)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            F.conv2d(x, weight, padding=1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best


