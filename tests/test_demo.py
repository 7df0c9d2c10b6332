"""The demo: the shipped models against JPEG, WebP and AVIF, and a training step, on one small photo.

``demo.py`` runs once per module in a subprocess, as ``make demo`` runs it (photo shrunk to 96 px, two
training steps); each test checks one thing it promises: the table, the real files, the BD-rates, the
plot and comparison sheet, the held-out photo, a clean re-run.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
from models.zoo import shipped_models
from tools.demo_steps import MARKER, Layout, prepare_output
from utils.errors import UserError
from utils.image_io import read_image

REPO = Path(__file__).resolve().parents[1]
CODECS = ("ICWEM", "JPEG", "WebP", "AVIF")


# The demo runs its commands with one thread (OMP_NUM_THREADS=1); the in-process decode below must too,
# for its picture to be bit-identical to the demo's (other thread counts agree only within a grey level).
pytestmark = pytest.mark.usefixtures("one_thread")

def run(args, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two shared cores
    return subprocess.run([sys.executable, "-u", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    result = run(["demo.py", "--out", str(out), "--steps", "2", "--max-side", "96", "--test-photos", "chelsea",
                  "--no-wallpapers"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout, Layout(out)


def table_rows(stdout: str) -> dict:
    """The printed table as {model: {codec: (bpp, PSNR, MS-SSIM)}}."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "|" in line and all(codec in line for codec in CODECS))
    assert [c.strip() for c in lines[header].split("|")[1:]] == list(CODECS)
    rows = {}
    for line in lines[header + 3:]:
        if "|" not in line:
            break
        cells = line.split("|")
        rows[cells[0].strip()] = dict(zip(CODECS, (tuple(float(v) for v in c.split()) for c in cells[1:])))
    return rows


def test_demo_prints_a_row_per_shipped_model_with_measured_numbers(demo):
    stdout, layout = demo
    rows = table_rows(stdout)
    fixed, variable = fixed_and_variable()
    expected = [(f"q{m['quality']} ", layout.coded / m["name"]) for m in fixed] + [
        (f"VR Q{k} ", layout.coded / m["name"] / f"q{k}") for m in variable for k in range(1, m["rate_points"] + 1)]
    assert len(rows) == len(expected) and len(fixed) >= 4
    for (prefix, folder), (label, row) in zip(expected, rows.items()):
        assert label.startswith(prefix)
        measured = json.loads((folder / "results.json").read_text())["images"][0]
        assert row["ICWEM"][0] == pytest.approx(measured["bpp"], abs=5e-4)  # the table shows what test.py measured
        for codec, (bpp, psnr, ms_ssim) in row.items():
            assert bpp > 0 and math.isfinite(psnr) and psnr > 0 and 0 <= ms_ssim <= 1, (codec, row)
    assert rows[next(iter(rows))]["ICWEM"][0] < max(row["ICWEM"][0] for row in rows.values())  # q1: fewest bits
    assert "demo finished in" in stdout


def fixed_and_variable() -> tuple[list[dict], list[dict]]:
    models = shipped_models()
    return [m for m in models if "rate_points" not in m], [m for m in models if "rate_points" in m]


def test_a_shipped_variable_rate_model_is_swept_in_half_steps_into_one_curve(demo):
    _, layout = demo
    _, variable = fixed_and_variable()
    if not variable:
        assert not (layout.compare / "icwem-vr.json").exists()
        return
    (model,) = variable
    curve = json.loads((layout.compare / "icwem-vr.json").read_text())["results"]
    qualities = [1 + 0.5 * k for k in range(2 * model["rate_points"] - 1)]
    assert len(curve["bpp"]) == len(qualities)
    for q, bpp in zip(qualities, curve["bpp"]):
        measured = json.loads((layout.coded / model["name"] / f"q{q:g}" / "results.json").read_text())
        assert bpp == pytest.approx(measured["mean"]["bpp"])


def test_icwem_files_are_real_and_decode_without_a_checkpoint(demo):
    _, layout = demo
    name = shipped_models()[0]["name"]
    icwem = layout.coded / name / "chelsea.icwem"
    measured = json.loads((layout.coded / name / "results.json").read_text())["images"][0]
    assert icwem.stat().st_size == measured["bytes"] > 0
    decoded = layout.out / "decoded.png"
    assert load_script("codec").main(["decode", str(icwem), "-o", str(decoded)]) == 0  # model found by its fingerprint
    saved, _ = read_image(layout.coded / name / "chelsea.png")
    again, _ = read_image(decoded)
    assert saved.shape == (64, 96, 3)  # chelsea (300x451) shrunk to 96 px
    assert np.array_equal(saved, again)


def test_anchor_files_are_measured_as_written(demo):
    _, layout = demo
    name = shipped_models()[0]["name"]
    matched = json.loads((layout.compare / name / "matched.json").read_text())
    assert set(matched) == {"JPEG", "WebP", "AVIF"}
    for files in matched.values():
        (entry,) = files
        assert entry["bpp"] == pytest.approx(8 * Path(entry["file"]).stat().st_size / (64 * 96), abs=1e-9)


def test_bd_rates_against_jpeg_are_printed_for_every_codec(demo):
    stdout, _ = demo
    block = stdout[stdout.index("Bjøntegaard deltas against 'JPEG'"):]
    names = ["JPEG", "WebP", "AVIF", "ICWEM (fixed-rate files)"] + ["ICWEM (variable rate)"] * bool(fixed_and_variable()[1])
    for name in names:
        line = next(line for line in block.splitlines() if line.startswith(name + " "))
        value = line[len(name):].split()[0]
        assert value == "+0.00%" if name == "JPEG" else re.fullmatch(r"[+-]\d+\.\d\d%|n/a", value), line


def test_training_step_runs_and_its_model_is_coded(demo):
    stdout, layout = demo
    assert re.search(r"fine-tuned icwem-\S+ \(2 steps in [\d.]+ min\): [\d.]+ bpp, [\d.]+ dB", stdout)
    assert (layout.coded / "fine-tuned" / "chelsea.icwem").is_file()
    assert list(layout.train.glob("*/tensorboard/events.out.tfevents.*"))


def test_plot_sheet_and_listed_files_exist(demo):
    stdout, layout = demo
    listing = stdout[stdout.index("files:"):]
    for path in (layout.plot_prefix.with_suffix(".png"), layout.sheet, layout.colour_sheet, layout.compare / "icwem.json"):
        assert path.is_file() and (str(path) in listing or str(path.parent) in listing), path
    sheet, _ = read_image(layout.sheet)
    assert sheet.shape[1] > 5 * 64  # original, ICWEM, JPEG, WebP, AVIF side by side


def test_the_photo_with_red_and_green_swapped_is_coded_beside_its_original(demo):
    stdout, layout = demo
    line = re.search(r"channel order, (\S+) on chelsea: RGB ([\d.]+) bpp ([\d.]+) dB; GRB ([\d.]+) bpp ([\d.]+) dB", stdout)
    assert line, stdout[-3000:]
    swapped, _ = read_image(layout.swapped / "chelsea.png")
    original, _ = read_image(layout.photos / "chelsea.png")
    assert np.array_equal(swapped, original[..., [1, 0, 2]])
    results = json.loads((layout.coded / f"{line.group(1)}-GRB" / "results.json").read_text())
    assert results["images"][0]["psnr"] == pytest.approx(float(line.group(5)), abs=0.01)
    assert read_image(layout.colour_sheet)[0].shape[1] > 4 * 64  # two inputs, two decodings


def test_held_out_photos_are_never_trained_on(demo):
    _, layout = demo
    trained = {path.name for path in (layout.data / "train").iterdir()}
    assert trained and "chelsea.png" not in trained
    assert [path.name for path in layout.photos.iterdir()] == ["chelsea.png"]


def test_a_new_run_replaces_an_earlier_demo_output(tmp_path):
    layout = Layout(tmp_path / "out")
    prepare_output(layout)
    (layout.out / "stale.txt").write_text("from the last run")
    prepare_output(layout)
    assert [p.name for p in layout.out.iterdir()] == [MARKER]


def test_a_folder_the_demo_did_not_make_is_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not made by the demo"):
        prepare_output(Layout(tmp_path))
    assert (tmp_path / "thesis.tex").read_text() == "precious"
