"""RD plots are written as PNG and PDF, and the BD table compares every curve with the anchor."""

import json

from tools.plot_rd import main as plot_main
from utils.evaluation.plots import bd_table, find_curve, format_bd_table, plot_rd
from utils.evaluation.results import write_results

RATES = [0.1, 0.2, 0.4, 0.8, 1.6]


def _curve(name, rate_scale=1.0, psnr_offset=0.0):
    psnr = [28.0, 30.0, 32.0, 34.0, 36.0]
    return {
        "name": name,
        "description": "",
        "results": {
            "bpp": [r * rate_scale for r in RATES],
            "psnr-rgb": [p + psnr_offset for p in psnr],
            "ms-ssim-rgb-db": [p / 2 + psnr_offset for p in psnr],
        },
    }


def test_plot_writes_png_and_pdf(tmp_path):
    written = plot_rd([_curve("a"), _curve("b", 0.9)], tmp_path / "figs" / "rd")
    assert [p.name for p in written] == ["rd.png", "rd.pdf"]
    assert (tmp_path / "figs" / "rd.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "figs" / "rd.pdf").read_bytes().startswith(b"%PDF")


def test_bd_table_against_the_anchor():
    curves = [_curve("anchor"), _curve("better", rate_scale=0.8), _curve("three-points")]
    curves[2]["results"] = {k: v[:3] for k, v in curves[2]["results"].items()}
    rows = bd_table(curves, anchor=find_curve(curves, "ANCHOR"))
    assert abs(rows[0]["bd_rate_psnr"]) < 1e-9
    assert abs(rows[1]["bd_rate_psnr"] + 20.0) < 1e-6
    assert abs(rows[1]["bd_rate_msssim"] + 20.0) < 1e-6
    assert rows[2]["bd_rate_psnr"] is None and "at least 4 points" in rows[2]["notes"][0]
    text = format_bd_table(rows, "anchor")
    assert "-20.00%" in text and "n/a" in text


def test_tool_accepts_an_anchor_path(tmp_path, capsys):
    for name, scale in (("a", 1.0), ("b", 0.9)):
        curve = _curve(name, rate_scale=scale)
        write_results(tmp_path / f"{name}.json", name, "", curve["results"])
    assert plot_main([str(tmp_path / "a.json"), "-o", str(tmp_path / "rd"), "--anchor", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "against 'b'" in out and "+11.11%" in out
    assert json.loads((tmp_path / "a.json").read_text())["name"] == "a"
