"""The demo (``demo.py``): train a small ICWEM from scratch on a CPU, code real files, compare with JPEG and WebP.

Everything comes from this repository and the photographs shipped inside scikit-image; nothing is downloaded.
``run_demo`` goes through five steps; training and coding run ``train.py`` and ``test.py`` as a user would:

1. dataset: 256x256 tiles of most photos in OUT/data/train, and a few whole photos that are never trained on
   (chelsea and coffee by default) in OUT/data/test;
2. training: ``train.py`` for a time (or step) budget, into OUT/train/<lambda>/, then a short second run at a
   tenth of the learning rate from its weights, into OUT/finetune/<lambda>/ (see FINAL_FRACTION);
3. coding: ``test.py --real`` codes the held-out photos into OUT/coded/<photo>.icwem files and decodes those
   files into OUT/coded/<photo>.png, with OUT/coded/results.csv and results.json;
4. anchors: JPEG and WebP code the same photos at the quality whose file size comes closest to ICWEM's
   (OUT/compare/<photo>.jpg / .webp), and sweep their qualities for the RD plot;
5. report: one table (photo, then bpp, PSNR and MS-SSIM per codec), the RD plot OUT/rd.png, and a list of
   every file written.

The scripts run as subprocesses, so their progress bars show and the demo depends on their command lines
only. Every number printed is measured in this run. A new run replaces OUT (only if an earlier demo made
it); ``resume`` keeps it and continues training from the last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .anchors import CODECS, describe, evaluate_codecs, match_quality
from .errors import UserError
from .image_io import read_image, to_tensor, write_png
from .metrics import bits_per_pixel, ms_ssim, psnr
from .plots import plot_rd
from .results import read_results, write_results

REPO = Path(__file__).resolve().parents[1]

# The colour photographs shipped with scikit-image (a micrograph, a retina and a telescope image among them).
# Left out: drawings and synthetic images (logo, colorwheel, ...), ``cat``, which is chelsea, and the
# grayscale photos (camera, coins, ...): the held-out photos are in colour, and in a few minutes' training
# gray tiles cost steps without teaching colour (about 2 dB less on the held-out photos, measured).
PHOTOS = (
    "astronaut", "rocket", "motorcycle_left", "motorcycle_right", "immunohistochemistry", "hubble_deep_field",
    "retina", "chelsea", "coffee",
)
DEFAULT_TEST_PHOTOS = ("chelsea", "coffee")
ANCHORS = ("jpeg", "webp")
TILE = 256
# Training photos are first shrunk to this longer side, so that the two large ones (retina, 1411 px, and
# hubble_deep_field, 1000 px) give 9 tiles each rather than dominating the set.
TRAIN_MAX_SIDE = 768
# A file in OUT that says an earlier demo made it, so that a new run may delete it.
MARKER = ".icwem-demo"
# Training ends at a tenth of the learning rate, as the original's schedule does: the weights settle, which
# is worth 1-2 dB over spending the same time at the full rate. train.py changes the rate at epoch
# milestones only, which a time budget cannot place, so the last FINAL_FRACTION of the budget is a second
# train.py run that fine-tunes the first run's weights with fresh optimizers.
FINAL_FRACTION = 0.25
FINAL_LR_FACTOR = 0.1


@dataclass
class DemoConfig:
    """Everything a demo run depends on; the fields are ``demo.py``'s flags (see its ``--help``)."""

    out_dir: Path = Path("demo_output")
    preset: str = "tiny"
    minutes: float = 5.0
    steps: Optional[int] = None  # overrides minutes
    lmbda: float = 0.01
    learning_rate: float = 1e-3
    batch_size: int = 4
    patch_size: Sequence[int] = (64, 64)
    test_photos: Sequence[str] = DEFAULT_TEST_PHOTOS
    max_side: Optional[int] = None  # shrink every photo to this longer side (quick runs)
    cuda: bool = False
    # One thread by default: the tiny model runs thousands of small operations per step, and when another
    # process takes one of two cores, each of them waits for the descheduled second thread (measured: steps
    # dozens of times slower). On an idle machine a second thread gains little here.
    threads: int = 1
    resume: bool = False
    seed: int = 100


@dataclass
class Layout:
    """Where a demo run writes each thing."""

    out: Path
    lmbda: float
    data: Path = field(init=False)
    train: Path = field(init=False)
    finetune: Path = field(init=False)
    run: Path = field(init=False)
    final_run: Path = field(init=False)
    coded: Path = field(init=False)
    compare: Path = field(init=False)
    plot_prefix: Path = field(init=False)

    def __post_init__(self):
        self.data = self.out / "data"
        self.train = self.out / "train"
        self.finetune = self.out / "finetune"
        self.run = self.train / str(float(self.lmbda))  # train.py's SAVE_PATH/<lambda>/
        self.final_run = self.finetune / str(float(self.lmbda))
        self.coded = self.out / "coded"
        self.compare = self.out / "compare"
        self.plot_prefix = self.out / "rd"

    @property
    def checkpoint(self) -> Path:
        """The first run's last state, which ``resume`` continues."""
        return self.run / "checkpoint_latest.pth.tar"

    @property
    def final_checkpoint(self) -> Path:
        """The fine-tuned weights the demo codes with (the last ones, not those of the best test loss)."""
        return self.final_run / "checkpoint_latest.pth.tar"


def run_demo(cfg: DemoConfig) -> int:
    """All five steps (see the module docstring); returns the exit code."""
    started = time.monotonic()
    check_config(cfg)
    torch.set_num_threads(cfg.threads)  # for the anchors' metrics; the scripts get OMP_NUM_THREADS
    layout = Layout(Path(cfg.out_dir), cfg.lmbda)
    prepare_output(layout, cfg.resume)

    heading(1, "dataset: photographs shipped with scikit-image")
    train_photos = [name for name in PHOTOS if name not in cfg.test_photos]
    if cfg.resume and (layout.data / "train").is_dir() and (layout.data / "test").is_dir():
        print(f"reusing {layout.data}")
    else:
        tiles = build_dataset(layout.data, train_photos, cfg.test_photos, cfg.max_side)
        print(f"{layout.data / 'train'}: {tiles} tiles of {len(train_photos)} photos ({', '.join(train_photos)})")
        print(f"{layout.data / 'test'}: {', '.join(cfg.test_photos)} (whole, never trained on)")

    main, final = split_budget(cfg)
    unit = "steps" if cfg.steps is not None else "min"
    trained = f"trained {main + final:g} {unit} {'more' if cfg.resume else 'from scratch'}"
    heading(2, f"training the {cfg.preset!r} preset {'further' if cfg.resume else 'from scratch'}: {main:g} {unit} "
               f"at learning rate {cfg.learning_rate:g}, then {final:g} {unit} at {cfg.learning_rate * FINAL_LR_FACTOR:g} "
               f"(train.py)")
    run_script(train_command(cfg, layout, main), cfg.threads)
    run_script(finetune_command(cfg, layout, final), cfg.threads)

    heading(3, "coding the held-out photos into real files (test.py --real)")
    run_script(["test.py", "--checkpoint", str(layout.final_checkpoint), "--data", str(layout.data / "test"), "--real",
                "--save-dir", str(layout.coded), *(["--cuda"] if cfg.cuda else [])], cfg.threads)
    coded = json.loads((layout.coded / "results.json").read_text())

    heading(4, "JPEG and WebP at the same bit rates, and their quality sweeps")
    rows = compare_with_anchors(coded["images"], layout)
    curves = write_curves(coded, layout)
    plots = plot_rd(curves, layout.plot_prefix,
                    title=f"{len(rows)} held-out photos: ICWEM ({cfg.preset}, {trained}) vs JPEG and WebP")

    heading(5, "results")
    print("\n".join(format_comparison(rows)))
    print(f"\nbpp: bits per pixel of the real files (all bytes). ICWEM: {cfg.preset} preset, lambda {cfg.lmbda:g}, "
          f"{trained}; JPEG / WebP: the quality whose file size is closest to ICWEM's.")
    for note in rate_notes(rows):
        print(note)
    print()
    print("\n".join(artifact_lines(layout, coded["images"], rows, plots)))
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"\ndemo finished in {minutes} min {seconds:02d} s")
    return 0


def check_config(cfg: DemoConfig) -> None:
    """Reject flag values that cannot work before anything is deleted or trained."""
    unknown = sorted(set(cfg.test_photos) - set(PHOTOS))
    if unknown:
        raise UserError(f"--test-photos: unknown photo {unknown[0]!r}; choose from {', '.join(PHOTOS)}")
    if not cfg.test_photos:
        raise UserError("--test-photos: give at least one photo")
    if cfg.steps is None and not cfg.minutes > 0:
        raise UserError(f"--minutes must be positive, got {cfg.minutes:g}")
    if cfg.steps is not None and cfg.steps < 2:
        raise UserError(f"--steps must be at least 2 (one for each training run), got {cfg.steps}")
    if cfg.threads < 1:
        raise UserError(f"--threads must be at least 1, got {cfg.threads}")
    if cfg.max_side is not None and cfg.max_side < 16:
        raise UserError(f"--max-side must be at least 16 pixels, got {cfg.max_side}")


def prepare_output(layout: Layout, resume: bool) -> None:
    """Start OUT afresh (deleting an earlier demo's output), or keep it for ``resume``."""
    out = layout.out
    if resume:
        if not layout.checkpoint.is_file():
            raise UserError(f"--resume: no checkpoint to resume from at {layout.checkpoint}; run without --resume first")
        for folder in (layout.finetune, layout.coded, layout.compare):  # redone from the new weights
            shutil.rmtree(folder, ignore_errors=True)
        return
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


def run_script(args: Sequence[str], threads: int) -> None:
    """Run one of the repository's scripts with this Python and ``threads`` CPU threads, its output going
    straight to ours."""
    # CompressAI's import warns that torch.jit.script is deprecated; the scripts' own lines are what matter.
    warnings_filter = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                             "ignore:`torch.jit.script`:FutureWarning"]))
    env = dict(os.environ, PYTHONWARNINGS=warnings_filter, OMP_NUM_THREADS=str(threads))
    process = subprocess.Popen([sys.executable, "-u", *args], cwd=REPO, env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # The script got the same Ctrl-C; train.py first saves a checkpoint, so let it finish.
        process.wait()
        raise
    if code != 0:
        raise UserError(f"{args[0]} failed with exit code {code} (its output is above)")


def split_budget(cfg: DemoConfig) -> tuple[float, float]:
    """The budget (steps, or minutes) of the first run and of the fine-tuning run."""
    if cfg.steps is not None:
        final = max(1, round(cfg.steps * FINAL_FRACTION))
        return cfg.steps - final, final
    return cfg.minutes * (1 - FINAL_FRACTION), cfg.minutes * FINAL_FRACTION


def _train_args(cfg: DemoConfig, data: Path, save_path: Path, learning_rate: float) -> list[str]:
    """train.py's flags shared by both runs: unbounded epochs, stopped by the time or step budget."""
    args = [
        "train.py", "-d", str(data), "--model-config", cfg.preset, "--lambda", str(cfg.lmbda),
        "-lr", f"{learning_rate:g}", "--batch-size", str(cfg.batch_size),
        "--patch-size", *(str(s) for s in cfg.patch_size), "--save_path", str(save_path),
        "--seed", str(cfg.seed), "--epochs", "1000000", "--lr_epoch", "1000000", "--log-every", "10",
    ]
    # On the CPU the loader's work (decoding a 256x256 PNG) is tiny beside a step; worker processes
    # would only compete with the training threads for the cores.
    return args + (["--cuda"] if cfg.cuda else ["--num-workers", "0"])


def _budget_args(cfg: DemoConfig, budget: float, steps_done: int = 0) -> list[str]:
    # --max-steps counts the steps of the whole run, --max-minutes those of this invocation.
    if cfg.steps is not None:
        return ["--max-steps", str(steps_done + int(budget))]
    return ["--max-minutes", f"{budget:g}"]


def train_command(cfg: DemoConfig, layout: Layout, budget: float) -> list[str]:
    """The first run: from scratch, or continued from its last checkpoint with ``resume``."""
    command = _train_args(cfg, layout.data, layout.train, cfg.learning_rate)
    if not cfg.resume:
        return command + _budget_args(cfg, budget)
    return command + _budget_args(cfg, budget, read_step(layout.checkpoint)) + ["--checkpoint", str(layout.checkpoint)]


def finetune_command(cfg: DemoConfig, layout: Layout, budget: float) -> list[str]:
    """The second run: the first run's weights at a tenth of the learning rate, with fresh optimizers."""
    return (_train_args(cfg, layout.data, layout.finetune, cfg.learning_rate * FINAL_LR_FACTOR)
            + _budget_args(cfg, budget) + ["--checkpoint", str(layout.checkpoint), "--no-continue_train"])


def read_step(checkpoint: Path) -> int:
    """The number of steps a training checkpoint has done."""
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True).get("step", 0))


# ---------------------------------------------------------------------------------------------- dataset
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


def tile_origins(length: int, tile: int) -> list[int]:
    """Start positions of the fewest ``tile``-long windows covering ``length``, evenly spread, edges included."""
    if length <= tile:
        return [0]
    count = math.ceil(length / tile)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def build_dataset(root: Path, train_photos: Sequence[str], test_photos: Sequence[str],
                  max_side: Optional[int] = None) -> int:
    """ROOT/train: TILE x TILE tiles covering each training photo; ROOT/test: the test photos, whole.

    ``max_side`` shrinks every photo first (quick runs); training photos are also shrunk to TRAIN_MAX_SIDE.
    Returns the number of training tiles.
    """
    train_side = min(TRAIN_MAX_SIDE, max_side) if max_side is not None else TRAIN_MAX_SIDE
    tiles = 0
    for name in train_photos:
        img = shrink(load_photo(name), train_side)
        for top in tile_origins(img.shape[0], TILE):
            for left in tile_origins(img.shape[1], TILE):
                write_png(root / "train" / f"{name}_{top:04d}_{left:04d}.png", img[top:top + TILE, left:left + TILE])
                tiles += 1
    for name in test_photos:
        write_png(root / "test" / f"{name}.png", shrink(load_photo(name), max_side))
    return tiles


# ---------------------------------------------------------------------------------------------- comparison
def compare_with_anchors(images: Sequence[dict], layout: Layout) -> list[dict]:
    """Code every held-out photo with each anchor at ICWEM's real bpp; one row per photo.

    ``images`` are test.py's per-image rows. Each anchor file is written to OUT/compare and measured as
    read back from there, as the .icwem files are.
    """
    rows = []
    for image in images:
        rgb, _notices = read_image(layout.data / "test" / f"{image['name']}.png")
        row = {"photo": image["name"], "ICWEM": {"bpp": image["bpp"], "psnr": image["psnr"], "ms_ssim": image["ms_ssim"],
                                                 "file": str(layout.coded / f"{image['name']}.icwem")}}
        for codec in ANCHORS:
            quality = match_quality(codec, rgb, image["bpp"])
            path = layout.compare / f"{image['name']}{'.jpg' if codec == 'jpeg' else '.' + codec}"
            row[CODECS[codec].label] = {"quality": quality, "file": str(path), **code_to_file(codec, rgb, quality, path)}
        rows.append(row)
    layout.compare.mkdir(parents=True, exist_ok=True)
    (layout.compare / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def code_to_file(codec: str, rgb: np.ndarray, quality: int, path: Path) -> dict:
    """Write ``rgb`` as a ``codec`` file at ``quality``; bpp, PSNR and MS-SSIM of the file as read back."""
    spec = CODECS[codec]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format=spec.pillow_format, **spec.save_options(quality))
    decoded, _notices = read_image(path)
    original, coded = to_tensor(rgb), to_tensor(decoded)
    return {"bpp": bits_per_pixel(path.stat().st_size, *rgb.shape[:2]), "psnr": psnr(original, coded),
            "ms_ssim": ms_ssim(original, coded)}


def write_curves(coded: dict, layout: Layout) -> list[dict]:
    """RD curves for the plot: each anchor's quality sweep and ICWEM's point, averaged over the held-out photos.

    Written as CompressAI-style results files (OUT/compare/<name>.json), so ``tools/plot_rd.py`` can redraw them.
    """
    paths = [layout.data / "test" / f"{image['name']}.png" for image in coded["images"]]
    sweeps = evaluate_codecs(paths, ANCHORS, log=lambda line: None)
    files = []
    for codec, points in sweeps.items():
        files.append(layout.compare / f"{codec}.json")
        write_results(files[-1], CODECS[codec].label, describe(codec) + f"; mean over {len(paths)} photos", points)
    mean = coded["mean"]
    files.append(layout.compare / "icwem.json")
    write_results(files[-1], "ICWEM (demo)", f"{coded['checkpoint']}; real .icwem files, mean over {len(paths)} photos",
                  {"psnr-rgb": [mean["psnr"]], "ms-ssim-rgb": [mean["ms_ssim"]], "bpp": [mean["bpp"]]})
    return [read_results(path) for path in files]


# ---------------------------------------------------------------------------------------------- report
def format_comparison(rows: Sequence[dict]) -> list[str]:
    """The demo's table: a photo per line (and their mean), bpp / PSNR / MS-SSIM for each codec."""
    codecs = [key for key in rows[0] if key != "photo"]
    mean_row = {"photo": f"mean ({len(rows)})"}
    for codec in codecs:
        mean_row[codec] = {key: _mean([row[codec][key] for row in rows]) for key in ("bpp", "psnr", "ms_ssim")}
    width = max(len("photo"), *(len(row["photo"]) for row in [*rows, mean_row]))
    group = "{:>7} {:>7} {:>8}"
    lines = [
        " " * width + "".join(f" | {codec:^24}" for codec in codecs),
        f"{'photo':<{width}}" + "".join(" | " + group.format("bpp", "PSNR", "MS-SSIM") for _ in codecs),
    ]
    lines.append("-" * len(lines[1]))
    for row in [*rows, mean_row]:
        cells = [group.format(f"{row[c]['bpp']:.3f}", f"{row[c]['psnr']:.2f}", _format_ms_ssim(row[c]["ms_ssim"]))
                 for c in codecs]
        lines.append(f"{row['photo']:<{width}}" + "".join(" | " + cell for cell in cells))
    return lines


def _mean(values: Sequence[Optional[float]]) -> float:
    """Mean over the defined values (test.py writes an undefined MS-SSIM, of an image under 11 px, as null)."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _format_ms_ssim(value: Optional[float]) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def rate_notes(rows: Sequence[dict], tolerance: float = 0.1) -> list[str]:
    """A note for every anchor file more than ``tolerance`` away from ICWEM's rate (e.g. below JPEG's lowest)."""
    notes = []
    for row in rows:
        target = row["ICWEM"]["bpp"]
        for codec in (key for key in row if key not in ("photo", "ICWEM")):
            bpp = row[codec]["bpp"]
            if abs(bpp - target) > tolerance * target:
                notes.append(f"note: {row['photo']}: {codec} cannot get closer than {bpp:.3f} bpp to ICWEM's "
                             f"{target:.3f} (quality {row[codec]['quality']}); compare on the RD plot")
    return notes


def artifact_lines(layout: Layout, images: Sequence[dict], rows: Sequence[dict], plots: Sequence[Path]) -> list[str]:
    """Where every file of the run is, one per line."""
    names = [image["name"] for image in images]
    anchor_files = [Path(row[c]["file"]).name for row in rows for c in row if c not in ("photo", "ICWEM")]
    return [
        "files:",
        f"  dataset                {layout.data}/train (tiles), {layout.data}/test (held-out photos)",
        f"  checkpoint (coded)     {layout.final_checkpoint}  (fine-tuned at the lower learning rate)",
        f"  checkpoint (resumable) {layout.checkpoint}  (demo.py --resume continues it)",
        f"  TensorBoard            {layout.out}  (tensorboard --logdir {layout.out}: both runs, as train/ and finetune/)",
        f"  .icwem files           {layout.coded}/: {', '.join(n + '.icwem' for n in names)}",
        f"  decoded PNGs           {layout.coded}/: {', '.join(n + '.png' for n in names)}  (decoded from the files)",
        f"  ICWEM results          {layout.coded / 'results.json'}, {layout.coded / 'results.csv'}",
        f"  JPEG / WebP files      {layout.compare}/: {', '.join(anchor_files)}",
        f"  comparison table       {layout.compare / 'comparison.json'}",
        f"  RD curves (JSON)       {layout.compare}/: jpeg.json, webp.json, icwem.json",
        f"  RD plot                {', '.join(str(p) for p in plots)}",
    ]
