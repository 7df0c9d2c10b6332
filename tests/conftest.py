"""Shared fixtures: seeded RNGs, real photographs from scikit-image, the tiny model, a training folder."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import random
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Sequence
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "icwem-tiny"


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def photo(name: str = "astronaut") -> np.ndarray:
    """A real RGB photograph (uint8 H×W×3) shipped inside scikit-image."""
    from skimage import color, data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = (color.gray2rgb(img)).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def photo_tensor(name: str = "astronaut", h: int | None = None, w: int | None = None, top: int = 0, left: int = 0) -> torch.Tensor:
    """A crop of a real photograph as a 1×3×h×w tensor in [0, 1]."""
    img = photo(name)
    h = h or img.shape[0]
    w = w or img.shape[1]
    crop = img[top:top + h, left:left + w]
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return json.loads((TINY / "config.json").read_text())


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """The fixture's tiny ICWEM with the original's weights, eval mode, coder tables ready."""
    from models import ICWEM

    model = ICWEM(**tiny_config)
    model.load_state_dict(torch.load(TINY / "weights.pt", weights_only=True))
    model.eval()
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a small machine shared with other processes, two threads
    can make the tiny model 10-40x slower (they wait on each other), e.g. a 64x64 forward 0.3 s -> 11 s.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny configuration with the original's fixture weights, saved as a published checkpoint is."""
    path = tmp_path_factory.mktemp("checkpoint") / "icwem-tiny.pth.tar"
    torch.save({"state_dict": torch.load(TINY / "weights.pt", weights_only=True)}, path)
    return path


WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"


def spread_scales_model(seed: int = 0):
    """The tiny preset with seeded random weights, rescaled so that its scales spread over the table.

    A random model puts every σ at the 0.11 floor (index 0), which exercises one table only; portability
    is at stake where σ falls anywhere among the 64 boundaries. So the last layer of each scale network
    is set to give per-channel σ log-uniform in [0.15, 60] with ±30 % variation across the image, and
    g_a's output is amplified so the symbols are not all zero. Eval mode, coder tables built.
    """
    from models import ICWEM, get_config

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ICWEM(**get_config("tiny")).eval()
    x = torch.from_numpy(photo("astronaut")[:256, :256]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        model.g_a[-1].weight.mul_(8.0)
        model.g_a[-1].bias.mul_(8.0)
        para = model(x)["para"]
        slice_ch = model.config["M"] // model.num_slices
        for i, net in enumerate(model.cc_scale_transforms):
            last = net[-1]
            raw = para["scales"][:, i * slice_ch:(i + 1) * slice_ch] - last.bias[None, :, None, None]
            spread = raw.std(dim=(0, 2, 3)).clamp_min(1e-6)
            centre = torch.exp(torch.empty(slice_ch).uniform_(math.log(0.15), math.log(60.0), generator=generator))
            last.weight.mul_((0.3 * centre / spread)[:, None, None, None])
            last.bias.copy_(centre)
    model.update(force=True)
    return model


@pytest.fixture(scope="session")
def spread_checkpoint(tmp_path_factory) -> Path:
    """``spread_scales_model(0)`` saved as a checkpoint: what the portability tests code with, because its
    scales reach most of the table's 64 entries (a shipped model reaches about a third of them)."""
    path = tmp_path_factory.mktemp("spread") / "icwem-spread.pth.tar"
    model = spread_scales_model(0)
    torch.save({"state_dict": model.state_dict(), "model_config": model.config}, path)
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(spread_checkpoint) -> Path:
    """The first models/weights/*.pt* file if the repository ships one, otherwise the spread-scale
    checkpoint (nothing is trained)."""
    shipped = sorted(WEIGHTS.glob("*.pt*"))
    return shipped[0] if shipped else spread_checkpoint


def write_photo(path: Path, name: str, top: int, left: int, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(name)[top:top + h, left:left + w]).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA/train: four crops of real photos (one in a subfolder, one .PNG, one smaller than the patch);
    DATA/test: one crop."""
    root = tmp_path_factory.mktemp("data")
    write_photo(root / "train" / "astronaut.png", "astronaut", 20, 150, 80, 96)
    write_photo(root / "train" / "more" / "coffee.PNG", "coffee", 100, 200, 72, 88)
    write_photo(root / "train" / "chelsea.png", "chelsea", 50, 120, 96, 80)
    write_photo(root / "train" / "small.png", "rocket", 200, 300, 48, 40)
    write_photo(root / "test" / "astronaut.png", "astronaut", 160, 180, 80, 80)
    return root


def load_script(name: str):
    """Import a top-level script as a module, to call its ``main`` in-process (``test`` would be the stdlib's)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", Path(__file__).resolve().parents[1] / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_process(args: Sequence[object]) -> subprocess.CompletedProcess:
    """Run a top-level script's command line (``["codec.py", "encode", ...]``) in this process, through
    ``run_cli`` as its ``__main__`` does: exit code, stdout and stderr as a subprocess would return them.

    Why: a new Python spends about 10 s of CPU importing PyTorch and CompressAI on a 2-core test machine.
    Only the tests of signals, killed processes and DDP need a process of their own.
    """
    from utils.cli import run_cli

    script, *argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), mock.patch.object(sys, "argv", [script, *argv]):
        try:
            run_cli(load_script(Path(script).stem).main, argv)
        except SystemExit as exit_:
            code = exit_.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
