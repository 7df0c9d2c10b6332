"""Turn training checkpoints into the shipped models: float16 weights in models/weights/ and their manifest.

    python tools/ship_weights.py RUN/0.0035/checkpoint_best.pth.tar RUN/0.0067/... --name icwem-small

Give the checkpoints lowest rate first: they become quality 1, 2, … Each file holds the state dict with
every weight rounded to float16 and the buffers as they are (constants such as the likelihood bound 1e-9
and GDN's pedestal 2^-36 would round to 0 in float16), the model configuration, λ and the training step.
The manifest records the fingerprint of the model *as loaded from the rounded file* (the one bitstreams
name) and the file's SHA-256. A shipped model's name keeps that file's bytes (and so its fingerprint): in
its own place (``icwem-small-q2`` as the second argument) nothing changes, so one rate point can be
replaced; in another place the file moves to that quality, so a new lowest point can shift the others up:

    python tools/ship_weights.py icwem-small-q1 icwem-small-q2 RUN/0.013/checkpoint_best.pth.tar …
    python tools/ship_weights.py RUN/0.0003/checkpoint_latest.pth.tar icwem-small-q1 icwem-small-q2 …

A variable-rate training checkpoint (``train.py --lambdas``) ships beside the fixed-rate files as
``<name>-vr``: its manifest entry has ``rate_points`` and ``lambdas`` instead of a quality, and a pinned
measurement per rate point (``checks``). ``codec.py encode --quality Q`` then takes any Q in [1, K] from
it, and the fixed-rate files stay so that the files they wrote still decode:

    python tools/ship_weights.py icwem-small-q1 icwem-small-q2 icwem-small-q3 icwem-small-q4 \
        --variable-rate RUN/0.0003-0.15/checkpoint_latest.pth.tar
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Collection, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import load_checkpoint, read_checkpoint, split_checkpoint  # noqa: E402
from models.checkpoint import model_from_state_dict, trained_lambda  # noqa: E402
from models.zoo import MANIFEST, WEIGHTS_DIR, shipped_models, shipped_path  # noqa: E402
from tools.demo_steps import load_photo  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.evaluation.measure import measure_image  # noqa: E402

# The model card's pinned measurement: a held-out crop (never trained on) coded into a real bitstream. The
# suite codes it again and compares (tests/test_shipped.py): a change that moves the shipped models' bytes
# or pictures shows there.
CHECK_PHOTO, CHECK_CROP = "chelsea", (22, 97, 256, 256)  # top, left, height, width: the centre 256x256


def check_crop() -> np.ndarray:
    top, left, height, width = CHECK_CROP
    return load_photo(CHECK_PHOTO)[top:top + height, left:left + width]


def measure_check(model, quality: Optional[float] = None) -> dict:
    """The pinned measurement of one model (at a variable-rate model's ``quality``): bpp of the real file
    and PSNR of its decoding."""
    fields, _ = measure_image(model, check_crop(), real=True, quality=quality)
    rate = {} if quality is None else {"quality": quality}
    return {**rate, "photo": CHECK_PHOTO, "crop": list(CHECK_CROP), "bpp": fields["bpp"], "psnr": fields["psnr"]}


def write_half(path: str, out: Path, variable_rate: bool) -> dict:
    """Write training checkpoint ``path`` (a variable-rate one if ``variable_rate``, else a fixed-rate one)
    as a shipped float16 file ``out``; returns what the manifest says of it: λ (or a variable-rate model's
    λs and rate points), fingerprint, SHA-256 and size."""
    ckpt = read_checkpoint(path)
    state_dict, config = split_checkpoint(ckpt)
    if config is None:
        raise UserError(f"{path}: not one of our training checkpoints (no model_config)")
    args = ckpt.get("args", {})
    if bool(args.get("lambdas")) != variable_rate:  # before anything is written
        raise UserError(f"{path}: a variable-rate checkpoint; ship it with --variable-rate" if args.get("lambdas") else
                        f"--variable-rate {path}: a fixed-rate checkpoint (it was trained for one λ)")
    rate = ({"lambdas": [float(v) for v in args["lambdas"]]} if variable_rate
            else {"lambda": float(trained_lambda(ckpt) or float("nan"))})
    buffers = {key for key, _ in model_from_state_dict(state_dict, config).named_buffers()}
    torch.save({"state_dict": half_state_dict(state_dict, buffers), "model_config": config, **rate,
                "step": ckpt.get("step"), "epoch": ckpt.get("epoch")}, out,
               # The zip format pads each of the ~1,600 tensors to 64 bytes: 0.25 MB more per file.
               _use_new_zipfile_serialization=False)
    model = load_checkpoint(out)  # the shipped model is the rounded one
    if "lambdas" in rate:
        if model.lambdas is None:
            raise UserError(f"{path}: a variable-rate model of {model.rate_points} rate points with λs {rate['lambdas']}")
        rate["rate_points"] = model.rate_points
    return {**rate, "file": out.name, "fingerprint": model.fingerprint().hex(),
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "bytes": out.stat().st_size}


def ship_variable_rate(path: str, name: str, shipped: dict) -> dict:
    """The manifest entry of the variable-rate file ``name``: ``path`` written as it (or, if ``path`` is that
    shipped name, the file kept), measured at each of its rate points."""
    out = WEIGHTS_DIR / f"{name}.pt"
    if path == name and name in shipped:
        entry = {k: v for k, v in shipped[name].items() if k != "checks"}
    elif path in shipped:
        raise UserError(f"--variable-rate {path}: a shipped variable-rate model is kept under its own name only")
    else:
        entry = {"name": name, **write_half(path, out, variable_rate=True)}
    model = load_checkpoint(out)
    entry["checks"] = [measure_check(model, float(q)) for q in range(1, model.rate_points + 1)]
    print(f"{out}: variable rate, {model.rate_points} rate points, λ {entry['lambdas']}, "
          f"{entry['bytes'] / 1e6:.2f} MB, fingerprint {entry['fingerprint']}")
    return entry


def half_state_dict(state_dict: dict, keep: Collection[str] = ()) -> dict:
    """Floating-point tensors as float16, except those named in ``keep``; integer tensors unchanged."""
    return {k: (v.half() if v.is_floating_point() and k not in keep else v).contiguous() for k, v in state_dict.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="training checkpoints, lowest rate first")
    p.add_argument("--name", default="icwem-small", help="file and model name prefix")
    p.add_argument("--variable-rate", metavar="CHECKPOINT",
                   help="also ship this variable-rate checkpoint as <name>-vr (or keep it: --variable-rate <name>-vr)")
    args = p.parse_args(argv)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    entries = []
    shipped = {entry["name"]: entry for entry in shipped_models()}
    # Shipped files given as sources are read before any file is written (q1 may move to q2 while q1 is rewritten).
    moving = {path: shipped_path(shipped[path]).read_bytes() for path in args.checkpoints if path in shipped}
    for quality, path in enumerate(args.checkpoints, start=1):
        name = f"{args.name}-q{quality}"
        out = WEIGHTS_DIR / f"{name}.pt"
        if path in shipped and shipped[path].get("rate_points"):
            raise UserError(f"{path}: the shipped variable-rate model; keep it with --variable-rate {path}")
        if path in shipped:
            if path != name:
                out.write_bytes(moving[path])
            entries.append({**shipped[path], "name": name, "quality": quality, "file": out.name,
                            "check": measure_check(load_checkpoint(out))})
            print(f"{out}: {'kept' if path == name else 'moved from ' + path} (fingerprint {shipped[path]['fingerprint']})")
            continue
        written = write_half(path, out, variable_rate=False)
        entries.append({"name": name, "quality": quality, **written, "check": measure_check(load_checkpoint(out))})
        print(f"{out}: quality {quality}, lambda {written['lambda']:g}, {written['bytes'] / 1e6:.2f} MB, "
              f"fingerprint {written['fingerprint']}")
    if args.variable_rate:
        entries.append(ship_variable_rate(args.variable_rate, f"{args.name}-vr", shipped))
    MANIFEST.write_text(json.dumps({"models": entries}, indent=2) + "\n")
    print(f"wrote {MANIFEST}")
    return 0


if __name__ == "__main__":
    run_cli(main)
