"""Results files follow CompressAI's eval_model layout and bad files are one-line UserErrors."""

import json

import pytest

from utils.errors import UserError
from utils.evaluation.results import read_results, write_results


def _points():
    return {
        "psnr-rgb": [34.0, 28.0, 31.0],
        "ms-ssim-rgb": [0.99, 0.9, 0.97],
        "bpp": [1.2, 0.2, 0.5],
        "encoding_time": [0.1, 0.1, 0.1],
        "decoding_time": [0.05, 0.05, 0.05],
    }


def test_written_file_has_the_compressai_layout(tmp_path):
    write_results(tmp_path / "sub" / "x.json", "JPEG", "libjpeg", _points())
    document = json.loads((tmp_path / "sub" / "x.json").read_text())
    assert document["name"] == "JPEG" and document["description"] == "libjpeg"
    assert list(document["results"]) == ["psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time"]


def test_read_sorts_points_by_bpp_and_adds_ms_ssim_db(tmp_path):
    write_results(tmp_path / "x.json", "JPEG", "", _points())
    results = read_results(tmp_path / "x.json")["results"]
    assert results["bpp"] == [0.2, 0.5, 1.2]
    assert results["psnr-rgb"] == [28.0, 31.0, 34.0]
    assert results["ms-ssim-rgb-db"] == pytest.approx([10.0, 15.228787, 20.0])


def test_old_compressai_key_names_are_accepted(tmp_path):
    document = {"name": "bmshj2018", "results": {"psnr": [30.0, 32.0], "ms-ssim": [0.95, 0.97], "bpp": [0.3, 0.6]}}
    (tmp_path / "old.json").write_text(json.dumps(document))
    curve = read_results(tmp_path / "old.json")
    assert curve["results"]["psnr-rgb"] == [30.0, 32.0]
    assert "ms-ssim-rgb" in curve["results"]


def test_missing_name_falls_back_to_the_file_stem(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({"results": {"psnr-rgb": [30.0], "bpp": [0.3]}}))
    assert read_results(tmp_path / "mine.json")["name"] == "mine"


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not a readable JSON"),
        ("[1, 2]", "not a results file"),
        ('{"results": {"bpp": [0.1]}}', "missing psnr-rgb"),
        ('{"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30]}}', "differ in length"),
        ('{"results": {"bpp": [0.1], "psnr-rgb": ["high"]}}', "list of numbers"),
    ],
)
def test_bad_files_are_one_line_user_errors(tmp_path, text, words):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(UserError, match=words) as info:
        read_results(tmp_path / "bad.json")
    assert "bad.json" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_results(tmp_path / "none.json")
