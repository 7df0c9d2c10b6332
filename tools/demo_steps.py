"""The demo (``demo.py``): the shipped ICWEM models against JPEG, WebP and AVIF on photos they never saw,
then a short training run that shows ``train.py`` at work.

Everything comes from this repository and the photographs shipped inside scikit-image; nothing is downloaded.
``run_demo`` goes through five steps; coding and training run ``test.py`` and ``train.py`` on the command
lines a user would type (their ``main``, in this process: see ``run_script``):

1. photos: the held-out photos (chelsea and coffee by default; never trained on) in OUT/photos;
2. shipped models: ``test.py --real`` codes them with every shipped rate point into real .icwem files
   (OUT/coded/<model>/<photo>.icwem) and decodes those files (…/<photo>.png); a shipped variable-rate model
   codes them at every quality from 1 to K in steps of 0.5 (OUT/coded/<model>/q<Q>/), its continuous curve;
3. anchors: JPEG, WebP and AVIF sweep their qualities over the same photos (the RD curves), and code each
   photo at the quality whose file size is closest to each ICWEM file (OUT/compare/<model>/);
4. training: ``train.py`` fine-tunes the middle shipped model on the training photos for a short budget
   (progress bars), and ``test.py --real`` codes the held-out photos with the result;
5. report: one table (bpp, PSNR, MS-SSIM per rate point, or integer quality, and codec), BD-rates against JPEG, the RD plot
   OUT/rd.png, a visual comparison sheet OUT/comparison.png, and every file written.

Every number printed is measured in this run. A new run replaces OUT (only if an earlier demo made it).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from models.zoo import shipped_models
from utils.errors import UserError
from utils.evaluation.anchors import CODECS, codec_unavailable, describe, evaluate_codecs, match_quality
from utils.evaluation.colour import reorder
from utils.evaluation.plots import bd_table, format_bd_table, plot_rd
from utils.evaluation.results import read_results, write_results
from utils.image_io import read_image, to_tensor, write_png
from utils.metrics import bpp_from_bytes, ms_ssim, psnr

REPO = Path(__file__).resolve().parents[1]

# The colour photographs shipped with scikit-image (a micrograph, a retina and a telescope image among them).
# Left out: drawings and synthetic images (logo, colorwheel, ...), ``cat``, which is chelsea, and the
# grayscale photos (camera, coins, ...).
PHOTOS = (
    "astronaut", "rocket", "motorcycle_left", "motorcycle_right", "immunohistochemistry", "hubble_deep_field",
    "retina", "chelsea", "coffee",
)
DEFAULT_TEST_PHOTOS = ("chelsea", "coffee")
ANCHORS = ("jpeg", "webp", "avif")
# The anchors' default sweep (10-95) extended down to qualities 1 and 5: JPEG at quality 10 already spends
# ~0.32 bpp on the held-out photos, above the shipped models' lowest rates, and a BD-rate needs curves
# that overlap.
SWEEP = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
# A file in OUT that says an earlier demo made it, so that a new run may delete it.
MARKER = ".icwem-demo"
EXTENSIONS = {"jpeg": ".jpg", "webp": ".webp", "avif": ".avif"}
# Side of the square crop shown in the comparison sheet (smaller photos give a smaller crop).
SHEET_CROP = 192
# A variable-rate model's sweep: qualities 1, 1.5, ..., K.
QUALITY_STEP = 0.5


@dataclass
class Coded:
    """One table row's ICWEM files: a fixed-rate model's, or a variable-rate model's at one quality."""

    label: str  # the table's first column
    folder: str  # under OUT/coded/ and OUT/compare/
    results: dict  # test.py's results.json


@dataclass
class DemoConfig:
    """Everything a demo run depends on; the fields are ``demo.py``'s flags (see its ``--help``)."""

    out_dir: Path = Path("demo_output")
    test_photos: Sequence[str] = DEFAULT_TEST_PHOTOS
    max_side: Optional[int] = None  # shrink every photo to this longer side (quick runs)
    minutes: float = 1.5  # the training step's budget
    steps: Optional[int] = None  # overrides minutes
    cuda: bool = False
    # One thread by default: the scripts run thousands of small operations, and when another process takes
    # one of two cores, a second thread waits for it (measured: steps many times slower).
    threads: int = 1
    seed: int = 100
    wallpapers: bool = True  # also judge on the held-out wallpaper photos (apt-get download, cached in runs/debs)


@dataclass
class Layout:
    """Where a demo run writes each thing."""

    out: Path
    photos: Path = field(init=False)
    coded: Path = field(init=False)
    compare: Path = field(init=False)
    data: Path = field(init=False)
    train: Path = field(init=False)
    plot_prefix: Path = field(init=False)
    sheet: Path = field(init=False)
    swapped: Path = field(init=False)
    colour_sheet: Path = field(init=False)

    def __post_init__(self):
        self.photos = self.out / "photos"
        self.swapped = self.out / "swapped"
        self.colour_sheet = self.out / "channel_order.png"
        self.coded = self.out / "coded"
        self.compare = self.out / "compare"
        self.data = self.out / "data"
        self.train = self.out / "train"
        self.plot_prefix = self.out / "rd"
        self.sheet = self.out / "comparison.png"


def run_demo(cfg: DemoConfig) -> int:
    """All five steps (see the module docstring); returns the exit code."""
    started = time.monotonic()
    models = check_config(cfg)
    torch.set_num_threads(cfg.threads)  # the anchors' metrics and the scripts, which run in this process
    layout = Layout(Path(cfg.out_dir))
    prepare_output(layout)

    heading(1, "held-out photographs (never trained on): scikit-image's, and the wallpaper photos kept out of training")
    for name in cfg.test_photos:
        write_png(layout.photos / f"{name}.png", shrink(load_photo(name), cfg.max_side))
    wallpapers = held_out_photos(layout.photos, cfg)
    print(f"{layout.photos}: {', '.join([*cfg.test_photos, *wallpapers])}")

    heading(2, f"coding them with the {len(models)} shipped models into real files (test.py --real)")
    fixed = [model for model in models if "rate_points" not in model]
    variable = next((model for model in models if "rate_points" in model), None)
    coded = [Coded(f"q{m['quality']} (λ {m['lambda']:g})", m["name"],
                   code_with(m["name"], layout.photos, layout.coded / m["name"], cfg)) for m in fixed]
    sweep = code_qualities(variable, layout.photos, layout.coded / variable["name"], cfg) if variable else {}
    coded += [Coded(f"VR Q{q:g} (λ {variable['lambdas'][int(q) - 1]:g})", f"{variable['name']}/q{q:g}", results)
              for q, results in sweep.items() if q == int(q)]

    heading(3, f"{', '.join(CODECS[c].label for c in ANCHORS)}: quality sweeps, and files at ICWEM's bit rates")
    paths = sorted(layout.photos.glob("*.png"))
    sweeps = evaluate_codecs(paths, ANCHORS, SWEEP, log=lambda line: None)
    rows = [matched_row(c, layout) for c in coded]
    print(f"swept {len(ANCHORS)} codecs over {len(paths)} photos; matched files in {layout.compare}")

    base = fixed[len(fixed) // 2]
    swap = code_swapped(cfg.test_photos[0], base, layout, cfg)

    heading(4, "training: train.py fine-tunes the middle shipped model on the other photos, then test.py codes")
    trained = train_and_code(base, cfg, layout)

    heading(5, "results")
    curves = write_curves(sweeps, fixed, coded, variable, sweep, layout, len(paths))
    plots = plot_rd(curves, layout.plot_prefix, title=f"{len(paths)} held-out photos: shipped ICWEM vs "
                                                      + ", ".join(CODECS[c].label for c in ANCHORS))
    sheet = comparison_sheet(cfg.test_photos[0], base["name"], layout)
    colour_sheet = channel_order_sheet(swap, layout)
    print("\n".join(format_table(rows)))
    print(f"\nmeans over {len(paths)} photos; bpp: bits per pixel of the real files (all bytes); anchors at the "
          "quality whose file size is closest to ICWEM's on each photo.")
    print()
    print(format_bd_table(bd_table(curves, anchor=0), CODECS["jpeg"].label) + "   (from the quality sweeps)")
    mean = trained["mean"]
    print(f"\nfine-tuned {base['name']} ({trained['steps']} steps in {trained['minutes']:.1f} min): "
          f"{mean['bpp']:.3f} bpp, {mean['psnr']:.2f} dB, MS-SSIM {mean['ms_ssim']:.4f} "
          f"(shipped: {coded[fixed.index(base)].results['mean']['bpp']:.3f} bpp, "
          f"{coded[fixed.index(base)].results['mean']['psnr']:.2f} dB)")
    print(f"\nchannel order, {base['name']} on {swap['photo']}: " + "; ".join(
        f"{p['order']} {p['bpp']:.3f} bpp {p['psnr']:.2f} dB" for p in swap["panels"]) + " (a codec should not care)")
    print()
    print("\n".join(artifact_lines(layout, models, plots, sheet, colour_sheet)))
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"\ndemo finished in {minutes} min {seconds:02d} s")
    return 0


def check_config(cfg: DemoConfig) -> list[dict]:
    """Reject what cannot work before anything is deleted; returns the shipped models."""
    unknown = sorted(set(cfg.test_photos) - set(PHOTOS))
    if unknown:
        raise UserError(f"--test-photos: unknown photo {unknown[0]!r}; choose from {', '.join(PHOTOS)}")
    if not cfg.test_photos:
        raise UserError("--test-photos: give at least one photo")
    if len(set(cfg.test_photos)) == len(PHOTOS):
        raise UserError("--test-photos: leave at least one photo to train on")
    if cfg.steps is None and not cfg.minutes > 0:
        raise UserError(f"--minutes must be positive, got {cfg.minutes:g}")
    if cfg.steps is not None and cfg.steps < 1:
        raise UserError(f"--steps must be at least 1, got {cfg.steps}")
    if cfg.threads < 1:
        raise UserError(f"--threads must be at least 1, got {cfg.threads}")
    if cfg.max_side is not None and cfg.max_side < 16:
        raise UserError(f"--max-side must be at least 16 pixels, got {cfg.max_side}")
    missing = [CODECS[c].label + f" ({why})" for c in ANCHORS if (why := codec_unavailable(c))]
    if missing:
        raise UserError(f"anchor codecs unavailable: {', '.join(missing)}")
    models = shipped_models()
    if not any("rate_points" not in model for model in models):
        raise UserError("no shipped fixed-rate models in models/weights/ (manifest.json missing)")
    return models


def held_out_photos(photos: Path, cfg: DemoConfig) -> list[str]:
    """The held-out wallpaper photos into ``photos`` (tools/training_data.py); none, with a note, where the
    Debian package cannot be had (no apt-get, no network) or with ``--no-wallpapers``."""
    if not cfg.wallpapers:
        return []
    from tools.training_data import held_out_wallpapers  # here: that tool imports this module's photo helpers

    try:
        return held_out_wallpapers(photos, REPO / "runs" / "debs", cfg.max_side)
    except UserError as exc:
        print(f"note: judging on scikit-image's photos only: {exc}")
        return []


def prepare_output(layout: Layout) -> None:
    """Start OUT afresh, deleting an earlier demo's output but nothing the demo did not make."""
    out = layout.out
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out} is a file; choose another --out")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise UserError(f"{out} exists and was not made by the demo; choose another --out or remove it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by demo.py; a new demo run deletes this folder\n")


def heading(number: int, text: str) -> None:
    print(f"\n== {number}/5 {text}", flush=True)


def run_script(args: Sequence[str]) -> None:
    """Run one of the repository's scripts (``test.py``, ``train.py``) on ``args`` as its command line would,
    in this process, its output going straight to ours.

    In this process rather than a new one: a new Python spends about 10 s of CPU importing PyTorch and
    CompressAI (measured on a 2-core EPYC), more than coding the photos takes, and the demo runs seven
    scripts. The thread count is this process's (``torch.set_num_threads`` in ``run_demo``).
    """
    code = _script(args[0]).main(list(args[1:]))
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise KeyboardInterrupt  # train.py saved its checkpoint; stop the demo as a Ctrl-C stops it
    if code:
        raise UserError(f"{args[0]} failed with exit code {code} (its output is above)")


@functools.lru_cache(maxsize=None)
def _script(name: str) -> ModuleType:
    """A top-level script as a module, loaded by its path (``test.py`` would otherwise be Python's ``test``)."""
    spec = importlib.util.spec_from_file_location(f"_demo_script_{Path(name).stem}", REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_with(checkpoint: str, photos: Path, save_dir: Path, cfg: DemoConfig) -> dict:
    """``test.py --real`` over the photos; returns its results.json."""
    run_script(["test.py", "--checkpoint", checkpoint, "--data", str(photos), "--real", "--save-dir", str(save_dir),
                *(["--cuda"] if cfg.cuda else [])])
    return json.loads((save_dir / "results.json").read_text())


def code_qualities(model: dict, photos: Path, save_dir: Path, cfg: DemoConfig) -> dict[float, dict]:
    """``test.py --real --quality 1 1.5 ... K`` with a variable-rate model; {quality: its results.json}."""
    count = round((model["rate_points"] - 1) / QUALITY_STEP) + 1
    qualities = [1 + QUALITY_STEP * k for k in range(count)]
    run_script(["test.py", "--checkpoint", model["name"], "--data", str(photos), "--real", "--save-dir", str(save_dir),
                "--quality", *(f"{q:g}" for q in qualities), *(["--cuda"] if cfg.cuda else [])])
    return {q: json.loads((save_dir / f"q{q:g}" / "results.json").read_text()) for q in qualities}


# ---------------------------------------------------------------------------------------------- photos
def load_photo(name: str) -> np.ndarray:
    """One of scikit-image's photographs as HxWx3 uint8 RGB (grayscale ones copied to three channels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image's lazy loader warns about optional plugins
        from skimage import data

        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, _disparity = data.stereo_motorcycle()
            img = left if name == "motorcycle_left" else right
        else:
            img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3], dtype=np.uint8)


def shrink(img: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Downscale (Lanczos) so that the longer side is at most ``max_side``; smaller images are kept."""
    height, width = img.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return img
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def write_training_photos(root: Path, held_out: Sequence[str], max_side: Optional[int]) -> list[str]:
    """ROOT/train and ROOT/test: every photo but the held-out ones (train.py validates on the same photos)."""
    names = [n for n in PHOTOS if n not in held_out]
    for name in names:
        img = shrink(load_photo(name), max_side)
        for split in ("train", "test"):
            write_png(root / split / f"{name}.png", img)
    return names


# ---------------------------------------------------------------------------------------------- anchors
def code_to_file(codec: str, rgb: np.ndarray, quality: int, path: Path) -> dict:
    """Write ``rgb`` as a ``codec`` file at ``quality``; bpp, PSNR and MS-SSIM of the file as read back."""
    spec = CODECS[codec]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format=spec.pillow_format, **spec.save_options(quality))
    decoded, _notices = read_image(path)
    original, coded = to_tensor(rgb), to_tensor(decoded)
    return {"bpp": bpp_from_bytes(path.stat().st_size, *rgb.shape[:2]), "psnr": psnr(original, coded),
            "ms_ssim": ms_ssim(original, coded), "quality": quality, "file": str(path)}


def matched_row(coded: Coded, layout: Layout) -> dict:
    """One table row: ICWEM's mean over the photos, and each anchor at the bit rate of each ICWEM file."""
    per_codec: dict[str, list[dict]] = {CODECS[c].label: [] for c in ANCHORS}
    for image in coded.results["images"]:
        rgb, _notices = read_image(layout.photos / f"{image['name']}.png")
        for codec in ANCHORS:
            quality = match_quality(codec, rgb, image["bpp"])
            path = layout.compare / coded.folder / f"{image['name']}{EXTENSIONS[codec]}"
            per_codec[CODECS[codec].label].append(code_to_file(codec, rgb, quality, path))
    row = {"model": coded.label, "ICWEM": {k: coded.results["mean"][k] for k in ("bpp", "psnr", "ms_ssim")}}
    for label, files in per_codec.items():
        row[label] = {k: _mean([f[k] for f in files]) for k in ("bpp", "psnr", "ms_ssim")}
    (layout.compare / coded.folder).mkdir(parents=True, exist_ok=True)
    (layout.compare / coded.folder / "matched.json").write_text(json.dumps(per_codec, indent=2) + "\n")
    return row


def write_curves(sweeps: dict, fixed: Sequence[dict], coded: Sequence[Coded], variable: Optional[dict],
                 qualities: dict, layout: Layout, count: int) -> list[dict]:
    """RD curves (JPEG first: the BD anchor), written as CompressAI-style results files in OUT/compare: the
    anchors', the fixed-rate models' (icwem.json) and a variable-rate model's sweep (icwem-vr.json)."""
    layout.compare.mkdir(parents=True, exist_ok=True)
    files = []
    for codec in ANCHORS:
        files.append(layout.compare / f"{codec}.json")
        write_results(files[-1], CODECS[codec].label, describe(codec) + f"; mean over {count} photos", sweeps[codec])
    curves = [("icwem.json", "ICWEM (fixed-rate files)", ", ".join(m["name"] for m in fixed),
               [c.results["mean"] for c in coded[:len(fixed)]])]
    if variable is not None:
        curves.append(("icwem-vr.json", "ICWEM (variable rate)",
                       f"{variable['name']} at qualities {', '.join(f'{q:g}' for q in qualities)}",
                       [results["mean"] for results in qualities.values()]))
    for name, label, what, means in curves:
        files.append(layout.compare / name)
        write_results(files[-1], label, f"{what}; real .icwem files, mean over {count} photos",
                      {"psnr-rgb": [m["psnr"] for m in means], "ms-ssim-rgb": [m["ms_ssim"] for m in means],
                       "bpp": [m["bpp"] for m in means]})
    return [read_results(path) for path in files]


SWAP = "GRB"  # red and green swapped: the order that showed the old models' palette bias most


def code_swapped(photo: str, model: dict, layout: Layout, cfg: DemoConfig) -> dict:
    """Code ``photo`` with its red and green channels swapped, with ``model`` (test.py --real); the panels of
    the channel-order sheet: the photo and its swap, each with ICWEM's decoding and the file's numbers."""
    original, _ = read_image(layout.photos / f"{photo}.png")
    write_png(layout.swapped / f"{photo}.png", reorder(original, ["RGB".index(c) for c in SWAP]))
    swapped = code_with(model["name"], layout.swapped, layout.coded / f"{model['name']}-{SWAP}", cfg)
    plain = json.loads((layout.coded / model["name"] / "results.json").read_text())
    panels = []
    for order, folder, coded in (("RGB", layout.photos, plain), (SWAP, layout.swapped, swapped)):
        image = next(i for i in coded["images"] if i["name"] == photo)
        decoded_dir = layout.coded / (model["name"] if order == "RGB" else f"{model['name']}-{SWAP}")
        panels.append({"order": order, "bpp": image["bpp"], "psnr": image["psnr"],
                       "input": folder / f"{photo}.png", "decoded": decoded_dir / f"{photo}.png"})
    return {"photo": photo, "model": model["name"], "panels": panels}


# ---------------------------------------------------------------------------------------------- training
def train_and_code(base: dict, cfg: DemoConfig, layout: Layout) -> dict:
    """Fine-tune ``base`` on the training photos with train.py, then code the held-out photos with it."""
    names = write_training_photos(layout.data, cfg.test_photos, cfg.max_side)
    print(f"{layout.data / 'train'}: {', '.join(names)}")
    budget = ["--max-steps", str(cfg.steps)] if cfg.steps is not None else ["--max-minutes", f"{cfg.minutes:g}"]
    started = time.monotonic()
    run_script(["train.py", "-d", str(layout.data), "--checkpoint", base["name"], "--no-continue_train",
                "--lambda", f"{base['lambda']:g}", "-lr", "1e-4", "--batch-size", "8", "--patch-size", "64", "64",
                "--augment", "--repeat", "8", "--decoder-clamp", "--epochs", "1000000", "--save_path", str(layout.train),
                "--seed", str(cfg.seed), "--num-workers", "0", "--log-every", "10", *budget,
                *(["--cuda"] if cfg.cuda else [])])
    minutes = (time.monotonic() - started) / 60
    checkpoint = layout.train / f"{base['lambda']:g}" / "checkpoint_latest.pth.tar"
    if not checkpoint.is_file():  # train.py names the folder str(float(lambda))
        checkpoint = next(layout.train.glob("*/checkpoint_latest.pth.tar"))
    steps = int(torch.load(checkpoint, map_location="cpu", weights_only=True).get("step", 0))
    result = code_with(str(checkpoint), layout.photos, layout.coded / "fine-tuned", cfg)
    return {**result, "steps": steps, "minutes": minutes, "checkpoint": str(checkpoint)}


# ---------------------------------------------------------------------------------------------- report
def format_table(rows: Sequence[dict]) -> list[str]:
    """The demo's table: a shipped rate point per line, bpp / PSNR / MS-SSIM for ICWEM and each anchor."""
    codecs = [key for key in rows[0] if key != "model"]
    width = max(len("model"), *(len(row["model"]) for row in rows))
    group = "{:>7} {:>7} {:>8}"
    lines = [
        " " * width + "".join(f" | {codec:^24}" for codec in codecs),
        f"{'model':<{width}}" + "".join(" | " + group.format("bpp", "PSNR", "MS-SSIM") for _ in codecs),
    ]
    lines.append("-" * len(lines[1]))
    for row in rows:
        cells = [group.format(f"{row[c]['bpp']:.3f}", f"{row[c]['psnr']:.2f}", _format_ms_ssim(row[c]["ms_ssim"]))
                 for c in codecs]
        lines.append(f"{row['model']:<{width}}" + "".join(" | " + cell for cell in cells))
    return lines


def _mean(values: Sequence[Optional[float]]) -> float:
    """Mean over the defined values (an undefined MS-SSIM, of an image under 11 px, is null)."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _format_ms_ssim(value: Optional[float]) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def comparison_sheet(photo: str, model_name: str, layout: Layout) -> Path:
    """The same crop of one photo, side by side: original, ICWEM and each anchor at about ICWEM's bit rate,
    each labelled with the whole photo's bpp and PSNR."""
    original, _ = read_image(layout.photos / f"{photo}.png")
    icwem_rgb, _ = read_image(layout.coded / model_name / f"{photo}.png")
    coded = json.loads((layout.coded / model_name / "results.json").read_text())
    image = next(i for i in coded["images"] if i["name"] == photo)
    matched = json.loads((layout.compare / model_name / "matched.json").read_text())
    index = [i["name"] for i in coded["images"]].index(photo)
    short = model_name.rsplit("-", 1)[-1]  # icwem-small-q3 -> q3
    panels = [("original", original), (f"ICWEM {short}: {image['bpp']:.3f} bpp, {image['psnr']:.2f} dB", icwem_rgb)]
    for label, files in matched.items():
        f = files[index]
        decoded, _ = read_image(f["file"])
        panels.append((f"{label} q{f['quality']}: {f['bpp']:.3f} bpp, {f['psnr']:.2f} dB", decoded))
    return _sheet(panels, layout.sheet)


def _sheet(panels: Sequence[tuple[str, np.ndarray]], path: Path) -> Path:
    """Labelled panels side by side, each the same centre crop (zoomed 2x when small), saved to ``path``."""
    h, w = panels[0][1].shape[:2]
    side = min(SHEET_CROP, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    zoom = 2 if side <= 128 else 1
    label_h, gap = 16, 6
    sheet = Image.new("RGB", (len(panels) * (side * zoom + gap) - gap, side * zoom + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (label, rgb) in enumerate(panels):
        crop = Image.fromarray(rgb[top:top + side, left:left + side]).resize((side * zoom, side * zoom), Image.Resampling.NEAREST)
        x = k * (side * zoom + gap)
        sheet.paste(crop, (x, label_h))
        draw.text((x + 2, 2), label, fill="black", font=font)
    sheet.save(path)
    return path


def channel_order_sheet(swap: dict, layout: Layout) -> Path:
    """The photo and its channel swap, each beside ICWEM's decoding of it (the same crop as the comparison)."""
    panels = []
    for p in swap["panels"]:
        panels.append((f"{p['order']} input", read_image(p["input"])[0]))
        panels.append((f"ICWEM: {p['bpp']:.3f} bpp, {p['psnr']:.2f} dB", read_image(p["decoded"])[0]))
    return _sheet(panels, layout.colour_sheet)


def artifact_lines(layout: Layout, models: Sequence[dict], plots: Sequence[Path], sheet: Path,
                   colour_sheet: Path) -> list[str]:
    """Where every file of the run is, one per line."""
    return [
        "files:",
        f"  held-out photos        {layout.photos}/",
        f"  .icwem files, decoded  {layout.coded}/<model>/<photo>.icwem and .png (decoded from the file), results.json/.csv",
        f"  anchor files           {layout.compare}/<model>/<photo>.jpg, .webp, .avif (matched to each ICWEM file)",
        f"  RD curves (JSON)       {layout.compare}/: {', '.join(c + '.json' for c in ANCHORS)}, icwem.json"
        f"{', icwem-vr.json' if any('rate_points' in m for m in models) else ''}",
        f"  RD plot                {', '.join(str(p) for p in plots)}",
        f"  comparison sheet       {sheet}",
        f"  channel-order sheet    {colour_sheet} (inputs in {layout.photos}/ and {layout.swapped}/)",
        f"  training               {layout.data} (photos), {layout.train} (checkpoints, TensorBoard), "
        f"{layout.coded / 'fine-tuned'} (its files)",
        f"  shipped models         {', '.join(m['name'] for m in models)} (models/weights/)",
    ]
