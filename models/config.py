"""Model configurations: named presets, JSON files, and inference from a checkpoint's tensor shapes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import dataclass, fields
from typing import Dict, Mapping, Tuple

from torch import Tensor

from utils.errors import UserError

@dataclass(frozen=True)
class ModelConfig:
    """ICWEM's architecture; the defaults are the published models' (N 128, M 320, ~77 M parameters).

    The one place the defaults are written: ``ICWEM()`` builds this, the presets below are variations of
    it, and ``model.config`` / a checkpoint's ``model_config`` are its ``as_dict()``. Sequences are kept
    as tuples (frozen, hashable) and written out as lists, as JSON and the published files have them.
    See ``ICWEM``'s docstring for what each field means.
    """

    N: int = 128
    M: int = 320
    Z: int = 192
    num_slices: int = 5
    max_support_slices: int = 5
    depths: Tuple[int, ...] = (2, 2, 2, 2, 2, 2)
    head_dims: Tuple[int, ...] = (8, 16, 32, 32, 16, 8)
    window_size: int = 8
    hyper_window_size: int = 4
    hyper_head_dim: int = 32
    attn_dim: int = 128
    attn_head_dim: int = 16
    attn_window_size: int = 8
    param_hidden: Tuple[int, ...] = (224, 128)
    enh_channels: int = 64
    dense_growth: int = 32
    drop_path_rate: float = 0.0  # training only: stochastic depth, not part of a preset
    # Variable rate (models/variable_rate.py): K learned rate points (K >= 2) of a gain on y, per channel
    # ("channel") or one per point ("scalar"). 0: a fixed-rate model, every published and shipped one;
    # then neither field is written out (``as_dict``), so configurations, checkpoints and fingerprints
    # of fixed-rate models are what they were before the option existed.
    rate_points: int = 0
    rate_gain: str = "channel"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if self.M % self.num_slices:
            raise ValueError(f"M={self.M} is not divisible by num_slices={self.num_slices}")
        if self.rate_points and (self.rate_points < 2 or self.rate_gain not in ("channel", "scalar")):
            raise ValueError(f"rate_points must be 0 (fixed rate) or at least 2 with rate_gain 'channel' or "
                             f"'scalar', got {self.rate_points} and {self.rate_gain!r}")

    def as_dict(self, training: bool = True) -> dict:
        """Field by field in declaration order, sequences as lists; ``training=False`` leaves out
        ``drop_path_rate`` (the presets and published-shape inference describe the architecture only).
        A fixed-rate configuration leaves out the variable-rate fields."""
        skip = set() if training else {"drop_path_rate"}
        if not self.rate_points:
            skip |= {"rate_points", "rate_gain"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


_PRESET_CONFIGS: Dict[str, ModelConfig] = {
    # The published ICWEM models (~77 M parameters).
    "icwem": ModelConfig(),
    # The same architecture at half width (N = 64).
    "icwem-n64": ModelConfig(N=64),
    # The equivalence fixture's configuration: small enough for CPU tests and the demo.
    "tiny": ModelConfig(N=32, M=40, Z=32, attn_dim=32, param_hidden=(32, 16), enh_channels=16),
    # The shipped models: the published architecture at a quarter width with M, Z and the entropy networks
    # scaled alike, and feature-attention blocks narrowed for a CPU (their dense blocks at full resolution
    # cost 72 % of tiny's FLOPs at width 16 / growth 32; at 8 / 8 they cost a tenth of that).
    "small": ModelConfig(N=32, M=80, Z=48, attn_dim=32, param_hidden=(56, 32), enh_channels=8, dense_growth=8),
}
PRESETS: Dict[str, dict] = {name: cfg.as_dict(training=False) for name, cfg in _PRESET_CONFIGS.items()}

CONFIG_KEYS = frozenset(f.name for f in fields(ModelConfig))


def get_config(name_or_path: str) -> dict:
    """A preset by name (``icwem``, ``icwem-n64``, ``small``, ``tiny``) or the contents of a JSON file, as a dict."""
    if name_or_path in PRESETS:
        return json.loads(json.dumps(PRESETS[name_or_path]))  # a deep copy
    path = Path(name_or_path)
    if not path.is_file():
        raise UserError(f"unknown model config {name_or_path!r}: not a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read model config {path}: {exc}") from None
    return validate_config(cfg, source=str(path))


def validate_config(cfg: Mapping, source: str = "config") -> dict:
    """Reject unknown keys (a typo would otherwise silently build the default model)."""
    if not isinstance(cfg, Mapping):
        raise UserError(f"{source}: a model config must be a JSON object")
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown model config keys {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    return dict(cfg)


def _stage_depths(state_dict: Mapping[str, Tensor], prefix: str) -> list:
    """Number of TCBs between the resampling layers of an nn.Sequential transform (g_a, g_s)."""
    indexes = sorted({int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.(\d+)\.", k))})
    depths, run = [], 0
    for i in indexes[1:]:
        if f"{prefix}.{i}.conv1_1.weight" in state_dict:
            run += 1
        else:
            depths.append(run)
            run = 0
    return depths


def _heads(state_dict: Mapping[str, Tensor], key: str) -> int:
    return state_dict[key].shape[0]


def config_from_state_dict(sd: Mapping[str, Tensor]) -> dict:
    """Infer the architecture from tensor shapes (published checkpoints carry no configuration)."""
    try:
        N = sd["g_a.0.conv1.weight"].shape[0] // 2
        Z = sd["entropy_bottleneck.quantiles"].shape[0]
        num_slices = len({k.split(".")[1] for k in sd if k.startswith("cc_mean_transforms.")})
        in_last = sd[f"cc_mean_transforms.{num_slices - 1}.0.weight"].shape[1]
        M = sd["cc_mean_transforms.0.0.weight"].shape[1]
        slice_ch = M // num_slices
        support_last = (in_last - M) // slice_ch
        depths = _stage_depths(sd, "g_a") + _stage_depths(sd, "g_s")
        head_dims = []
        for prefix in ("g_a", "g_s"):
            for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".") and ".msa.relative" in k}):
                head_dims.append(N // _heads(sd, f"{prefix}.{i}.trans_block.msa.relative_position_params"))
        # One head width per stage (the first block of each stage speaks for it).
        stage_heads, start = [], 0
        for d in depths:
            stage_heads.append(head_dims[start] if d else 8)
            start += d
        rel = sd["g_a.1.trans_block.msa.relative_position_params"] if "g_a.1.trans_block.msa.relative_position_params" in sd else None
        hyper_rel = sd["h_a.1.trans_block.msa.relative_position_params"]
        attn_dim = sd["atten_mean.0.0.in_conv.weight"].shape[0]
        attn_rel = sd["atten_mean.0.0.non_local_block.block_1.msa.relative_position_params"]
        cfg = dict(
            N=N, M=M, Z=Z, num_slices=num_slices,
            max_support_slices=num_slices if support_last == num_slices - 1 else support_last,
            depths=depths, head_dims=stage_heads,
            window_size=(rel.shape[-1] + 1) // 2 if rel is not None else 8,
            hyper_window_size=(hyper_rel.shape[-1] + 1) // 2,
            hyper_head_dim=N // hyper_rel.shape[0],
            attn_dim=attn_dim,
            attn_head_dim=attn_dim // attn_rel.shape[0],
            attn_window_size=(attn_rel.shape[-1] + 1) // 2,
            param_hidden=[sd["cc_mean_transforms.0.0.weight"].shape[0], sd["cc_mean_transforms.0.2.weight"].shape[0]],
            enh_channels=sd["enh.forw_enh.layers.1.weight"].shape[0],
            dense_growth=sd["enh.forw_enh.layers.0.conv1.weight"].shape[0],
        )
        if "rate_gain.log_steps" in sd:  # a variable-rate model (models/variable_rate.py)
            cfg["rate_points"] = sd["rate_gain.log_steps"].shape[0] + 1
            cfg["rate_gain"] = "scalar" if sd["rate_gain.log_base"].shape[0] == 1 else "channel"
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise UserError(f"not an ICWEM state dict: cannot infer the configuration (missing or odd tensor {exc})") from None
    # The published models keep max_support_slices = 5 with 5 slices; any value >= num_slices - 1 is equivalent.
    if cfg["max_support_slices"] == num_slices and num_slices == PRESETS["icwem"]["num_slices"]:
        cfg["max_support_slices"] = PRESETS["icwem"]["max_support_slices"]
    return cfg
