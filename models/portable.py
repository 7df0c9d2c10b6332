"""Portable entropy coding: the coder's inputs come out the same on every machine.

rANS decodes a symbol only with the exact table the encoder used. The table of each latent element is
chosen by its scale σ (an index into the scale table), and σ comes out of float networks whose last
bits depend on the machine: thread count, oneDNN on or off, AVX2 or AVX-512 kernels, CPU or CUDA. A σ
that lands on the other side of a table boundary on the decoder's machine desynchronises the stream.
So everything that decides the coder's inputs is computed here, the same way everywhere:

* **Entropy parameters in float64.** ``parameter_nets(model, device)`` is a float64 copy of the
  networks between ẑ and the coder (``h_mean_s``, ``h_scale_s``, the SWAtten blocks, the mean / scale /
  LRP networks), on the CPU, or on the model's GPU where that computes float64 faster than the CPU
  (``parameter_device``). ``compress`` and ``decompress`` run the channel-wise loop with it; the main
  transforms keep their dtype and device. Measured across thread counts, oneDNN and SIMD kernels
  (``benchmarks/portability.py sigma``), float32 σ move by up to 2.6e-4 relative and float64 σ by up
  to 4.5e-13, so a flip needs σ within ~1e-13 of a boundary instead of ~1e-4 (docs/portability.md
  has the numbers and the expected flip rate). A GPU's float64 differs from a CPU's by rounding, as two
  CPUs' do: the files are the same portable files. The forward pass (training, estimates) is untouched.
* **Pinned scale table.** CompressAI computes its 64 scales with float32 ``exp(linspace(...))`` on
  the machine at hand; we pin the values (``SCALE_TABLE``) so every machine compares σ with the same
  boundaries, and the comparison σ (float64) ≤ s (float32, exact in float64) is exact.
* **Coder tables (CDFs) from float64 pmfs**, quantised by CompressAI's own ``pmf_to_quantized_cdf``, so
  that a last-bit difference in a float32 pmf cannot move a CDF entry on another machine.

The file format adds a check over the symbols and indexes the decoder rebuilds (utils/codec.py), so a
decode that still diverged would end in an error, never in a silently wrong picture.
"""

from __future__ import annotations

import copy
import math
import time
import weakref
import zlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.stats
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import get_scale_table
from torch import Tensor, nn
from torch.nn import functional as F

# The networks between ẑ and the entropy coder: what decides the symbols' tables.
PARAMETER_NETS = (
    "h_mean_s", "h_scale_s", "atten_mean", "atten_scale", "cc_mean_transforms", "cc_scale_transforms", "lrp_transforms",
)
PORTABLE_DTYPE = torch.float64
# The last slice's mean side: its μ and LRP decide no index (see ParameterNets), so it keeps the model's precision.
LAST_MEAN_NETS = ("atten_mean", "cc_mean_transforms", "lrp_transforms")

# CompressAI's default table (64 scales, log-spaced from 0.11 to 256) as little-endian float32, pinned.
# get_scale_table() computes it with float32 exp on the machine at hand, and its last bits differ between
# machines: on one AMD EPYC, ATEN_CPU_CAPABILITY=default and =avx2 disagree on 10 of the 64 entries. These
# are its AVX2 values (those the repository's fixtures and earlier files were coded with).
SCALE_TABLE: Tuple[float, ...] = tuple(
    float(v)
    for v in np.frombuffer(
        bytes.fromhex(
            "ae47e13d93c7fe3d3012103ec7ef223ec845383e0467503e24b16b3e0a47853ecdba963e9a77aa3e0ecac03eca08da3e"
            "cc95f63ef26f0b3f34b21d3f8958323f18b3493f861c643fabfd803fbde1913f07fca43faf96ba3f8f05d33f7ca7ee3f"
            "dcf30640c79f1840169c2c405c36434051c65c402faf794097308d4098ad9f405b96b4400e3ccc4078fae640b19c0241"
            "1bb71341dd0e274107ef3c4183ac554158a7714110a68841d88a9a4174c7ae4171aac541a98cdf418bd2fc41ddf60e42"
            "59af214265db364230cd4e42a0e16942f0408442639295425d28a942ec4ebf42065cd842deb0f442bd5d0a43187c1c43"
            "cef9304372264843eb5b624300008043"
        ),
        dtype="<f4",
    )
)


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

    def __init__(self, model: nn.Module, native_last_mean: bool = True,
                 device: Union[str, torch.device] = "cpu") -> None:
        super().__init__()
        device = torch.device(device)
        for name in PARAMETER_NETS:
            setattr(self, name, copy.deepcopy(getattr(model, name)).to(device, PORTABLE_DTYPE))
        if native_last_mean:
            for name in LAST_MEAN_NETS:
                own = getattr(model, name)[-1]
                here = own if next(own.parameters()).device == device else copy.deepcopy(own).to(device)
                getattr(self, name)[-1] = _Native(here)
        self.requires_grad_(False)
        self.eval()

    def hyper_synthesis(self, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        return self.h_mean_s(z_hat), self.h_scale_s(z_hat)


class _Native(nn.Module):
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


# ---------------------------------------------------------------------------------------- coder tables
def update_tables(model: nn.Module, force: bool = False, update_quantiles: bool = False) -> bool:
    """Build every entropy model's CDF tables from float64 pmfs (CompressAI's ``update``, made portable)."""
    updated = False
    for module in model.modules():
        if isinstance(module, EntropyBottleneck):
            updated |= _update_bottleneck(module, force, update_quantiles)
        elif isinstance(module, GaussianConditional):
            updated |= _update_gaussian(module, force)
    return updated


def _update_bottleneck(eb: EntropyBottleneck, force: bool, update_quantiles: bool) -> bool:
    if eb._offset.numel() > 0 and not force:
        return False
    if update_quantiles:
        eb._update_quantiles()
    # CompressAI's own table code, run on a float64 copy; only the integer results come back.
    with torch.inference_mode(False), torch.no_grad():
        twin = copy.deepcopy(eb).to("cpu", PORTABLE_DTYPE)
        twin.update(force=True)
    device = eb.quantiles.device
    eb._offset = twin._offset.to(device)
    eb._quantized_cdf = twin._quantized_cdf.to(device)
    eb._cdf_length = twin._cdf_length.to(device)
    return True


def _update_gaussian(gc: GaussianConditional, force: bool) -> bool:
    """CompressAI's ``GaussianConditional.update`` on the pinned table, with its pmfs in float64."""
    if gc._offset.numel() > 0 and not force:
        return False
    table = torch.tensor(SCALE_TABLE, dtype=PORTABLE_DTYPE)
    multiplier = -float(scipy.stats.norm.ppf(gc.tail_mass / 2))
    pmf_center = torch.ceil(table * multiplier).int()
    pmf_length = 2 * pmf_center + 1
    max_length = int(pmf_length.max())
    samples = torch.abs(torch.arange(max_length).int() - pmf_center[:, None]).to(PORTABLE_DTYPE)
    scales = table[:, None]
    upper = _standardized_cumulative((0.5 - samples) / scales)
    lower = _standardized_cumulative((-0.5 - samples) / scales)
    pmf = upper - lower
    tail_mass = 2 * lower[:, :1]
    device = gc.scale_bound.device
    gc.scale_table = table.to(device, torch.float32)
    gc._quantized_cdf = gc._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length).to(device)
    gc._offset = (-pmf_center).to(device)
    gc._cdf_length = (pmf_length + 2).to(device)
    return True


def _standardized_cumulative(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-(2**-0.5) * x)


def legacy_coders(model: nn.Module) -> Tuple[EntropyBottleneck, GaussianConditional]:
    """Copies of the model's entropy models with CompressAI's own float32 tables (the default scale
    table computed here): what format-version-1 files were coded with, before the portable tables."""
    token = tuple((p.data_ptr(), p._version) for p in model.entropy_bottleneck.parameters())
    cached = _LEGACY.get(model)
    if cached is None or cached[0] != token:
        with torch.inference_mode(False), torch.no_grad():
            eb = copy.deepcopy(model.entropy_bottleneck)
            eb.update(force=True)
            gc = GaussianConditional(None).to(model.entropy_bottleneck.quantiles.device)
            gc.update_scale_table(get_scale_table())
        cached = _LEGACY[model] = (token, (eb, gc))
    return cached[1]


_LEGACY: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, tuple]]" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------- decode check
class ForeignStrings(ValueError):
    """Strings this model's coder cannot have written, such as the original implementation's (and format
    version 1's), which ``decompress(..., legacy=True)`` reads. Read with the wrong tables they
    desynchronise at once: ŷ of 1e8 to 1e13 and a picture of NaN (measured on the shipped models)."""


LEGACY_HINT = "the original implementation's strings (.icwem format version 1) are read with decompress(..., legacy=True)"


def check_z_strings(eb: EntropyBottleneck, z_hat: Tensor, strings: Sequence[bytes]) -> None:
    """Raise ``ForeignStrings`` unless each z string is exactly what ``eb`` writes for the ẑ it decoded to.

    rANS coding is deterministic, so a string this coder wrote re-encodes to itself. One written with
    other tables (CompressAI's float32 ones differ from ours in a few entries) decodes to other symbols,
    which re-encode to other bytes. z has a sixteenth of y's positions, so the check costs little, and
    it fails before any of y is decoded.
    """
    for b, (string, again) in enumerate(zip(strings, eb.compress(z_hat))):
        if again != string:
            raise ForeignStrings(
                f"z string {b} ({len(string)} bytes) is not what this model's coder writes for the symbols it "
                f"decodes to (other coder tables, or damaged); {LEGACY_HINT}"
            )


class CoderCheck:
    """CRC-32 of what the decoder must rebuild for one image: z's symbols, then y's symbols and scale
    indexes (slice order, C order within a slice), each as little-endian int32.

    Built slice by slice as the slices are coded, so that no whole-latent list of symbols has to be
    kept: symbols enter the CRC at once, and indexes (0..63) wait as one byte each until ``value``.
    """

    def __init__(self, z_symbols: Tensor) -> None:
        self._crc = _crc_int32(z_symbols, 0)
        self._indexes: List[Tensor] = []

    def add(self, symbols: Tensor, indexes: Tensor) -> None:
        self._crc = _crc_int32(symbols, self._crc)
        self._indexes.append(indexes.detach().to("cpu", torch.uint8))

    def value(self) -> int:
        crc = self._crc
        for part in self._indexes:
            crc = _crc_int32(part, crc)
        return crc


def _crc_int32(part: Tensor, crc: int) -> int:
    return zlib.crc32(np.ascontiguousarray(part.detach().cpu().numpy(), dtype="<i4").tobytes(), crc)


def z_symbols(eb: EntropyBottleneck, z_hat: Tensor) -> Tensor:
    """The integer symbols behind a dequantised ẑ (ẑ = symbol + median, so this is exact)."""
    return torch.round(z_hat - eb._get_medians().detach()).to(torch.int32)


def scale_indexes(sigma: Tensor, bound: float = SCALE_TABLE[0]) -> Tensor:
    """CompressAI's ``GaussianConditional.build_indexes`` on the pinned table: the number of table
    entries (but the last) strictly below max(σ, bound). Comparisons are exact in σ's dtype."""
    table = torch.tensor(SCALE_TABLE[:-1], dtype=sigma.dtype, device=sigma.device)
    return torch.searchsorted(table, sigma.clamp_min(bound).contiguous(), side="left").to(torch.int32)
