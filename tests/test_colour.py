"""Held-out RD in every channel order (utils/evaluation/colour.py) and the training folder's picture rules
(tools/training_data.py), on real photos and fake package trees: no network, no model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from utils.evaluation.anchors import code_image
from utils.evaluation.colour import ORDER_NAMES, AnchorCurve, ColourRow, colour_rows, reorder, spread_db, summarise
from tools.training_data import distinct_pictures, wallpaper_name

pytestmark = pytest.mark.usefixtures("one_thread")
QUALITIES = (5, 15, 30, 50, 70, 90)


def test_orders_are_the_six_permutations_named_by_their_channels():
    rgb = photo("astronaut")[:8, :8]
    assert ORDER_NAMES == ("RGB", "RBG", "GRB", "GBR", "BRG", "BGR")
    assert np.array_equal(reorder(rgb, (0, 1, 2)), rgb)
    assert np.array_equal(reorder(rgb, (1, 0, 2))[..., 0], rgb[..., 1])  # green first


def test_anchor_curve_interpolates_inside_its_sweep_and_refuses_outside():
    curve = AnchorCurve(bpp=np.array([0.25, 0.5, 1.0]), psnr=np.array([25.0, 28.0, 31.0]))
    assert curve.rate_at(28.0) == pytest.approx(0.5)
    assert curve.rate_at(26.5) == pytest.approx(math.sqrt(0.25 * 0.5))  # linear in log-rate
    assert curve.psnr_at(math.sqrt(0.5)) == pytest.approx(29.5)
    assert math.isnan(curve.rate_at(24.0)) and math.isnan(curve.psnr_at(2.0))


def test_the_anchor_against_itself_is_at_zero_and_a_colour_biased_coder_has_a_spread():
    rgb = photo("chelsea")[100:228, 200:360]
    photos = {"chelsea": rgb}
    anchors = {("chelsea", o): AnchorCurve.sweep("jpeg", reorder(rgb, ["RGB".index(c) for c in o]), QUALITIES)
               for o in ORDER_NAMES}

    def jpeg_at_50(image):
        coded = code_image("jpeg", image, 50)
        return coded.num_bytes * 8 / (image.shape[0] * image.shape[1]), coded.rgb

    rows = colour_rows(jpeg_at_50, photos, anchors)
    summary = summarise(rows)
    assert len(rows) == 6 and summary["rows_in_anchor_range"] == 6
    assert abs(summary["rate_vs_anchor_pct"]) < 0.5 and abs(summary["delta_psnr_vs_anchor"]) < 0.05

    def loses_green(image):  # a coder that learned a palette: the second channel comes back flat
        out = image.copy()
        out[..., 1] = 128
        return 1.0, out

    spread = spread_db(colour_rows(loses_green, photos, anchors))
    assert spread["chelsea"] > 3.0  # whichever channel lands second decides the PSNR


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_one_picture_per_wallpaper_the_largest_without_screenshots_or_small_tiles(tmp_path):
    kde = tmp_path / "usr/share/wallpapers/Path/contents"
    _png(kde / "images/1280x800.png", (1280, 800), (1, 2, 3))
    _png(kde / "images/2560x1600.png", (2560, 1600), (1, 2, 3))
    _png(kde / "images_dark/1280x800.png", (1280, 800), (0, 0, 0))
    _png(kde / "screenshot.png", (1200, 800), (9, 9, 9))
    _png(tmp_path / "usr/share/backgrounds/gnome/vnc-l.png", (256, 256), (5, 5, 5))
    _png(tmp_path / "usr/share/backgrounds/gnome/wood-d.png", (600, 600), (5, 5, 5))
    found = distinct_pictures(tmp_path, "plasma-workspace-wallpapers")
    assert {k: v.name for k, v in found.items()} == {
        "plasma-Path": "2560x1600.png", "plasma-Path-dark": "1280x800.png", "plasma-wood-d": "wood-d.png"}
    assert wallpaper_name("gnome-backgrounds", Path("usr/share/backgrounds/gnome/wood-d.webp")) == "gnome-wood-d"


def test_rd_loss_is_the_training_objective():
    row = ColourRow("photo", "RGB", bpp=0.5, psnr=30.0, anchor_bpp=float("nan"), anchor_psnr=float("nan"))
    assert row.rd_loss(0.01) == pytest.approx(0.5 + 0.01 * 255**2 * 1e-3)
    assert math.isnan(summarise([row])["rd_loss"]) and summarise([row], 0.01)["rd_loss"] == pytest.approx(row.rd_loss(0.01))

