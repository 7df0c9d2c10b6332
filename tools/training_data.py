"""Build the shipped models' training folder: scikit-image's photographs plus three Debian wallpaper packages.

    python tools/training_data.py --out runs/data            # train/, test/, heldout/ and MANIFEST.json

Sources, and nothing else (the brief's rule for shipped models): the colour photographs inside scikit-image
and the pictures in ``plasma-workspace-wallpapers``, ``ukui-wallpapers`` and ``gnome-backgrounds`` at the
versions in ``PACKAGES``. The packages are fetched with ``apt-get download`` into ``--debs`` (kept, so a
second run fetches nothing) and unpacked with ``dpkg -x``; no package is installed. Every source file is
checked against the SHA-256 listed in ``datasets/training_set.json``, so a different package build stops the
tool instead of silently changing the data.

Each wallpaper folder ships one picture at several sizes (often the same file under a dozen names): one copy
per distinct content is kept, the largest of each folder, and shrunk (Lanczos) to ``--max-side`` so that a
training crop sees photo-like detail rather than 5K smoothness and the loader decodes small files.
``HELD_OUT`` never reaches ``train/``: those photos, with chelsea and coffee, form ``heldout/``, the set on
which the shipped models are judged (in all six channel orders, see ``utils/evaluation/colour.py``).
``test/`` repeats the training pictures (train.py picks its best checkpoint on their centre crops), so the
held-out photos influence neither training nor checkpoint selection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.demo_steps import DEFAULT_TEST_PHOTOS, PHOTOS, load_photo, shrink  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.image_io import write_png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LISTING = REPO / "datasets" / "training_set.json"
PACKAGES = {
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "ukui-wallpapers": "20.04.3-1.1",
    "gnome-backgrounds": "43.1-1",
}
# Wallpaper photographs kept out of training (a green forest and boats at sunset), judged beside chelsea/coffee.
HELD_OUT = ("plasma-Path", "plasma-EveningGlow")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MIN_SIDE = 512  # thumbnails and 256-pixel tiles carry no photo detail


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_packages(debs: Path, names: Sequence[str] = tuple(PACKAGES)) -> dict[str, Path]:
    """The .deb files at the pinned versions, downloaded with apt-get unless already in ``debs``."""
    debs.mkdir(parents=True, exist_ok=True)
    found = {}
    for name in names:
        version = PACKAGES[name]
        deb = debs / f"{name}_{version.replace(':', '%3a')}_all.deb"  # apt-get's file name for it
        if not deb.exists():
            try:
                done = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, capture_output=True, text=True)
            except FileNotFoundError:
                raise UserError("apt-get not found: the wallpaper packages come from Debian's archive") from None
            if done.returncode != 0 or not deb.exists():  # also: no apt-get here (FileNotFoundError below)
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"apt-get download {name}={version} failed ({last}); run 'apt-get update' first")
        found[name] = deb
    return found


def wallpaper_name(package: str, path: Path) -> str:
    """A short stable name: the package's short tag, the wallpaper folder (or file stem), '-dark' variants."""
    tag = package.split("-")[0]
    parts = path.parts
    if "wallpapers" in parts and "contents" in parts:  # KDE: wallpapers/<Name>/contents/images[_dark]/WxH.ext
        name = parts[parts.index("contents") - 1]
        return f"{tag}-{name}" + ("-dark" if "images_dark" in parts else "")
    return f"{tag}-{path.stem}"


def distinct_pictures(root: Path, package: str) -> dict[str, Path]:
    """One file per wallpaper name (the one with most pixels), screenshots and small tiles left out."""
    best: dict[str, tuple[int, Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in SUFFIXES or not path.is_file() or "screenshot" in path.name:
            continue
        with Image.open(path) as img:
            width, height = img.size
        if min(width, height) < MIN_SIDE:
            continue
        name = wallpaper_name(package, path)
        if name not in best or width * height > best[name][0]:
            best[name] = (width * height, path)
    return {name: path for name, (_, path) in best.items()}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def check_source(name: str, digest: str, expected: Optional[dict]) -> None:
    if expected is None:
        return
    entry = expected.get(name)
    if entry is None or entry["source_sha256"] != digest:
        raise UserError(f"{name}: the package's file differs from {LISTING.name} (another package build?)")


def build(out: Path, debs: Path, max_side: int, check: bool) -> list[dict]:
    expected = {e["name"]: e for e in json.loads(LISTING.read_text())["pictures"]} if check else None
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, deb in fetch_packages(debs).items():
            root = Path(tmp) / package
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            for name, path in distinct_pictures(root, package).items():
                digest = sha256(path)
                check_source(name, digest, expected)
                img = shrink(read_rgb(path), max_side)
                entries.append(dict(name=name, source=f"{package}:{path.relative_to(root)}", source_sha256=digest, img=img))
    for photo in PHOTOS:
        img = load_photo(photo)
        entries.append(dict(name=f"skimage-{photo}", source=f"scikit-image:data.{photo}",
                            source_sha256=hashlib.sha256(img.tobytes()).hexdigest(), img=img))
    held_out = set(HELD_OUT) | {f"skimage-{p}" for p in DEFAULT_TEST_PHOTOS}
    listing = []
    for entry in sorted(entries, key=lambda e: e["name"]):
        img = entry.pop("img")
        splits = ("heldout",) if entry["name"] in held_out else ("train", "test")
        for split in splits:
            write_png(out / split / f"{entry['name']}.png", img)
        target = out / splits[0] / f"{entry['name']}.png"
        listing.append(dict(entry, split=splits[0], width=img.shape[1], height=img.shape[0], sha256=sha256(target)))
    return listing


def held_out_wallpapers(out: Path, debs: Path, max_side: Optional[int] = None) -> list[str]:
    """Write only the held-out wallpaper photos (``HELD_OUT``) into ``out`` as PNGs, shrunk as for training
    and then to ``max_side``; returns their names. For the demo, which judges on them beside scikit-image's."""
    package = "plasma-workspace-wallpapers"
    assert all(name.startswith("plasma-") for name in HELD_OUT)
    listing = json.loads(LISTING.read_text())
    expected = {e["name"]: e for e in listing["pictures"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / package
        subprocess.run(["dpkg", "-x", str(fetch_packages(debs, [package])[package]), str(root)], check=True)
        pictures = distinct_pictures(root, package)
        for name in HELD_OUT:
            check_source(name, sha256(pictures[name]), expected)
            img = shrink(shrink(read_rgb(pictures[name]), listing["max_side"]), max_side)
            write_png(out / f"{name}.png", img)
    return list(HELD_OUT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create (train/, test/, heldout/)")
    p.add_argument("--debs", type=Path, default=REPO / "runs" / "debs", help="where the .deb files are kept")
    p.add_argument("--max-side", type=int, default=1024, help="longer side of the wallpapers after shrinking")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help=f"do not compare the source files with {LISTING.relative_to(REPO)} (and rewrite it)")
    args = p.parse_args(argv)
    listing = build(args.out, args.debs, args.max_side, args.check)
    manifest = dict(packages=PACKAGES, max_side=args.max_side, held_out=sorted(e["name"] for e in listing if e["split"] == "heldout"),
                    pictures=listing)
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if not args.check:
        LISTING.write_text(json.dumps(manifest, indent=1) + "\n")
    counts = {s: sum(e["split"] == s for e in listing) for s in ("train", "heldout")}
    print(f"{counts['train']} pictures in {args.out / 'train'} (and test/), {counts['heldout']} held out in "
          f"{args.out / 'heldout'}: {', '.join(manifest['held_out'])}")
    return 0


if __name__ == "__main__":
    run_cli(main)
