"""eval.py (one RD point per checkpoint) and test.py (per-image files and tables) on real photographs."""

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from models import ICWEM, get_config, load_checkpoint
from tests.conftest import load_script, photo
from utils.coding.bitstream import read_file
from utils.coding.codec import decode_bitstream, encode_image
from utils.errors import UserError
from utils.device import select_device
from utils.evaluation.measure import estimate, mean_fields, output_names
from utils.image_io import read_image
from utils.padding import pad_image
from utils.evaluation.results import read_results



EVAL, TEST, CODEC = load_script("eval"), load_script("test"), load_script("codec")


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(script, argv) -> str:
    """Call a script's ``main`` and return what it printed on stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert script.main([str(arg) for arg in argv]) == 0
    return out.getvalue()


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory) -> Path:
    """A second rate point: the same configuration, freshly initialised (seeded), saved as train.py does."""
    torch.manual_seed(0)
    model = ICWEM(**get_config("tiny"))
    path = tmp_path_factory.mktemp("checkpoint") / "icwem-tiny-init.pth.tar"
    torch.save({"state_dict": model.state_dict(), "model_config": get_config("tiny")}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two crops of real photographs, one in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(np.ascontiguousarray(photo("astronaut")[100:137, 150:203])).save(root / "astronaut.png")
    (root / "more").mkdir()
    Image.fromarray(np.ascontiguousarray(photo("coffee")[200:248, 300:364])).save(root / "more" / "coffee.png")
    return root


@pytest.fixture(scope="module")
def odd_inputs(tmp_path_factory) -> Path:
    """Every kind of input read_image converts, written with Pillow, with names that collide by stem."""
    root = tmp_path_factory.mktemp("odd")
    rgb = photo("chelsea")[100:137, 120:173]  # 37x53
    (root / "sub1").mkdir()
    (root / "sub2").mkdir()
    Image.fromarray(np.ascontiguousarray(rgb[:1, :1])).save(root / "img.png")  # 1x1
    Image.fromarray(np.ascontiguousarray(rgb)).convert("CMYK").save(root / "img.jpg", quality=95)
    Image.fromarray(np.ascontiguousarray(rgb)).quantize(32).save(root / "sub1" / "img.png")  # palette
    alpha = np.dstack([rgb, np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None].repeat(rgb.shape[0], 0)])
    Image.fromarray(np.ascontiguousarray(alpha)).save(root / "sub2" / "img.png")  # RGBA
    Image.fromarray(np.ascontiguousarray(rgb[..., 1])).save(root / "gray.png")  # L
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(root / "deep.png")  # 16-bit grayscale
    rotated = Image.fromarray(np.ascontiguousarray(rgb[:20, :48]))  # stored 48 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": shown 20 wide, 48 high
    rotated.save(root / "rotated.jpg", exif=exif, quality=95)
    return root


ODD_NAMES = {
    "img.png": "img_png",
    "img.jpg": "img_jpg",
    "sub1/img.png": "sub1__img",
    "sub2/img.png": "sub2__img",
    "gray.png": "gray",
    "deep.png": "deep",
    "rotated.jpg": "rotated",
}


@pytest.fixture(scope="module")
def test_run(tmp_path_factory, checkpoint, odd_inputs):
    """test.py --real over the odd inputs: (output folder, what it printed)."""
    out = tmp_path_factory.mktemp("test-py") / "out"
    printed = _run(TEST, ["--checkpoint", checkpoint, "--data", odd_inputs, "--real", "--save-dir", out])
    return out, printed


def _displayed_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).size


def _strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ------------------------------------------------------------------------------------------ test.py
def test_test_py_writes_a_bitstream_and_its_decoding_per_image(test_run):
    out, _ = test_run
    expected = {f"{name}{suffix}" for name in ODD_NAMES.values() for suffix in (".icwem", ".png")}
    assert {p.name for p in out.iterdir()} == expected | {"results.csv", "results.json"}


def test_test_py_outputs_have_the_inputs_width_and_height(test_run, odd_inputs):
    out, _ = test_run
    for relative, name in ODD_NAMES.items():
        size = _displayed_size(odd_inputs / relative)
        bs = read_file(out / f"{name}.icwem")
        assert (bs.width, bs.height) == size, relative
        with Image.open(out / f"{name}.png") as png:
            assert png.size == size and png.mode == "RGB", relative


def test_test_py_png_is_decoded_from_the_file_it_wrote(test_run, checkpoint, odd_inputs):
    out, _ = test_run
    model = load_checkpoint(checkpoint)
    for name in ("gray", "sub2__img"):
        decoded, _ = decode_bitstream(model, read_file(out / f"{name}.icwem"))
        with Image.open(out / f"{name}.png") as png:
            assert np.array_equal(np.asarray(png), decoded)


def test_test_py_tables_count_every_byte_of_each_file(test_run):
    out, _ = test_run
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["name", "height", "width", "bytes", "bpp"]
    assert sorted(row["name"] for row in rows) == sorted(ODD_NAMES.values())
    for row in rows:
        num_bytes = (out / f"{row['name']}.icwem").stat().st_size
        assert int(row["bytes"]) == num_bytes
        assert float(row["bpp"]) == pytest.approx(8 * num_bytes / (int(row["height"]) * int(row["width"])))
        assert float(row["bpp_estimate"]) > 0

    document = _strict_json(out / "results.json")
    assert [image["name"] for image in document["images"]] == [row["name"] for row in rows]
    assert "header and checksum included" in document["rate"]
    assert document["mean"]["bpp"] == pytest.approx(np.mean([float(row["bpp"]) for row in rows]))
    one_pixel = next(image for image in document["images"] if image["name"] == "img_png")
    assert one_pixel["ms_ssim"] is None  # undefined below 11 px: null, not NaN
    assert document["mean"]["ms_ssim"] is not None


def test_test_py_prints_every_row_and_the_mean(test_run):
    _, printed = test_run
    lines = printed.splitlines()
    assert any(line.startswith("image ") and "enc s" in line and "dec s" in line for line in lines)
    for name in ODD_NAMES.values():
        assert any(line.startswith(f"{name} ") for line in lines), name
    assert any(line.startswith("mean (7 images)") for line in lines)


def test_codec_py_writes_the_same_bytes_and_pixels_as_test_py(test_run, odd_inputs, checkpoint, tmp_path):
    out, _ = test_run
    source = odd_inputs / "rotated.jpg"
    _run(CODEC, ["encode", source, "-o", tmp_path / "rotated.icwem", "--checkpoint", checkpoint])
    _run(CODEC, ["decode", tmp_path / "rotated.icwem", "-o", tmp_path / "rotated.png", "--checkpoint", checkpoint])
    assert (tmp_path / "rotated.icwem").read_bytes() == (out / "rotated.icwem").read_bytes()
    with Image.open(tmp_path / "rotated.png") as mine, Image.open(out / "rotated.png") as theirs:
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))
    assert (tmp_path / "rotated.png").read_bytes() == (out / "rotated.png").read_bytes()


def test_test_py_without_real_writes_the_estimate_table_only(photos, checkpoint, tmp_path):
    printed = _run(TEST, ["--checkpoint", checkpoint, "--data", photos, "--save-dir", tmp_path])
    assert "need --real" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json"]
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == ["astronaut", "more__coffee"]
    assert "bytes" not in rows[0] and "bpp_estimate" not in rows[0]


def test_output_names_never_collide(tmp_path):
    paths = [tmp_path / p for p in ("a/img.png", "b/img.png", "img.png", "img.jpg", "a__img.png", "Cat.png", "cat.PNG")]
    names = output_names(paths, tmp_path)
    assert names[:4] == ["a__img_png", "b__img", "img_png", "img_jpg"]
    assert names[4] == "a__img_png-2"
    assert len({name.lower() for name in names}) == len(names)


# ------------------------------------------------------------------------------------------ eval.py
def test_eval_py_gives_one_real_point_per_checkpoint(photos, checkpoint, other_checkpoint, tmp_path):
    output = tmp_path / "icwem.json"
    printed = _run(EVAL, ["--checkpoint", checkpoint, other_checkpoint, "--data", photos, "--real", "--output", output])
    assert "58-byte header and checksum included" in printed
    assert "ovh %" in printed and "enc s" in printed

    curve = read_results(output)
    assert curve["name"] == "ICWEM"
    raw = _strict_json(output)["results"]
    assert set(raw) == {"psnr-rgb", "ms-ssim-rgb", "ms-ssim-rgb-db", "bpp", "encoding_time", "decoding_time", "bpp-estimate"}
    assert all(len(values) == 2 for values in raw.values())

    model = load_checkpoint(checkpoint)  # the first point's bpp is the mean real file size per pixel
    sizes = [encode_image(model, read_image(path)[0])[1]["bpp"] for path in sorted(photos.rglob("*.png"))]
    assert raw["bpp"][0] == pytest.approx(np.mean(sizes))
    assert raw["bpp"][0] != pytest.approx(raw["bpp"][1])


def test_eval_py_estimate_is_the_likelihood_rate_of_the_original_size(photos, checkpoint, tmp_path):
    output = tmp_path / "estimate.json"
    printed = _run(EVAL, ["--checkpoint", checkpoint, "--data", photos, "--output", output])
    assert "estimated from the likelihoods" in printed and "ovh %" not in printed
    raw = _strict_json(output)["results"]
    assert "bpp-estimate" not in raw and len(raw["bpp"]) == 1

    model = load_checkpoint(checkpoint)
    rates = [estimate(model, read_image(path)[0])[0] for path in sorted(photos.rglob("*.png"))]
    assert raw["bpp"][0] == pytest.approx(np.mean(rates), rel=1e-5)


def test_estimate_divides_the_bits_by_the_original_pixel_count(checkpoint):
    model = load_checkpoint(checkpoint)
    rgb = np.ascontiguousarray(photo("astronaut")[100:137, 150:203])
    bpp, reconstruction, seconds = estimate(model, rgb)
    with torch.inference_mode():
        padded, _ = pad_image(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
        likelihoods = model(padded)["likelihoods"]
    bits = sum(float(-torch.log2(values).sum()) for values in likelihoods.values())
    assert bpp == pytest.approx(bits / (37 * 53), rel=1e-5)
    assert reconstruction.shape == rgb.shape and reconstruction.dtype == np.uint8
    assert seconds > 0


def test_mean_ignores_ms_ssim_where_undefined():
    rows = [
        {"bpp": 1.0, "psnr": 30.0, "ms_ssim": 0.9, "ms_ssim_db": 10.0, "encode_s": 1.0, "decode_s": 2.0},
        {"bpp": 3.0, "psnr": 40.0, "ms_ssim": float("nan"), "ms_ssim_db": float("nan"), "encode_s": 3.0, "decode_s": 4.0},
    ]
    mean = mean_fields(rows)
    assert mean == pytest.approx({"bpp": 2.0, "psnr": 35.0, "ms_ssim": 0.9, "ms_ssim_db": 10.0, "encode_s": 2.0, "decode_s": 3.0})


@pytest.mark.parametrize("layout", ["missing", "empty", "no-images"])
def test_eval_py_refuses_data_without_images(tmp_path, checkpoint, layout):
    data = tmp_path / "data"
    if layout != "missing":
        data.mkdir()
    if layout == "no-images":
        (data / "notes.txt").write_text("no pictures here")
    with pytest.raises(UserError, match=str(data)):
        EVAL.main(["--checkpoint", str(checkpoint), "--data", str(data)])


def test_eval_py_checks_every_checkpoint_before_starting(tmp_path, photos, checkpoint):
    with pytest.raises(UserError, match="checkpoint not found: .*missing.pth.tar"):
        EVAL.main(["--checkpoint", str(checkpoint), str(tmp_path / "missing.pth.tar"), "--data", str(photos)])


@pytest.mark.parametrize("script", ["test", "eval"])
def test_images_above_max_pixels_are_refused_before_coding(tmp_path, photos, checkpoint, script):
    argv = ["--checkpoint", str(checkpoint), "--data", str(photos), "--real", "--max-pixels", "100"]
    with pytest.raises(UserError, match="above the decode limit of 100 pixels; pass --max-pixels"):
        {"test": TEST, "eval": EVAL}[script].main(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_warns_and_runs_on_the_cpu(capsys):
    assert select_device(True) == torch.device("cpu")
    assert capsys.readouterr().err == "warning: --cuda given but CUDA is not available; running on the CPU\n"
