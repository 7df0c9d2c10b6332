"""Load published or self-trained checkpoints into ICWEM, with clear errors for files that do not fit."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from utils.errors import UserError

from .config import config_from_state_dict, validate_config
from .icwem import ICWEM
from .variable_rate import check_lambdas
from .zoo import resolve_checkpoint


def read_checkpoint(path: Union[str, Path], map_location="cpu") -> dict:
    """``torch.load(weights_only=True)`` with user-facing errors; always returns a dict.

    ``path`` may also name a shipped model (``icwem-small-q3``, see ``models/zoo.py``).
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message goes on to suggest weights_only=False, i.e. running the file's code.
        raise UserError(
            f"cannot read checkpoint {path}: not a checkpoint of plain tensors (it is another kind of file, "
            "or it holds Python objects that safe loading refuses)"
        ) from None
    except (EOFError, zipfile.BadZipFile):
        raise UserError(f"cannot read checkpoint {path}: the file is empty or truncated") from None
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler
        text = " ".join(str(exc).split()).split(". ")[0] or type(exc).__name__
        raise UserError(f"cannot read checkpoint {path}: not a readable PyTorch checkpoint ({text})") from None
    if not isinstance(obj, dict):
        raise UserError(f"cannot read checkpoint {path}: expected a dict, found {type(obj).__name__}")
    return obj


# What a weights file derived from a checkpoint (an average, an entropy stage) carries over from it.
CARRIED_FIELDS = ("model_config", "args", "lambda", "lambdas", "step", "epoch")


def split_checkpoint(obj: Mapping) -> Tuple[Dict[str, Tensor], Optional[dict]]:
    """Return (state dict without ``module.`` prefixes, stored model config or None).

    Accepts the published layout (``{"state_dict": ...}``, possibly DataParallel-prefixed), our
    training checkpoints (which add ``model_config``) and a bare state dict.
    """
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise UserError("checkpoint holds no state dict of tensors")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    cfg = obj.get("model_config") if "state_dict" in obj else None
    return sd, cfg


def _mismatch_message(model: ICWEM, sd: Mapping[str, Tensor]) -> Optional[str]:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    tables = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if sd[k].shape != expected[k].shape and not k.endswith(tables)
    )
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape conflicts", shapes)):
        if items:
            shown = ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    return "; ".join(parts) or None


def model_from_state_dict(sd: Mapping[str, Tensor], config: Optional[Mapping] = None) -> ICWEM:
    """Build ICWEM from a state dict (config given or inferred) and load it strictly."""
    cfg = validate_config(config, "checkpoint model_config") if config is not None else config_from_state_dict(sd)
    model = ICWEM(**cfg)
    problem = _mismatch_message(model, sd)
    if problem:
        raise UserError(f"checkpoint does not fit ICWEM{'' if config else ' (configuration inferred from shapes)'}: {problem}")
    model.load_state_dict(dict(sd), strict=True)
    return model


def variable_rate_from_fixed(sd: Mapping[str, Tensor], config: Mapping, lambdas, reference: float) -> ICWEM:
    """A variable-rate model (``config`` with ``rate_points`` = len(``lambdas``)) holding a fixed-rate
    state dict's weights, its gains set to sqrt(λ_k / ``reference``): the λ the weights were trained
    for gets gain 1, their own quantiser (models/variable_rate.py). Every other key must fit exactly."""
    lambdas = check_lambdas(lambdas)
    model = ICWEM(**validate_config(config, "model config"))
    if model.rate_points != len(lambdas):
        raise UserError(f"{len(lambdas)} λs for a model of {model.rate_points} rate points")
    fixed_rate = ICWEM(**{k: v for k, v in model.config.items() if k not in ("rate_points", "rate_gain")})
    problem = _mismatch_message(fixed_rate, sd)
    if problem:
        raise UserError(f"checkpoint does not fit ICWEM: {problem}")
    del fixed_rate
    missing, unexpected = model.load_state_dict(dict(sd), strict=False)
    assert not unexpected and all(k.startswith("rate_gain.") for k in missing), (missing, unexpected)
    model.rate_gain.init_from_lambdas(lambdas, reference)
    return model


def trained_lambda(obj: Mapping) -> Optional[float]:
    """The MSE λ a checkpoint was trained for: a shipped file's ``lambda``, a training checkpoint's
    ``args["lmbda"]`` (unless it trained for MS-SSIM, whose λ weighs another distortion, or for a
    range of λs, ``args["lambdas"]``: a variable-rate model); else None."""
    args = obj.get("args") if isinstance(obj.get("args"), Mapping) else {}
    if args.get("lambdas"):
        return None
    value = obj.get("lambda", args.get("lmbda") if args.get("type", "mse") == "mse" else None)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None  # NaN (a shipped file without one) fails the comparison too


def trained_lambdas(obj: Mapping) -> Optional[List[float]]:
    """The MSE λs of a variable-rate checkpoint's rate points (a shipped file's ``lambdas``, a training
    checkpoint's ``args["lambdas"]``), lowest rate first; else None."""
    args = obj.get("args") if isinstance(obj.get("args"), Mapping) else {}
    if args.get("type", "mse") != "mse":
        return None
    try:
        return check_lambdas(obj.get("lambdas", args.get("lambdas")) or [])
    except (TypeError, ValueError):
        return None


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> ICWEM:
    """Load a checkpoint file into an ICWEM in eval mode with its entropy-coder tables rebuilt (and
    ``lmbda``, the λ it was trained for, or a variable-rate model's ``lambdas``, where the file records
    them)."""
    obj = read_checkpoint(path, map_location)
    sd, cfg = split_checkpoint(obj)
    try:
        model = model_from_state_dict(sd, cfg)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    model = model.to(map_location) if isinstance(map_location, (str, torch.device)) else model
    model.eval()
    model.update(force=True)
    model.lmbda = trained_lambda(obj)
    lambdas = trained_lambdas(obj) if model.rate_points else None
    model.lambdas = lambdas if lambdas and len(lambdas) == model.rate_points else None
    return model
