"""The CUDA path, checked on the CPU: mixed precision that cannot poison training, attention without host
synchronisations, the loader's uint8 batches from persistent workers, the TF32 policy, where coding computes
the entropy parameters, and ``benchmarks/gpu_check.py --smoke`` (the script a lent GPU runs).

Autocast runs on the CPU as on CUDA (``--amp`` is accepted on both), so the mixed-precision paths are
tested here in both 16-bit types; fp16 is emulated on most CPUs and slow, so those tests are small.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import write_photo
from losses import RateDistortionLoss
from models import ICWEM, get_config
from models.attention import MASKED_LOGIT, SwinBlock, WindowAttention, _blocked_pairs
from utils.training import TrainConfig, train, train_step
from utils.device import cpu_computes_natively
from utils.training.setup import new_state

pytestmark = pytest.mark.usefixtures("one_thread")

HALF_TYPES = [torch.float16, torch.bfloat16]


class HostReads(TorchDispatchMode):
    """Counts the operators that make the host wait for the device: reading a value (``.item()``,
    ``if tensor``) or a data-dependent shape (``nonzero``, boolean indexing)."""

    WAITING = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero")

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.WAITING):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------------ attention
# A 3×13 map in 8×8 shifted windows: after padding and the cyclic shift, some padded queries have no
# key they may attend to (every key is padding or in another region).
ALL_BLOCKED = (3, 13)


def test_the_size_has_padded_queries_whose_keys_are_all_blocked():
    _, blocked = _blocked_pairs(*ALL_BLOCKED, 8, 4)
    assert blocked.all(dim=-1).any()


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_all_blocked_windows_stay_finite_under_autocast(dtype):
    torch.manual_seed(0)
    attn = WindowAttention(dim=16, head_dim=8, window_size=8, shifted=True)
    x = torch.randn(2, *ALL_BLOCKED, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        out = attn(x)
    out.float().square().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(attn.relative_position_params.grad).all()


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_masks_survive_the_cast_to_16_bits_with_finite_softmax_rows(dtype):
    """What a CUDA kernel computes from the mask autocast hands it: bias + mask cast to 16 bits, added to
    the logits, a plain softmax. Every row stays finite, fully blocked ones included (float32's most
    negative value, the mask before, is -inf in fp16 and such a row NaN), and real rows give a blocked
    key exactly zero weight."""
    torch.manual_seed(0)
    attn = WindowAttention(dim=16, head_dim=8, window_size=8, shifted=True)
    with torch.no_grad():
        attn(torch.randn(1, *ALL_BLOCKED, 16))
    (chunk,) = next(iter(attn._mask_cache.values()))
    _, mask = chunk
    logits = 30 * torch.randn(mask.shape[0], attn.num_heads, *mask.shape[-2:])  # large logits of either sign
    masked = (logits + (attn.relative_bias() + mask)).to(dtype)
    weights = torch.softmax(masked, dim=-1)
    assert torch.isfinite(masked).all() and torch.isfinite(weights).all()
    blocked = (mask == MASKED_LOGIT).expand_as(weights)
    real_rows = ~blocked.all(dim=-1, keepdim=True)
    assert (weights[blocked & real_rows] == 0).all()
    assert torch.isfinite(torch.tensor(MASKED_LOGIT, dtype=torch.float16))


def test_float32_masked_rows_are_those_of_minus_infinity():
    """exp(MASKED_LOGIT) is 0 in float32: real queries attend exactly as if blocked keys were -inf."""
    torch.manual_seed(0)
    attn = WindowAttention(dim=16, head_dim=8, window_size=8, shifted=True)
    x = torch.randn(2, 11, 21, 16)
    with torch.no_grad():
        out = attn(x)
        for chunk in attn._mask_cache[(11, 21, x.device, x.dtype)]:
            if chunk is not None:
                chunk[1].masked_fill_(chunk[1] == MASKED_LOGIT, float("-inf"))
        assert torch.equal(attn(x), out)


def test_shifted_window_blocks_ask_the_device_nothing():
    """Masks and window indices are cached on the device: once a size is met, a Swin block's forward and
    backward make no host-synchronising call (the old code asked ``here.any()`` in every block)."""
    torch.manual_seed(0)
    block = SwinBlock(dim=16, head_dim=8, window_size=8, shifted=True)
    x = torch.randn(2, 11, 21, 16, requires_grad=True)
    block(x).sum().backward()  # builds the cache
    with HostReads() as reads:
        block(x).sum().backward()
        with torch.no_grad():
            block(x)
    assert reads.seen == []


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def batch():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def fresh_state(**overrides):
    torch.manual_seed(0)
    model = ICWEM(**get_config("tiny"))
    return new_state(TrainConfig(dataset="", **overrides), model, model.config)


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_under_autocast_the_entropy_models_and_the_loss_stay_float32(batch, dtype):
    model = ICWEM(**get_config("tiny"))
    with torch.autocast("cpu", dtype=dtype):
        out = model(batch)
        terms = RateDistortionLoss(0.05)(out, batch)  # even when called inside autocast
    assert out["x_hat"].dtype == dtype  # the networks did run in 16 bits
    assert all(p.dtype == torch.float32 for p in out["likelihoods"].values())
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())


def test_an_fp16_overflow_skips_the_whole_step_and_lowers_the_scale(batch):
    """At 2^16 the fp16 gradients overflow. The step is skipped as a whole — the main Adam's and the aux
    Adam's (gradient clipping had spread the non-finite norm into the quantiles' gradients, after the
    scaler had checked them: the quantiles became NaN a few steps later) — and the scale is halved."""
    state = fresh_state(amp="fp16")
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    result = train_step(state.model, batch, RateDistortionLoss(0.05), state,
                        autocast=torch.autocast("cpu", dtype=torch.float16))
    assert result.skipped and state.scaler.get_scale() == 2.0**15
    assert all(torch.equal(v, state.model.state_dict()[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def one_photo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_photo")
    write_photo(root / "train" / "astronaut.png", "astronaut", 20, 150, 64, 64)
    write_photo(root / "test" / "coffee.png", "coffee", 100, 200, 64, 64)
    return root


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_on_the_cpu_with_finite_weights_that_move_every_epoch(one_photo, tmp_path, amp, capsys):
    def run(**overrides):
        settings = dict(dataset=str(one_photo), model_config="tiny", patch_size=(64, 64), batch_size=1,
                        test_batch_size=1, num_workers=0, lmbda=0.05, save_path=str(tmp_path), amp=amp, log_every=1)
        return train(TrainConfig(**(settings | overrides)))

    start = run(max_steps=0).model.state_dict()
    result = run(epochs=2)
    assert result.skipped_steps == 0 and [h["epoch"] for h in result.history] == [0, 1]
    folder = tmp_path / "0.05"
    after = [torch.load(folder / name, weights_only=True)["state_dict"]
             for name in ("0_checkpoint.pth.tar", "checkpoint_latest.pth.tar")]  # after epochs 0 and 1
    for earlier, later in zip([start, *after], after):
        assert all(torch.isfinite(t).all() for t in later.values())
        assert not torch.equal(earlier["g_a.0.conv1.weight"], later["g_a.0.conv1.weight"])
        assert not torch.equal(earlier["entropy_bottleneck.quantiles"], later["entropy_bottleneck.quantiles"])
    assert all(torch.isfinite(torch.tensor(h["test"]["loss"])) for h in result.history)
    assert ("emulates" in capsys.readouterr().err) == (not cpu_computes_natively(amp))


# ------------------------------------------------------------------------------------------ data
def test_persistent_workers_ship_uint8_crops_of_the_current_epoch(data):
    """One worker process serves two epochs: its batches are uint8, and scaled on the device they are
    the float crops of that epoch, as the dataset itself gives them."""
    from datasets import ImageFolder, ShardedEpochSampler
    from utils.training.setup import make_loader, to_device

    dataset = ImageFolder(data, "train", (64, 64), random_crop=True, seed=3, uint8=True)
    reference = ImageFolder(data, "train", (64, 64), random_crop=True, seed=3)
    sampler = ShardedEpochSampler(len(dataset), shuffle=True, seed=3)
    loader = make_loader(dataset, sampler, batch_size=2, num_workers=1, device=torch.device("cpu"), seed=3)
    assert loader.persistent_workers
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        batches = list(loader)
        assert all(b.dtype == torch.uint8 for b in batches)
        expected = torch.stack([reference[i] for i in sampler.shard()])
        assert torch.equal(torch.cat([to_device(b, torch.device("cpu")) for b in batches]), expected)


# ------------------------------------------------------------------------------------------ gpu_check
def test_gpu_check_smoke_runs_every_section_on_the_cpu_and_writes_its_json(tmp_path):
    """The script a lent GPU runs, every section on the CPU (tiny preset, small images, two gloo ranks),
    so it is known to work before the device time starts."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # (its dataclass looks its module up there)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(results) == {"machine", "training", "coding", "across_devices", "ddp"}
    assert not [name for name, r in results.items() if "error" in r or "skipped" in r]
    training = results["training"]
    for amp in ("none", "bf16", "fp16"):
        assert training[amp]["images_per_s"] > 0 and training[amp]["weights_finite"], amp
    assert training["host_reads_per_step"]  # counted (compressai's entropy bottleneck reads its permutation)
    assert all(r["encode_s"] > 0 for key, r in results["coding"].items() if isinstance(r, dict) and "encode_s" in r)
    files = {k: r for k, r in results["across_devices"].items() if k.startswith("encoded on")}
    assert len(files) == 3 and all(r["decoded_on_cpu"].startswith("ok") and r["decoded_on_gpu"].startswith("ok")
                                   for r in files.values())
    assert results["ddp"]["parameters_in_sync"]
    assert "| fp16 |" in (tmp_path / "gpu_check.md").read_text()
