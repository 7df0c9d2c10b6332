"""The coder's tables: pinned scales and CDFs that are the same on every machine.

* **Pinned scale table.** CompressAI computes its 64 scales with float32 ``exp(linspace(...))`` on
  the machine at hand; we pin the values (``SCALE_TABLE``) so every machine compares σ with the same
  boundaries, and the comparison σ (float64) ≤ s (float32, exact in float64) is exact.
* **Coder tables (CDFs) from float64 pmfs**, quantised by CompressAI's own ``pmf_to_quantized_cdf``, so
  that a last-bit difference in a float32 pmf cannot move a CDF entry on another machine.

``legacy_coders`` keeps CompressAI's own float32 tables for strings coded with them (the original
implementation's).
"""

from __future__ import annotations

import copy
import weakref
from typing import List, Tuple

import numpy as np
import scipy.stats
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import get_scale_table
from torch import Tensor, nn

from .parameters import PORTABLE_DTYPE

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
    table computed here): what the original implementation coded with, before the portable tables."""
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


def scale_indexes(sigma: Tensor, bound: float = SCALE_TABLE[0]) -> Tensor:
    """CompressAI's ``GaussianConditional.build_indexes`` on the pinned table: the number of table
    entries (but the last) strictly below max(σ, bound). Comparisons are exact in σ's dtype."""
    table = torch.tensor(SCALE_TABLE[:-1], dtype=sigma.dtype, device=sigma.device)
    return torch.searchsorted(table, sigma.clamp_min(bound).contiguous(), side="left").to(torch.int32)


def rans_tables(gc: GaussianConditional) -> Tuple[List[List[int]], List[int], List[int]]:
    """``gc``'s tables as CompressAI's rANS coder takes them: (cdfs, cdf lengths, offsets)."""
    if gc._offset.numel() == 0:
        raise RuntimeError("entropy coder tables are empty: call model.update() before compress/decompress")
    return gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(), gc.offset.reshape(-1).int().tolist()
