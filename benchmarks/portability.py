"""Does a .icwem file decode to the same symbols on another machine setup, and what does that cost?

    python benchmarks/portability.py decodes   # encode in one setup, decode in every other: counts, max differences
    python benchmarks/portability.py sigma     # how far σ and μ move across setups, float32 vs float64; boundary distances
    python benchmarks/portability.py cost      # encode/decode time, original float32 coding vs the portable path,
                                               # and the entropy-parameter path alone, float32 vs float64 variants
    python benchmarks/portability.py moved     # symbols and indexes the portable encoder codes differently from the original

A *setup* is one process with its own intra-op thread count (1 or 2), oneDNN on or off, and
``ATEN_CPU_CAPABILITY`` (``default``: no SIMD kernels, or ``avx2``) — the knobs that change the last bits
of float results on one machine. Models: the fixture's tiny model (original weights) and tiny models
whose scales spread over the whole scale table (``tests/conftest.py: spread_scales_model``), or
``--checkpoint`` files. Photos: crops (up to 512x384) of colour photographs shipped with scikit-image.
Every number printed is measured in that run; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

from tools.photo_crops import PORTABILITY_CROPS, Crop  # noqa: E402
from utils.cli import run_cli  # noqa: E402

# name: (intra-op threads, oneDNN enabled, ATEN_CPU_CAPABILITY)
SETUPS: Dict[str, Tuple[int, bool, str]] = {
    f"{t}thr-{'dnn' if dnn else 'nodnn'}-{cap}": (t, dnn, cap)
    for cap in ("avx2", "default")
    for dnn in (True, False)
    for t in (1, 2)
}
ENCODERS = ("1thr-dnn-avx2", "2thr-nodnn-default")  # opposite corners of the grid


# ---------------------------------------------------------------------------------------------- setup
def _apply_setup(name: str) -> None:
    """This process's thread count and oneDNN switch (its CPU capability came with the environment)."""
    threads, dnn, capability = SETUPS[name]
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = dnn
    assert os.environ.get("ATEN_CPU_CAPABILITY") == capability, "run workers through _run_worker"


def _run_worker(setup: str, job: dict, workdir: Path) -> dict:
    """Run ``job`` in a fresh process under ``setup`` (a decode job may list more setups of the same
    CPU capability in ``setups``: the process switches threads and oneDNN between them); returns the
    JSON it writes."""
    job = dict(job, setup=setup)
    job_path = workdir / f"job-{setup}-{job['role']}.json"
    job_path.write_text(json.dumps(job))
    threads, _, capability = SETUPS[setup]
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, __file__, "_worker", str(job_path)], env=env, check=True, cwd=ROOT)
    return json.loads(job_path.with_suffix(".out.json").read_text())


def _photo(spec: Sequence) -> np.ndarray:
    return Crop(*spec).pixels()


def _models(workdir: Path, checkpoints: Sequence[str], seeds: Sequence[int]) -> List[str]:
    """Checkpoint paths: the fixture, seeded spread-scale models (built once, here), and any given."""
    from tests.conftest import TINY, spread_scales_model

    paths = []
    fixture = workdir / "fixture-tiny.pth.tar"
    torch.save({"state_dict": torch.load(TINY / "weights.pt", weights_only=True)}, fixture)
    paths.append(str(fixture))
    for seed in seeds:
        path = workdir / f"spread-{seed}.pth.tar"
        model = spread_scales_model(seed)
        torch.save({"state_dict": model.state_dict(), "model_config": model.config}, path)
        paths.append(str(path))
    return paths + [str(Path(c).resolve()) for c in checkpoints]


# ---------------------------------------------------------------------------------------------- workers
def _worker(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    _apply_setup(job["setup"])
    result = {"encode": _encode_job, "decode": _decode_job, "sigma": _sigma_job}[job["role"]](job)
    Path(job_path).with_suffix(".out.json").write_text(json.dumps(result))
    return 0


def _encode_job(job: dict) -> dict:
    """Write one file per (model, photo) and the encoder's own decoded picture beside it."""
    from models import load_checkpoint
    from utils.coding.bitstream import pack
    from utils.coding.codec import decode_bitstream, encode_image

    files = []
    for m, checkpoint in enumerate(job["models"]):
        model = load_checkpoint(checkpoint)
        for p, spec in enumerate(job["photos"]):
            bs, _ = encode_image(model, _photo(spec))
            stem = Path(job["dir"]) / f"{job['setup']}-m{m}-p{p}"
            stem.with_suffix(".icwem").write_bytes(pack(bs))
            np.save(stem.with_suffix(".npy"), decode_bitstream(model, bs)[0])
            files.append({"model": m, "photo": p, "stem": str(stem)})
    return {"files": files}


def _decode_job(job: dict) -> dict:
    rows = []
    for setup in job.get("setups", [job["setup"]]):
        _apply_setup(setup)
        rows += [dict(row, decoder=setup) for row in _decode_files(job)]
    return {"rows": rows}


def _decode_files(job: dict) -> List[dict]:
    from models import load_checkpoint
    from utils.coding.bitstream import unpack
    from utils.coding.codec import decode_bitstream
    from utils.errors import UserError

    models = {}
    rows = []
    for f in job["files"]:
        model = models.get(f["model"]) or models.setdefault(f["model"], load_checkpoint(job["models"][f["model"]]))
        stem = Path(f["stem"])
        reference = np.load(stem.with_suffix(".npy"))
        try:
            decoded, _ = decode_bitstream(model, unpack(stem.with_suffix(".icwem").read_bytes()))
        except UserError as exc:
            rows.append(dict(f, ok=False, error=str(exc)))
            continue
        diff = np.abs(decoded.astype(np.int16) - reference.astype(np.int16))
        rows.append(dict(f, ok=True, max_diff=int(diff.max()), pixels_off=int((diff > 0).sum()), pixels=int(diff.size)))
    return rows


def _sigma_job(job: dict) -> dict:
    """σ and μ of the encoder's fixed symbols (teacher-forced), through float32 and through float64."""
    from models import load_checkpoint

    out = {}
    for m, checkpoint in enumerate(job["models"]):
        model = load_checkpoint(checkpoint)
        everything64 = _all_float64(model)  # the last slice's mean side too: this compares precisions
        for p in range(len(job["photos"])):
            fixed = torch.load(Path(job["dir"]) / f"fixed-m{m}-p{p}.pt", weights_only=True)
            for dtype, nets in (("float32", model), ("float64", everything64)):
                z_hat = fixed["z_hat"].to(torch.float64 if dtype == "float64" else torch.float32)
                symbols = fixed["symbols"]

                def teacher(i: int, mu, sigma):
                    return symbols[i].to(mu.dtype) + mu

                with torch.inference_mode():
                    latent_means, latent_scales = nets.hyper_synthesis(z_hat)
                    _, mu, sigma = model._code_slices(latent_means, latent_scales, fixed["y_hw"], teacher, nets)
                path = Path(job["dir"]) / f"sigma-{job['setup']}-m{m}-p{p}-{dtype}.npz"
                np.savez(path, mu=mu.double().numpy(), sigma=sigma.double().numpy())
                out[f"m{m}-p{p}-{dtype}"] = str(path)
    return out


# ---------------------------------------------------------------------------------------------- decodes
def decodes(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="icwem-portability-") as tmp:
        workdir = Path(tmp)
        models = _models(workdir, args.checkpoint, args.seeds)
        photos = [list(p) for p in PORTABILITY_CROPS[: args.photos]]
        base = {"models": models, "photos": photos, "dir": str(workdir)}
        start = time.perf_counter()
        rows = []
        for encoder in args.encoders:
            files = _run_worker(encoder, dict(base, role="encode"), workdir)["files"]
            for capability in ("avx2", "default"):  # one process per CPU capability, fixed at its start
                decoders = [s for s, (_, _, c) in SETUPS.items() if c == capability and s != encoder]
                job = dict(base, role="decode", files=files, setups=decoders)
                for row in _run_worker(decoders[0], job, workdir)["rows"]:
                    rows.append(dict(row, encoder=encoder))
                print(f"  {encoder} -> {', '.join(decoders)}: {len(files)} decodes each", flush=True)
        elapsed = time.perf_counter() - start
    desync = [r for r in rows if not r["ok"]]
    good = [r for r in rows if r["ok"]]
    print(f"\n{len(rows)} cross-setup decodes ({len(args.encoders)} encoder setup(s) x {len(SETUPS) - 1} decoder setups x "
          f"{len(photos)} photos x {len(models)} models) in {elapsed:.0f} s")
    print(f"symbol/index mismatches (coder check failed): {len(desync)}")
    for r in desync[:10]:
        print(f"  {r['encoder']} -> {r['decoder']} model {r['model']} photo {r['photo']}: {r['error']}")
    if good:
        print(f"max grey-level difference to the encoder's reconstruction: {max(r['max_diff'] for r in good)}")
        off = sum(r["pixels_off"] for r in good)
        print(f"decoded pixels that differ at all: {off} of {sum(r['pixels'] for r in good)}")
    return 0 if not desync else 1


# ---------------------------------------------------------------------------------------------- sigma
def _fix_inputs(models: Sequence[str], photos: Sequence, workdir: Path) -> None:
    """The encoder's ẑ and symbols, computed once here, so every setup sees the same inputs."""
    from models import load_checkpoint
    from utils.image_io import to_tensor
    from utils.padding import pad_image

    for m, checkpoint in enumerate(models):
        model = load_checkpoint(checkpoint)
        for p, spec in enumerate(photos):
            symbols = []

            def record(i, mu, sigma):
                q = model.gaussian_conditional.quantize(y_slices[i], "symbols", mu)
                symbols.append(q)
                return q.to(mu.dtype) + mu

            with torch.inference_mode():
                x, _ = pad_image(to_tensor(_photo(spec)))
                y = model.analysis(x)
                z = model.h_a(y)
                z_hat = model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(z), z.shape[-2:])
                nets, z_in = model._parameter_path(z_hat)
                y_slices = y.double().chunk(model.num_slices, dim=1)
                model._code_slices(*nets.hyper_synthesis(z_in), tuple(y.shape[-2:]), record, nets)
            torch.save({"z_hat": z_hat, "symbols": symbols, "y_hw": tuple(y.shape[-2:])}, workdir / f"fixed-m{m}-p{p}.pt")


def sigma(args: argparse.Namespace) -> int:
    from models.entropy import SCALE_TABLE

    boundaries = np.array(SCALE_TABLE[:-1], dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="icwem-sigma-") as tmp:
        workdir = Path(tmp)
        models = _models(workdir, args.checkpoint, args.seeds)
        photos = [list(p) for p in PORTABILITY_CROPS[: args.photos]]
        _fix_inputs(models, photos, workdir)
        base = {"role": "sigma", "models": models, "photos": photos, "dir": str(workdir)}
        paths = {setup: _run_worker(setup, base, workdir) for setup in SETUPS}
        reference = next(iter(SETUPS))
        print(f"reference setup {reference}; every other setup compared with it, same ẑ and symbols")
        print(f"{'precision':>9} {'mean |Δσ|/σ':>12} {'max |Δσ|/σ':>12} {'max |Δμ|':>10} {'index flips':>12} {'elements':>10}")
        near = {1e-3: 0, 1e-6: 0}
        total = 0
        stats = {}
        for dtype in ("float32", "float64"):
            max_rel, sum_rel, max_mu, flips, count = 0.0, 0.0, 0.0, 0, 0
            for key in paths[reference]:
                if not key.endswith(dtype):
                    continue
                ref = np.load(paths[reference][key])
                ref_sigma = np.maximum(ref["sigma"], boundaries[0])
                ref_index = np.searchsorted(boundaries, ref_sigma, side="left")
                if dtype == "float64":
                    distance = np.min(np.abs(ref_sigma[..., None] - boundaries) / boundaries, axis=-1)
                    distance = distance[ref["sigma"] > boundaries[0] * (1 - 1e-3)]  # σ clamped far below 0.11 is no risk
                    for t in near:
                        near[t] += int((distance < t).sum())
                    total += ref_sigma.size
                for setup in SETUPS:
                    if setup == reference:
                        continue
                    other = np.load(paths[setup][key])
                    other_sigma = np.maximum(other["sigma"], boundaries[0])
                    rel = np.abs(other_sigma - ref_sigma) / ref_sigma
                    max_rel, sum_rel = max(max_rel, float(rel.max())), sum_rel + float(rel.sum())
                    max_mu = max(max_mu, float(np.max(np.abs(other["mu"] - ref["mu"]))))
                    flips += int((np.searchsorted(boundaries, other_sigma, side="left") != ref_index).sum())
                    count += ref_sigma.size
            stats[dtype] = (sum_rel / count, max_rel, flips, count)
            print(f"{dtype:>9} {sum_rel / count:12.3e} {max_rel:12.3e} {max_mu:10.3e} {flips:12d} {count:10d}")
    density = near[1e-3] / total / 1e-3  # elements per unit relative distance to the nearest boundary
    print(f"\nσ within 1e-3 (relative) of a boundary: {near[1e-3]} of {total} elements; within 1e-6: {near[1e-6]}")
    print(f"density near a boundary ≈ {density:.3g} per unit relative distance per element")
    # A flip needs a boundary between the two σ: probability ≈ (density / 2) · |Δσ|/σ per element.
    for dtype, (mean_rel, max_rel, flips, count) in stats.items():
        predicted = count * density / 2 * mean_rel
        per_image = 491_520 * density / 2
        print(f"{dtype}: flips predicted over these comparisons {predicted:.3g} (measured {flips}); per 768x512 image "
              f"(491,520 latents, published M=320): {per_image * mean_rel:.3g} at the mean |Δσ|/σ, "
              f"{per_image * max_rel:.3g} if every element moved by the max")
    return 0


# ---------------------------------------------------------------------------------------------- moved
def _encoder_view(model, x: torch.Tensor, portable: bool):
    """The symbols, scale indexes and decoded x̂ of ``compress``: portable, or as the original coded
    (float32 parameters, CompressAI's own float32 tables and scale table)."""
    from models.entropy import legacy_coders, scale_indexes

    eb = model.entropy_bottleneck
    y = model.analysis(x)
    z = model.h_a(y)
    z_hat = eb.decompress(eb.compress(z), z.shape[-2:])
    if portable:
        nets, z_in = model._parameter_path(z_hat)
        index_of = scale_indexes
    else:
        nets, z_in = model, z_hat
        index_of = legacy_coders(model)[1].build_indexes
    y_slices = y.to(z_in.dtype).chunk(model.num_slices, dim=1)
    symbols, indexes = [], []

    def record(i, mu, sigma):
        q = model.gaussian_conditional.quantize(y_slices[i], "symbols", mu)
        symbols.append(q)
        indexes.append(index_of(sigma))
        return model.gaussian_conditional.dequantize(q, mu)

    y_hat, _, _ = model._code_slices(*nets.hyper_synthesis(z_in), tuple(y.shape[-2:]), record, nets)
    return torch.cat(symbols, 1), torch.cat(indexes, 1), model.synthesis(y_hat.to(x.dtype), clamp=True)


def moved(args: argparse.Namespace) -> int:
    from PIL import Image

    from models import load_checkpoint
    from tests.conftest import TINY
    from utils.image_io import to_tensor
    from utils.padding import pad_image

    torch.set_num_threads(1)
    inputs = [("fixture input", np.asarray(Image.open(TINY / "input.png").convert("RGB")))]
    inputs += [(crop.label, crop.pixels()) for crop in PORTABILITY_CROPS[: args.photos]]
    with tempfile.TemporaryDirectory(prefix="icwem-moved-") as tmp:
        models = _models(Path(tmp), args.checkpoint, args.seeds)
        print(f"{'model':24} {'image':26} {'symbols':>9} {'moved':>6} {'indexes moved':>14} {'max |Δx̂|':>10}")
        for checkpoint in models:
            model = load_checkpoint(checkpoint)
            for label, rgb in inputs:
                x, _ = pad_image(to_tensor(rgb))
                with torch.inference_mode():
                    q0, i0, x0 = _encoder_view(model, x, portable=False)
                    q1, i1, x1 = _encoder_view(model, x, portable=True)
                print(f"{Path(checkpoint).name:24} {label:26} {q0.numel():9d} {int((q0 != q1).sum()):6d} "
                      f"{int((i0 != i1).sum()):14d} {float((x0 - x1).abs().max()):10.2e}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------- cost
def _parameter_path_seconds(model, nets, z_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of the entropy-parameter path alone (hyper-synthesis, then every slice's networks),
    with plain rounding in place of the coder."""
    dtype = next(p.dtype for p in nets.parameters())
    y_slices = y.to(dtype).chunk(model.num_slices, dim=1)

    def round_slice(i: int, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.round(y_slices[i] - mu) + mu

    start = time.perf_counter()
    latent_means, latent_scales = nets.hyper_synthesis(z_hat.to(dtype))
    model._code_slices(latent_means, latent_scales, tuple(y.shape[-2:]), round_slice, nets)
    return time.perf_counter() - start


def _all_float64(model):
    """The float64 parameter networks with the last slice's mean side in float64 too (the library keeps
    that side in the model's precision: it decides no index)."""
    import copy

    from models.entropy.parameters import LAST_MEAN_NETS, PORTABLE_DTYPE, ParameterNets

    nets = ParameterNets(model)
    for name in LAST_MEAN_NETS:
        getattr(nets, name)[-1] = copy.deepcopy(getattr(model, name)[-1]).to(PORTABLE_DTYPE)
    return nets


@contextlib.contextmanager
def _float32_coding(model, on: bool):
    """With ``on``, ``model`` codes as the original did: its float32 networks decide the coder's inputs
    (not portable; for measuring what portability costs)."""
    if on:
        model._parameter_path = lambda z_hat: (model, z_hat)
    try:
        yield
    finally:
        model.__dict__.pop("_parameter_path", None)


def _time_coding(model, x: torch.Tensor, runs: int, warm: torch.Tensor) -> Dict[Tuple[bool, str], List[float]]:
    """compress and decompress, float32 and portable interleaved, ``runs`` times each (after a warm-up
    of both paths on the small picture ``warm``)."""
    times: Dict[Tuple[bool, str], List[float]] = {}
    for run in range(runs + 1):
        for portable in (False, True):
            picture = x if run else warm
            with _float32_coding(model, on=not portable):
                start = time.perf_counter()
                enc = model.compress(picture)
                middle = time.perf_counter()
                dec = model.decompress(enc["strings"], enc["shape"])
                end = time.perf_counter()
            assert dec["checks"] == enc["checks"]
            if run:
                times.setdefault((portable, "encode"), []).append(middle - start)
                times.setdefault((portable, "decode"), []).append(end - middle)
    return times


def cost(args: argparse.Namespace) -> int:
    from PIL import Image

    from models import ICWEM, get_config
    from models.entropy.parameters import ParameterNets
    from tests.conftest import photo
    from utils.image_io import to_tensor

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    rgb = np.asarray(Image.fromarray(photo("coffee")).resize((width, height), Image.BICUBIC))
    torch.manual_seed(0)
    model = ICWEM(**get_config(args.config)).eval()
    model.update(force=True)
    x = to_tensor(rgb)
    f = model.downsampling_factor
    with torch.inference_mode():
        y = model.analysis(x)
        z = model.h_a(y)
        z_hat = model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(z), z.shape[-2:])
        variants = {"float32 (original)": model, "float64, every network": _all_float64(model),
                    "float64 but the last mean side": ParameterNets(model)}
        path: Dict[str, List[float]] = {}
        for run in range(args.runs + 1):
            for name, nets in variants.items():
                seconds = _parameter_path_seconds(model, nets, z_hat, y)
                if run:
                    path.setdefault(name, []).append(seconds)
        times = {} if args.path_only else _time_coding(model, x, args.runs, x[..., :f, :f])
    print(f"ICWEM {args.config}, {width}x{height}, {args.threads} thread(s), median of {args.runs} runs (seconds)")
    print("entropy-parameter path alone (hyper-synthesis + slice networks):")
    base = statistics.median(path["float32 (original)"])
    for name, values in path.items():
        print(f"  {name:32} {statistics.median(values):8.2f}  x{statistics.median(values) / base:.3f}")
    if times:
        print(f"{'':8} {'float32 (original)':>19} {'portable':>10} {'ratio':>7}")
        for phase in ("encode", "decode"):
            base, port = statistics.median(times[(False, phase)]), statistics.median(times[(True, phase)])
            print(f"{phase:8} {base:19.2f} {port:10.2f} {port / base:7.3f}")
    return 0


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    for name, run in (("decodes", decodes), ("sigma", sigma), ("moved", moved)):
        c = commands.add_parser(name)
        c.add_argument("--photos", type=int, default=len(PORTABILITY_CROPS), help=f"how many of the {len(PORTABILITY_CROPS)} photo crops")
        c.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="spread-scale tiny models to build")
        c.add_argument("--checkpoint", nargs="*", default=[], help="more checkpoints to test")
        if name == "decodes":
            c.add_argument("--encoders", nargs="+", choices=list(SETUPS), default=list(ENCODERS), help="encoder setups")
        c.set_defaults(run=run)
    c = commands.add_parser("cost")
    c.add_argument("--config", default="icwem", help="model preset (default: the published configuration)")
    c.add_argument("--size", default="768x512", help="WIDTHxHEIGHT")
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--path-only", action="store_true", help="time the entropy-parameter path alone, not coding")
    c.set_defaults(run=cost)
    w = commands.add_parser("_worker")
    w.add_argument("job")
    w.set_defaults(run=lambda a: _worker(a.job))
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    run_cli(main)
