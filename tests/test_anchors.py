"""Classical anchors measure real file sizes and sane quality, and write CompressAI-style results."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tools.anchors import main as anchors_main
from utils.evaluation.anchors import CODECS, code_image, codec_unavailable, evaluate_codecs, match_bitrate, match_quality
from utils.errors import UserError
from utils.image_io import to_tensor, write_png
from utils.metrics import bpp_from_bytes, psnr
from utils.evaluation.results import read_results


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.ascontiguousarray(data.chelsea()[60:124, 150:246])  # 64x96 cat fur and face


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_code_image_reports_the_real_file_size(crop, codec):
    coded = code_image(codec, crop, 75)
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format=CODECS[codec].pillow_format, **CODECS[codec].save_options(75))
    assert coded.num_bytes == len(buffer.getvalue())
    assert coded.rgb.shape == crop.shape and coded.rgb.dtype == np.uint8
    assert 25.0 < psnr(to_tensor(crop), to_tensor(coded.rgb)) < 50.0
    assert coded.encode_s >= 0 and coded.decode_s >= 0


def test_higher_quality_costs_more_bits_and_gives_higher_psnr(crop):
    low, high = code_image("jpeg", crop, 20), code_image("jpeg", crop, 90)
    assert high.num_bytes > low.num_bytes
    assert psnr(to_tensor(crop), to_tensor(high.rgb)) > psnr(to_tensor(crop), to_tensor(low.rgb)) + 3


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_match_bitrate_gets_near_the_target(crop, codec):
    target = 1.5
    coded = match_bitrate(codec, crop, target)
    bpp = bpp_from_bytes(coded.num_bytes, *crop.shape[:2])
    assert bpp == pytest.approx(target, rel=0.1)
    quality = match_quality(codec, crop, target)
    for neighbour in (quality - 1, quality + 1):  # no neighbouring quality is closer
        other = bpp_from_bytes(code_image(codec, crop, neighbour).num_bytes, *crop.shape[:2])
        assert abs(bpp - target) <= abs(other - target)


def test_unknown_codec_is_a_user_error(crop):
    with pytest.raises(UserError, match="unknown codec"):
        code_image("jpeg3000", crop, 50)


def test_missing_plugin_is_a_one_line_notice(monkeypatch):
    codec_unavailable.cache_clear()
    monkeypatch.setitem(CODECS, "jpeg-xl", dataclasses.replace(CODECS["jpeg-xl"], pillow_format="NOT-INSTALLED"))
    try:
        reason = codec_unavailable("jpeg-xl")
    finally:
        codec_unavailable.cache_clear()
    assert reason is not None and "pip install pillow-jxl-plugin" in reason and "\n" not in reason


def test_evaluate_averages_one_point_per_quality(tmp_path, crop):
    write_png(tmp_path / "a.png", crop)
    write_png(tmp_path / "b.png", crop[:, ::-1])
    results = evaluate_codecs([tmp_path / "a.png", tmp_path / "b.png"], ["jpeg"], [30, 60], log=lambda _: None)
    points = results["jpeg"]
    assert points["quality"] == [30.0, 60.0]
    single = code_image("jpeg", crop, 30)
    mirrored = code_image("jpeg", np.ascontiguousarray(crop[:, ::-1]), 30)
    expected_bpp = (bpp_from_bytes(single.num_bytes, 64, 96) + bpp_from_bytes(mirrored.num_bytes, 64, 96)) / 2
    assert points["bpp"][0] == pytest.approx(expected_bpp)
    assert points["bpp"][0] < points["bpp"][1]
    assert all(0 < v < 1 for v in points["ms-ssim-rgb"])


def test_tool_writes_one_json_per_codec(tmp_path, crop, capsys):
    write_png(tmp_path / "images" / "cat.png", crop)
    argv = [str(tmp_path / "images"), "-o", str(tmp_path / "out"), "--codecs", "jpeg", "webp"]
    assert anchors_main(argv + ["--qualities", "20", "50", "80"]) == 0
    for codec, label in (("jpeg", "JPEG"), ("webp", "WebP")):
        curve = read_results(tmp_path / "out" / f"{codec}.json")
        assert curve["name"] == label
        assert len(curve["results"]["bpp"]) == 3
        assert all(20 < p < 50 for p in curve["results"]["psnr-rgb"])
    table = capsys.readouterr().out
    assert "jpeg" in table and "webp" in table
