"""Training: the original's command line, checkpoints, exact resume, DDP, data, and fault handling.

All on the CPU with the ``tiny`` preset and 64x64 crops of real photographs. Runs whose exit code or stderr
matter go through ``train.py``'s command line (in a subprocess where a signal or a second process is
the point); the others call ``utils.training.train``.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import run_in_process, write_photo
from utils.training import COSINE_FINAL_FACTOR, LATEST, TrainConfig, train
from utils.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_KEYS = {"epoch", "state_dict", "loss", "optimizer", "aux_optimizer", "lr_scheduler", "model_config",
                   "args", "rng", "step", "best_loss", "skipped_steps", "data_position"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One thread for the whole module, in force before its module-scoped runs (bit-identical results
    also need the same thread count); the fixture itself is conftest's."""
    yield


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    """A fast run: tiny model, 64x64 crops, batches of 2 (two steps per epoch), no loader workers."""
    settings = dict(dataset=str(data), model_config="tiny", patch_size=(64, 64), batch_size=2, test_batch_size=2,
                    num_workers=0, lmbda=0.05, save_path=str(out), epochs=2, log_every=1, lr_epoch=[1])
    settings.update(overrides)
    return TrainConfig(**settings)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_state(a, b) -> None:
    """Equal nested optimizer/scheduler states, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------- command line


def test_readme_command_trains_and_writes_loadable_checkpoints(data, tmp_path):
    # The README's command verbatim, shrunk by the added flags (and --N 32, the tiny preset's own width:
    # --N 128 would make a 32M-parameter "tiny" model).
    out = tmp_path / "train_result"
    result = run_in_process(["./train.py", "-d", str(data), "--cuda", "--N", "32", "--lambda", "0.05", "--epochs", "1",
                         "--lr_epoch", "45", "48", "--save_path", str(out), "--save",
                         "--model-config", "tiny", "--patch-size", "64", "64", "--batch-size", "2", "--max-steps", "2"])
    assert result.returncode == 0, result.stderr
    if not torch.cuda.is_available():
        assert "--cuda given but CUDA is not available" in result.stderr
    assert any(line.startswith("epoch 0: train loss") for line in result.stdout.splitlines()), result.stdout
    folder = out / "0.05"
    for name in ("checkpoint_latest.pth.tar", "checkpoint_best.pth.tar", "0_checkpoint.pth.tar"):
        checkpoint = torch.load(folder / name, weights_only=True)
        assert CHECKPOINT_KEYS <= set(checkpoint)
        assert checkpoint["epoch"] == 0 and checkpoint["step"] == 2
        assert checkpoint["data_position"]["epoch"] == 1 and checkpoint["data_position"]["samples"] == 0
        assert not any(k.startswith("module.") for k in checkpoint["state_dict"])
        assert checkpoint["model_config"]["N"] == 32
        assert checkpoint["args"]["lmbda"] == 0.05 and checkpoint["args"]["lr_epoch"] == [45, 48]
        assert sorted(checkpoint["lr_scheduler"]["milestones"]) == [45, 48]
        assert checkpoint["loss"] == checkpoint["best_loss"]
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    from models import load_checkpoint

    model = load_checkpoint(folder / "checkpoint_best.pth.tar")
    assert not model.training


@pytest.mark.parametrize("case", ["missing folder", "empty train split"])
def test_bad_dataset_is_a_one_line_error(tmp_path, case):
    root = tmp_path / "DATA"
    if case == "empty train split":
        (root / "train").mkdir(parents=True)
        (root / "train" / "notes.txt").write_text("not an image")
        write_photo(root / "test" / "a.png", "astronaut", 0, 0, 64, 64)
    result = run_in_process(["train.py", "-d", str(root), "--model-config", "tiny", "--patch-size", "64", "64",
                         "--save_path", str(tmp_path / "out")])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train.py: error:") and str(root / "train") in lines[0]
    assert "Traceback" not in result.stderr


def test_sigint_saves_a_resumable_checkpoint_and_exits_130(data, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
    proc = subprocess.Popen(
        [sys.executable, "-u", "train.py", "-d", str(data), "--model-config", "tiny", "--patch-size", "64", "64",
         "--batch-size", "1", "-n", "1", "--epochs", "50", "--lambda", "0.05", "--save_path", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the signal handlers are in place once this line is printed
            if line.startswith("training "):
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "SIGINT" in stdout and "resume with --checkpoint" in stdout
    assert "Traceback" not in stderr
    checkpoint = torch.load(out / "0.05" / LATEST, weights_only=True)
    assert checkpoint["step"] >= 1
    position = checkpoint["data_position"]  # 4 steps per epoch: where the next step would have started
    assert position["samples"] == checkpoint["step"] - 4 * position["epoch"]


# ---------------------------------------------------------------------------------------------- exact resume


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    """Three steps without interruption: all of epoch 0 (then its test pass and LR milestone) and one step of
    epoch 1."""
    out = tmp_path_factory.mktemp("straight")
    return train(config(data, out, max_steps=3)), out


@pytest.mark.parametrize("stop_after", [1, 2], ids=["mid-epoch", "at-epoch-end"])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(data, tmp_path, straight_run, stop_after):
    straight, straight_out = straight_run
    assert straight.exit_code == 0 and straight.step == 3

    first = train(config(data, tmp_path, max_steps=stop_after))
    assert first.exit_code == 0 and first.step == stop_after
    latest = tmp_path / "0.05" / LATEST
    position = torch.load(latest, weights_only=True)["data_position"]
    assert position == {"epoch": 0, "samples": 2, "batch_size": 2, "world_size": 1} if stop_after == 1 \
        else position["epoch"] == 1 and position["samples"] == 0

    resumed = train(config(data, tmp_path, max_steps=3, checkpoint=str(latest)))
    assert resumed.exit_code == 0 and resumed.step == 3
    assert_same_tensors(straight.model.state_dict(), resumed.model.state_dict())
    assert_same_state(straight.optimizer.state_dict(), resumed.optimizer.state_dict())
    assert_same_state(straight.aux_optimizer.state_dict(), resumed.aux_optimizer.state_dict())
    a = torch.load(straight_out / "0.05" / LATEST, weights_only=True)
    b = torch.load(latest, weights_only=True)
    for key in ("lr_scheduler", "rng", "data_position", "best_loss", "loss", "epoch", "step"):
        assert_same_state(a[key], b[key])
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # the milestone at epoch 1 applied


def test_max_minutes_stops_mid_epoch_with_a_checkpoint_that_resumes_exactly(data, tmp_path, straight_run, capsys):
    straight, _ = straight_run
    first = train(config(data, tmp_path, max_minutes=0))  # out of time at once: the first step is the last
    assert first.exit_code == 0 and first.step == 1 and not first.history
    assert "stopped at epoch 0 step 1 (--max-minutes 0)" in capsys.readouterr().out
    latest = tmp_path / "0.05" / LATEST
    assert torch.load(latest, weights_only=True)["data_position"] == {"epoch": 0, "samples": 2, "batch_size": 2,
                                                                      "world_size": 1}
    resumed = train(config(data, tmp_path, max_steps=3, checkpoint=str(latest)))
    assert_same_tensors(straight.model.state_dict(), resumed.model.state_dict())


def test_max_minutes_reached_on_an_epochs_last_step_finishes_that_epoch(data, tmp_path):
    result = train(config(data, tmp_path, batch_size=4, max_minutes=0))  # one step per epoch
    assert result.exit_code == 0 and result.step == 1
    assert [epoch["epoch"] for epoch in result.history] == [0]  # tested, then stopped before epoch 1
    assert (tmp_path / "0.05" / "checkpoint_best.pth.tar").is_file()
    assert torch.load(tmp_path / "0.05" / LATEST, weights_only=True)["data_position"]["epoch"] == 1


def test_continuing_with_more_epochs_restarts_the_cosine_schedule_at_once(data, tmp_path, capsys):
    """A finished cosine run continued with a larger --epochs (a warm restart): the first resumed epoch
    already runs at the new schedule's rate, not at the floor the checkpoint ended on."""
    done = train(config(data, tmp_path, lr_schedule="cosine", epochs=1))
    assert done.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * COSINE_FINAL_FACTOR)
    resumed = train(config(data, tmp_path, lr_schedule="cosine", epochs=3, max_steps=3,
                           checkpoint=str(tmp_path / "0.05" / LATEST)))
    restart = 1e-4 * (COSINE_FINAL_FACTOR + (1 - COSINE_FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi / 3)))
    assert resumed.step == 3 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(restart)
    assert f"learning rate now {restart:.2e}" in capsys.readouterr().out


def test_warmup_scales_a_fresh_runs_first_steps_and_leaves_the_schedule_alone(data, tmp_path):
    """--warmup-steps 4: the first step runs at a quarter of the rate. Adam's first step moves every weight with
    a gradient by the rate itself, so the largest move is a quarter of the unwarmed run's; the optimizer
    keeps the schedule's rate (what the scheduler and the checkpoint read)."""
    start = train(config(data, tmp_path / "a", max_steps=1, learning_rate=0.0, aux_learning_rate=0.0)).model
    plain = train(config(data, tmp_path / "b", max_steps=1)).model
    warmed = train(config(data, tmp_path / "c", max_steps=1, warmup_steps=4))
    names = [n for n, _ in start.named_parameters() if not n.endswith("quantiles")]  # the aux optimizer's

    def largest_move(model):
        params = dict(model.named_parameters())
        return max(float((params[n] - dict(start.named_parameters())[n]).detach().abs().max()) for n in names)

    assert largest_move(plain) == pytest.approx(1e-4, rel=1e-2)  # float32 weights of order 1: ulps of 1e-7
    assert largest_move(warmed.model) == pytest.approx(1e-4 / 4, rel=1e-2)
    assert warmed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_warmup_rates_rise_linearly_and_are_restored():
    from utils.training.setup import warmup

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    seen = []
    for step in range(5):
        with warmup(optimizer, step, 3):
            seen.append(optimizer.param_groups[0]["lr"])
        assert optimizer.param_groups[0]["lr"] == 0.3
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_kept_step_checkpoints_are_every_save_and_average_by_step(data, tmp_path, capsys):
    """--keep-step-checkpoints keeps each save (mid-epoch, epoch end, stop) under its step; average_weights.py
    --last picks the highest steps by what the files record, not by their names' order."""
    from tools.average_weights import main as average

    result = train(config(data, tmp_path, max_steps=3, save_every_steps=1, keep_step_checkpoints=True))
    run = tmp_path / "0.05"
    kept = sorted(run.glob("step*_checkpoint.pth.tar"))
    assert [p.name for p in kept] == [f"step{n}_checkpoint.pth.tar" for n in (1, 2, 3)]
    saved = {p.name: torch.load(p, weights_only=True) for p in kept}
    assert [saved[p.name]["step"] for p in kept] == [1, 2, 3]
    assert_same_tensors(saved["step3_checkpoint.pth.tar"]["state_dict"], result.model.state_dict())
    step2, step3 = (saved[f"step{n}_checkpoint.pth.tar"]["state_dict"] for n in (2, 3))
    assert any(not torch.equal(step2[key], step3[key]) for key in step3)  # the saves are of different weights

    out = tmp_path / "tail.pth.tar"
    assert average([str(p) for p in reversed(kept)] + ["--last", "2", "-o", str(out)]) == 0
    assert "(steps 2, 3)" in capsys.readouterr().out
    averaged = torch.load(out, weights_only=True)
    assert averaged["step"] == 3
    for key, value in averaged["state_dict"].items():
        a, b = step2[key], step3[key]
        expected = ((a.double() + b.double()) / 2).to(a.dtype) if a.is_floating_point() else b
        assert torch.equal(value, expected), key


@pytest.mark.parametrize("layout", ["state_dict only", "bare state dict"])
def test_weights_only_file_fine_tunes_with_fresh_optimizers(data, tmp_path, straight_run, layout):
    straight, straight_out = straight_run
    weights = {k: v.clone() for k, v in straight.model.state_dict().items()}
    path = tmp_path / "published.pth.tar"
    torch.save({"state_dict": weights} if layout == "state_dict only" else weights, path)
    result = train(config(data, tmp_path / "out", max_steps=1, checkpoint=str(path), learning_rate=0.0,
                          aux_learning_rate=0.0))
    assert result.step == 1  # started from step 0, not at the original run's position
    assert all(state["step"].item() == 1 for state in result.optimizer.state_dict()["state"].values())
    assert_same_tensors(weights, result.model.state_dict())  # learning rate 0: the weights are what was loaded


# ---------------------------------------------------------------------------------------------- faults


def test_checkpoint_write_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / LATEST
    save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, path)

    def crash_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == 1 and torch.equal(checkpoint["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == [LATEST]  # no temporary file left behind


def test_checkpoint_survives_a_killed_writer(tmp_path):
    path = tmp_path / LATEST
    writer = textwrap.dedent(f"""
        import torch
        from utils.training.checkpoint import save_checkpoint
        step = 0
        while True:
            step += 1
            save_checkpoint({{"step": step, "w": torch.full((2_000_000,), float(step))}}, {str(path)!r})
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO, env=env)
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # kill it somewhere inside a later save
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] >= 1
    assert torch.equal(checkpoint["w"], torch.full((2_000_000,), float(checkpoint["step"])))


def test_nonfinite_loss_skips_the_step_without_touching_the_weights(data, tmp_path, monkeypatch):
    reference = train(config(data, tmp_path / "reference", max_steps=1, epochs=1))

    from losses import RateDistortionLoss

    original_forward = RateDistortionLoss.forward
    calls = []

    def nan_on_second_step(self, output, target, lmbda=None):
        terms = original_forward(self, output, target, lmbda)
        calls.append(1)
        if len(calls) == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(RateDistortionLoss, "forward", nan_on_second_step)
    result = train(config(data, tmp_path / "nan", max_steps=2, epochs=1))
    assert result.exit_code == 0 and result.step == 2 and result.skipped_steps == 1
    assert_same_tensors(reference.model.state_dict(), result.model.state_dict())
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert torch.load(tmp_path / "nan" / "0.05" / LATEST, weights_only=True)["skipped_steps"] == 1


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_exit_143(data, tmp_path, monkeypatch):
    from losses import RateDistortionLoss

    original_forward = RateDistortionLoss.forward

    def terminate_during_first_step(self, output, target, lmbda=None):
        os.kill(os.getpid(), signal.SIGTERM)  # as if a scheduler preempted the job
        return original_forward(self, output, target, lmbda)

    monkeypatch.setattr(RateDistortionLoss, "forward", terminate_during_first_step)
    result = train(config(data, tmp_path, epochs=50))
    assert result.exit_code == 143 and result.step == 1
    checkpoint = torch.load(tmp_path / "0.05" / LATEST, weights_only=True)
    assert checkpoint["step"] == 1 and checkpoint["data_position"]["samples"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_loss_falls_when_overfitting_one_image(tmp_path):
    root = tmp_path / "DATA"
    for split in ("train", "test"):
        write_photo(root / split / "astronaut.png", "astronaut", 180, 190, 64, 64)
    result = train(config(root, tmp_path / "out", epochs=8, batch_size=1, learning_rate=1e-3, save=False))
    losses = [epoch["test"]["loss"] for epoch in result.history]
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------- DDP


DDP_HELPER = """
import sys, torch
from train import parse_args
from utils.training import TrainConfig, train
from utils.training.distributed import distributed_context

result = train(TrainConfig(**vars(parse_args(sys.argv[2:]))))
torch.save(result.model.state_dict(), f"{sys.argv[1]}/rank{distributed_context().rank}.pt")
"""


def test_ddp_two_cpu_processes_keep_identical_weights(data, tmp_path):
    helper = tmp_path / "ddp_helper.py"
    helper.write_text(DDP_HELPER)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(helper), str(tmp_path),
         "-d", str(data), "--model-config", "tiny", "--patch-size", "64", "64", "--batch-size", "1", "-n", "0",
         "--epochs", "1", "--max-steps", "2", "--lambda", "0.05", "--save_path", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x2 processes" in result.stdout and "differ between processes" not in result.stderr
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert_same_tensors(rank0, rank1)
    saved = torch.load(out / "0.05" / LATEST, weights_only=True)
    assert_same_tensors(rank0, saved["state_dict"])  # rank 0 wrote it, without a "module." prefix
    assert len(saved["rng"]) == 2
    from models import ICWEM, get_config

    torch.manual_seed(100)
    initial = ICWEM(**get_config("tiny")).state_dict()
    assert not torch.equal(initial["entropy_bottleneck.quantiles"], rank0["entropy_bottleneck.quantiles"])
