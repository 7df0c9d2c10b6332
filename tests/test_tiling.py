"""Row-band streaming (models/tiling.py, the blocks' ``stages``): equal to the whole image at every band
boundary, bitstreams independent of the band height, memory bounded by the band."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo
from models import ICWEM, load_checkpoint
from models.blocks import ConvTransBlock, StridedConv, StridedResidualBlock, UpsamplingResidualBlock
from models.enhance import EnhBlock
from models.inn import InvertibleNetwork
from models.tiling import (
    BAND_PIXELS, MIN_BAND_ROWS, Stage, chain_halo, conv_step, in_onednn_layout, latent_band_rows, map_height,
    run_stages, stream_rows,
)
from utils.coding.bitstream import pack, unpack
from utils.coding.codec import decode_bitstream, encode_image

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4  # float rounding: different band heights may pick different convolution algorithms


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Random non-trivial weights (several blocks start as the identity or zero map)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.eval()


def _streamed_vs_whole(stage: Stage, x: torch.Tensor, rows: int) -> float:
    with torch.no_grad():
        return float((stream_rows([stage], x, rows) - stage.fn(x)).abs().max())


# ------------------------------------------------------------------------- one stage, every boundary
@pytest.mark.parametrize("shifted", [False, True])
def test_tcb_bands_equal_the_whole_map_at_every_boundary_position(shifted):
    """Bands of 1..17 rows put the band edges at every row of the 8-row windows and their shift."""
    block = _perturbed(ConvTransBlock(dim=8, head_dim=4, window_size=8, shifted=shifted))
    (stage,) = block.stages()
    x = torch.randn(1, 16, 45, 19)  # odd sides: padded windows at the bottom and right
    worst = max(_streamed_vs_whole(stage, x, rows) for rows in range(1, 18))
    assert worst <= 1e-5


@pytest.mark.parametrize("shifted", [False, True])
def test_a_tcb_on_a_channels_last_map_equals_it_on_nchw(shifted):
    """Inference runs g_a and g_s channels-last (``in_onednn_layout``): the TCB then computes its
    halves as two convolutions and hands back a channels-last map with the same values."""
    block = _perturbed(ConvTransBlock(dim=8, head_dim=4, window_size=8, shifted=shifted))
    x = torch.randn(1, 16, 21, 19)
    with torch.no_grad():
        out = block(x.contiguous(memory_format=torch.channels_last))
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        assert (out - block(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("make", [
    lambda: StridedResidualBlock(6, 8, stride=2),
    lambda: UpsamplingResidualBlock(6, 8, 2),
    lambda: StridedConv(6, 8),
])
def test_resampling_bands_equal_the_whole_map(make):
    (stage,) = _perturbed(make()).stages()
    x = torch.randn(1, 6, 38, 11)
    assert max(_streamed_vs_whole(stage, x, rows) for rows in (1, 2, 3, 5, 8, 13)) <= 1e-5


def test_enh_and_inn_bands_equal_the_whole_image():
    enh = _perturbed(EnhBlock(channels=8, growth=4))
    inn = _perturbed(InvertibleNetwork())
    x = torch.rand(1, 3, 200, 9)
    for stage in (Stage(enh, conv_step(enh.context_rows())), Stage(inn, conv_step(inn.context_rows())),
                  Stage(inn.reverse, conv_step(inn.context_rows()))):
        assert max(_streamed_vs_whole(stage, x, rows) for rows in (7, 30, 64)) <= 1e-5


@pytest.mark.parametrize("clamp", [False, True])
def test_enh_streamed_conv_by_conv_equals_the_block(clamp):
    """One stage per convolution (channels-last maps carrying x for the residual) gives the block's
    values at every band height, clamped like the decoder's last step, as a contiguous NCHW map."""
    enh = _perturbed(EnhBlock(channels=8, growth=4))
    x = torch.rand(1, 3, 97, 9)
    with torch.no_grad():
        whole = enh(x).clamp(0, 1) if clamp else enh(x)
        for rows in (1, 2, 5, 16, 40):
            out = stream_rows(in_onednn_layout(enh.stages(clamp)), x, rows)
            assert out.is_contiguous() and (out - whole).abs().max() <= 1e-5, rows


@pytest.mark.parametrize("reverse", [False, True])
def test_inn_streamed_operation_by_operation_equals_the_network(reverse):
    inn = _perturbed(InvertibleNetwork())
    x = torch.rand(1, 3, 150, 9)
    with torch.no_grad():
        whole = inn.reverse(x) if reverse else inn(x)
        for rows in (1, 3, 10, 33):
            assert (stream_rows(inn.stages(reverse), x, rows) - whole).abs().max() <= 1e-5, rows


def test_a_too_small_context_is_caught():
    """The tests above can fail: claiming a radius one row short of the truth breaks equality."""
    enh = _perturbed(EnhBlock(channels=8, growth=4))
    x = torch.rand(1, 3, 120, 9)
    exact = _streamed_vs_whole(Stage(enh, conv_step(enh.context_rows())), x, 16)
    short = _streamed_vs_whole(Stage(enh, conv_step(enh.context_rows() - 1)), x, 16)
    assert exact <= 1e-5 < 10 * exact < short


def test_halo_derivation_of_the_published_architecture():
    model = ICWEM()
    assert model.enh.forw_enh.context_rows() == 11  # 5 + 1 + 5 rows of 3×3 convolutions
    assert model.inv.context_rows() == 72  # 3 couplings × 2 subnets × (k − 1), k = 5, 5, 3, 3
    assert chain_halo(model.analysis_stages()) == 240  # 15 rows of y
    assert chain_halo(model.synthesis_stages(clamp=True)) * 16 == 253


# ------------------------------------------------------------------------- the tiny model end to end
@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A 320×192 crop of a real photograph (a multiple of 64, as the model takes)."""
    rgb = photo("astronaut")[37:357, 101:293]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(autouse=True)
def _default_tile_afterwards(tiny_model):
    """The tests below change the shared model's band height; the other modules expect the default."""
    yield
    tiny_model.tile = ICWEM.tile
    tiny_model.latent_tile = ICWEM.latent_tile


def _with_tile(model, tile: int):
    model.tile = tile
    return model


def test_streamed_analysis_and_synthesis_equal_the_whole_image(tiny_model, image, tile=40):
    with torch.inference_mode():
        y = _with_tile(tiny_model, 0).analysis(image)
        x_hat = tiny_model.synthesis(y, clamp=True)
        assert (_with_tile(tiny_model, tile).analysis(image) - y).abs().max() <= TOLERANCE
        assert (tiny_model.synthesis(y, clamp=True) - x_hat).abs().max() <= TOLERANCE


def test_inference_equals_training_on_the_same_blocks(tiny_model, image):
    """Inference runs the blocks' stages channels-last (models/tiling.py ``in_onednn_layout``) even on
    the whole image; training runs the same blocks' ``forward`` on NCHW maps. Both give y and x̂ to float
    rounding, in NCHW, whatever autograd's state."""
    with torch.no_grad():
        y = _with_tile(tiny_model, 0).analysis(image, inference=True)
        x_hat = tiny_model.synthesis(y, clamp=True, inference=True)
        assert y.is_contiguous() and x_hat.is_contiguous()
        assert (tiny_model.analysis(image, inference=False) - y).abs().max() <= TOLERANCE
        assert (tiny_model.synthesis(y, clamp=True, inference=False) - x_hat).abs().max() <= TOLERANCE


def test_each_block_forward_is_its_stages_on_the_whole_map(tiny_model, image):
    """One definition per block: ``forward`` runs the very stages the row-band engine streams."""
    swatten, net = tiny_model.atten_scale[2][0], tiny_model.cc_mean_transforms[1]
    blocks = [(tiny_model.enh.forw_enh, image), (swatten, torch.randn(1, swatten.in_conv.in_channels, 20, 12)),
              (net, torch.randn(1, net[0].in_channels, 20, 12))]
    with torch.no_grad():
        for block, x in blocks:
            assert torch.equal(block(x), run_stages(block.stages(), x))
        assert torch.equal(tiny_model.inv(image), run_stages(tiny_model.inv.stages(), image))
        assert torch.equal(tiny_model.inv.reverse(image), run_stages(tiny_model.inv.stages(reverse=True), image))


def test_compress_writes_the_same_bytes_at_any_band_height(tiny_model, image):
    with torch.inference_mode():
        whole = _with_tile(tiny_model, 0).compress(image)["strings"]
        for tile in (64, 136):
            assert _with_tile(tiny_model, tile).compress(image)["strings"] == whole


def test_a_file_encoded_whole_decodes_streamed_and_the_reverse(tiny_model):
    rgb = np.ascontiguousarray(photo("coffee")[:137, :201])  # odd sizes: padded to 192×256
    decoded = {}
    for enc in (0, 64):
        data = pack(encode_image(_with_tile(tiny_model, enc), rgb)[0])
        for dec in (0, 64):
            decoded[enc, dec] = decode_bitstream(_with_tile(tiny_model, dec), unpack(data))[0].astype(int)
    reference = decoded[0, 0]
    for pair, picture in decoded.items():
        assert picture.shape == rgb.shape
        # x̂ agrees to float rounding before 8-bit quantisation; a value on a rounding edge may move.
        assert np.abs(picture - reference).max() <= 1, pair
        assert np.mean(picture != reference) < 1e-3, pair


def test_a_streamed_decode_drops_the_float64_copy_and_the_next_rebuilds_it(tiny_model, image):
    """A large latent's synthesis gets the parameter networks' float64 copy's memory; decoding again
    builds the copy again and gives the same picture."""
    from models.entropy.parameters import _NETS

    tiny_model.latent_tile = 8  # the 20×12 latent in bands of 8 rows, as a large image would be
    with torch.inference_mode():
        out = _with_tile(tiny_model, 64).compress(image)
        assert tiny_model in _NETS
        first = tiny_model.decompress(out["strings"], out["shape"])
        assert tiny_model not in _NETS
        again = tiny_model.decompress(out["strings"], out["shape"])
    assert torch.equal(first["x_hat"], again["x_hat"]) and first["checks"] == again["checks"]


def test_inference_streams_above_the_band_height_and_training_never(tiny_model, image, monkeypatch):
    import models.icwem as icwem

    calls = []
    monkeypatch.setattr(icwem, "stream_rows", lambda stages, x, rows: calls.append(rows) or torch.zeros(0))
    with torch.no_grad():
        _with_tile(tiny_model, 64).analysis(image, inference=True)
        _with_tile(tiny_model, 320).analysis(image, inference=True)  # 320 rows: one band is the whole image
        _with_tile(tiny_model, 0).analysis(image, inference=True)
        assert calls == [64]
        _with_tile(tiny_model, 64).analysis(image, inference=False)  # training: never streamed, autograd or not
    assert calls == [64]


def test_stages_see_bands_not_the_image(tiny_model):
    """Memory is bounded by the band: no stage ever gets more rows than a band and its context."""
    heights = []
    stages = tiny_model.analysis_stages()
    for stage in stages:
        fn = stage.fn
        stage.fn = lambda x, fn=fn: heights.append(map_height(x)) or fn(x)
    x = torch.rand(1, 3, 640, 64)
    with torch.no_grad():
        stream_rows(stages, x, 64)
    # A band, the rows a stage waits for beyond it, and the INN's context on both sides (the widest).
    assert max(heights) <= 2 * 64 + 2 * 72 < x.shape[-2]


# ------------------------------------------------------------------------- --tile in the scripts
def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_codec_tile_flag_gives_the_same_file_and_picture(tmp_path, tiny_checkpoint, capsys):
    codec = _script("codec")
    Image.fromarray(np.ascontiguousarray(photo("chelsea")[:131, :75])).save(tmp_path / "in.png")
    outputs = {}
    for tile in ("0", "64"):
        icwem, png = tmp_path / f"{tile}.icwem", tmp_path / f"{tile}.png"
        assert codec.main(["encode", str(tmp_path / "in.png"), "-o", str(icwem), "--checkpoint", str(tiny_checkpoint), "--tile", tile]) == 0
        assert codec.main(["decode", str(icwem), "-o", str(png), "--checkpoint", str(tiny_checkpoint), "--tile", tile]) == 0
        with Image.open(png) as decoded:
            outputs[tile] = (icwem.read_bytes(), np.asarray(decoded).astype(int))
    assert outputs["0"][0] == outputs["64"][0]
    assert np.abs(outputs["0"][1] - outputs["64"][1]).max() <= 1


def test_a_negative_tile_is_refused(tiny_checkpoint, capsys):
    codec = _script("codec")
    with pytest.raises(SystemExit):
        codec.main(["encode", "in.png", "-o", "out.icwem", "--checkpoint", str(tiny_checkpoint), "--tile", "-1"])
    assert "--tile: '-1' is not a number of rows" in capsys.readouterr().err


def test_default_bands_hold_about_the_same_pixels_at_any_width(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    assert model.tile is None
    with torch.no_grad():
        assert model._band_rows(4032, 6016) == BAND_PIXELS // 6016
        assert model._band_rows(512, 768) == 0  # a Kodak-sized image fits in one band: whole
        assert model._band_rows(4096, 64 * BAND_PIXELS) == MIN_BAND_ROWS


# ------------------------------------------------------------------------- the entropy-parameter path
def _parameters(model, latents, latent_tile: int):
    """ẑ's hyper-synthesis and every slice's ŷ, μ, σ through the portable path, with the encoder's
    symbols (teacher-forced, so band heights are compared on the same inputs)."""
    y, z_hat = latents
    model.latent_tile = latent_tile
    with torch.inference_mode():
        nets, z_in = model._parameter_path(z_hat)
        slices = y.double().chunk(model.num_slices, dim=1)
        hyper = model._hyper(nets, z_in)
        rows = model._latent_rows(*y.shape[-2:])
        out = model._code_slices(*hyper, tuple(y.shape[-2:]), lambda i, mu, sigma: torch.round(slices[i] - mu) + mu,
                                 nets, rows=rows)
    return (*hyper, *out)


def test_entropy_parameter_bands_equal_the_whole_latent(tiny_model, image):
    """Bands of 1..13 latent rows (the 20-row latent cut at every row of SWAtten's 8-row windows and
    their shift): float64 σ and μ equal the whole latent's to float64 rounding, so the indexes and the
    bitstream do not depend on the band height."""
    with torch.inference_mode():
        y = tiny_model.analysis(image)
        z = tiny_model.h_a(y)
        z_hat = tiny_model.entropy_bottleneck.decompress(tiny_model.entropy_bottleneck.compress(z), z.shape[-2:])
        strings = tiny_model.compress(image)["strings"]
    whole = _parameters(tiny_model, (y, z_hat), 0)
    slice_ch = whole[3].shape[1] // tiny_model.num_slices
    for rows in (1, 3, 4, 8, 13):
        banded = _parameters(tiny_model, (y, z_hat), rows)
        for name, a, b in zip(("means", "scales"), whole[:2], banded[:2]):
            assert (a - b).abs().max() <= 1e-14, (rows, name)  # <= 1.0e-15 measured
        assert (whole[4] - banded[4]).abs().max() <= 1e-14 * whole[4].abs().max(), rows  # σ
        # μ in float64 but the last slice's (the model's own precision: it decides no index)
        assert (whole[3] - banded[3])[:, :-slice_ch].abs().max() <= 1e-14, rows
        assert (whole[3] - banded[3]).abs().max() <= TOLERANCE, rows
    with torch.inference_mode():
        assert tiny_model.compress(image)["strings"] == strings  # at the last band height, 13 rows


def test_a_file_coded_with_latent_bands_decodes_whole_and_the_reverse(tiny_model, image):
    with torch.inference_mode():
        for enc, dec in ((4, 0), (0, 5)):
            tiny_model.latent_tile = enc
            out = tiny_model.compress(image)
            tiny_model.latent_tile = dec
            assert tiny_model.decompress(out["strings"], out["shape"])["checks"] == out["checks"]


def test_swatten_stages_see_bands_not_the_latent(tiny_model):
    heights = []
    stages = tiny_model.atten_scale[2].stages()
    for stage in stages:
        fn = stage.fn
        stage.fn = lambda x, fn=fn: heights.append(map_height(x)) or fn(x)
    x = torch.randn(1, tiny_model.atten_scale[2][0].in_conv.in_channels, 200, 12)
    with torch.no_grad():
        streamed = stream_rows(stages, x, 16)
        assert (streamed - tiny_model.atten_scale[2](x)).abs().max() <= TOLERANCE
    # A band and at most 3/2 band more rows (the stream's largest piece), plus the windows' context.
    assert max(heights) <= 2 * 16 + 3 * 8 < x.shape[-2]


def test_latent_bands_follow_the_width_and_turn_off_with_tile_0():
    assert latent_band_rows(0, 375) == 0
    assert latent_band_rows(None, 48) >= 32  # 768×512: one band, the whole latent
    assert latent_band_rows(None, 375) * 375 <= 2 * (1 << 13)
