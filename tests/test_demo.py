"""The demo: the whole pipeline on a tiny budget (two training steps, photos shrunk to 96 px), then its files.

``demo.py`` runs once per module in a subprocess, as ``make demo`` runs it; each test checks one thing it
promises: the table, the real .icwem file, the JPEG/WebP files, the listed artifacts, a clean re-run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.demo import MARKER, Layout, prepare_output, tile_origins
from utils.errors import UserError
from utils.image_io import read_image

REPO = Path(__file__).resolve().parents[1]
CODECS = ("ICWEM", "JPEG", "WebP")


def run(args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two shared cores
    return subprocess.run([sys.executable, "-u", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    result = run(["demo.py", "--out", str(out), "--steps", "2", "--batch-size", "2", "--patch-size", "64", "64",
                  "--max-side", "96", "--test-photos", "chelsea"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout, Layout(out, 0.01)


def table_row(stdout: str, photo: str) -> dict:
    """The printed table's row for ``photo`` as {codec: (bpp, PSNR, MS-SSIM)}."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if all(codec in line for codec in CODECS))
    assert [c.strip() for c in lines[header].split("|")[1:]] == list(CODECS)
    row = next(line for line in lines[header:] if line.split("|")[0].strip() == photo)
    groups = [tuple(float(v) for v in cell.split()) for cell in row.split("|")[1:]]
    return dict(zip(CODECS, groups))


def test_demo_prints_one_sane_row_per_photo_and_codec(demo):
    stdout, layout = demo
    row = table_row(stdout, "chelsea")
    for codec, (bpp, psnr, ms_ssim) in row.items():
        assert bpp > 0 and math.isfinite(psnr) and psnr > 0 and 0 <= ms_ssim <= 1, (codec, row)
    measured = json.loads((layout.coded / "results.json").read_text())["images"][0]
    assert row["ICWEM"][0] == pytest.approx(measured["bpp"], abs=5e-4)  # the table shows what test.py measured
    assert "demo finished in" in stdout


def test_icwem_file_is_real_and_decodes_to_the_saved_png(demo):
    _, layout = demo
    measured = json.loads((layout.coded / "results.json").read_text())["images"][0]
    icwem = layout.coded / "chelsea.icwem"
    assert icwem.stat().st_size == measured["bytes"] > 0
    decoded = layout.out / "decoded.png"
    result = run(["codec.py", "decode", str(icwem), "-o", str(decoded), "--checkpoint", str(layout.final_checkpoint)])
    assert result.returncode == 0, result.stderr
    saved, _ = read_image(layout.coded / "chelsea.png")
    again, _ = read_image(decoded)
    original, _ = read_image(layout.data / "test" / "chelsea.png")
    assert saved.shape == original.shape == (64, 96, 3)  # chelsea (300x451) shrunk to 96 px
    assert np.array_equal(saved, again)


def test_jpeg_and_webp_files_are_measured_as_written(demo):
    stdout, layout = demo
    row = table_row(stdout, "chelsea")
    for codec, path in (("JPEG", layout.compare / "chelsea.jpg"), ("WebP", layout.compare / "chelsea.webp")):
        assert row[codec][0] == pytest.approx(8 * path.stat().st_size / (64 * 96), abs=5e-4)


def test_every_artifact_is_listed_and_exists(demo):
    stdout, layout = demo
    listing = stdout[stdout.index("files:"):]
    paths = [layout.data, layout.final_checkpoint, layout.checkpoint, layout.coded / "results.json",
             layout.coded / "results.csv", layout.compare / "comparison.json", layout.plot_prefix.with_suffix(".png")]
    for path in paths:
        assert path.exists() and str(path) in listing, path
    for run in (layout.run, layout.final_run):  # both training runs log to TensorBoard
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("jpeg.json", "webp.json", "icwem.json"):
        assert (layout.compare / name).is_file()


def test_held_out_photos_are_never_trained_on(demo):
    _, layout = demo
    trained = {path.name for path in (layout.data / "train").iterdir()}
    assert trained and not any(name.startswith("chelsea") for name in trained)
    assert [path.name for path in (layout.data / "test").iterdir()] == ["chelsea.png"]


def test_a_new_run_replaces_an_earlier_demo_output(tmp_path):
    layout = Layout(tmp_path / "out", 0.01)
    prepare_output(layout, resume=False)
    (layout.out / "stale.txt").write_text("from the last run")
    prepare_output(layout, resume=False)
    assert [p.name for p in layout.out.iterdir()] == [MARKER]


def test_a_folder_the_demo_did_not_make_is_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not made by the demo"):
        prepare_output(Layout(tmp_path, 0.01), resume=False)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_resume_needs_an_earlier_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        prepare_output(Layout(tmp_path, 0.01), resume=True)


@pytest.mark.parametrize("length, origins", [(100, [0]), (256, [0]), (427, [0, 171]), (1000, [0, 248, 496, 744])])
def test_tiles_cover_a_photo_edge_to_edge(length, origins):
    assert tile_origins(length, 256) == origins
