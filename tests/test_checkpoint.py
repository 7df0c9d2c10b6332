"""Loading published-style and self-trained checkpoints, and clear errors for files that do not fit."""

from __future__ import annotations

import pytest
import torch

from models import ICWEM, get_config, load_checkpoint
from utils.errors import UserError


def _prefixed(sd):
    return {f"module.{k}": v for k, v in sd.items()}


def test_published_layout_with_module_prefix_round_trips(tiny_model, tmp_path):
    path = tmp_path / "published.pth.tar"
    torch.save({"epoch": 3, "state_dict": _prefixed(tiny_model.state_dict()), "loss": 1.0}, path)
    model = load_checkpoint(path)
    assert not model.training
    assert model.gaussian_conditional._offset.numel() > 0  # coder tables ready
    assert model.config == ICWEM(**get_config("tiny")).config  # inferred from shapes
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.fingerprint() == tiny_model.fingerprint()


def test_bare_state_dict_loads(tiny_model, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(tiny_model.state_dict(), path)
    assert load_checkpoint(path).fingerprint() == tiny_model.fingerprint()


def test_stored_model_config_is_used(tmp_path):
    cfg = dict(get_config("tiny"), max_support_slices=2)
    model = ICWEM(**cfg)
    path = tmp_path / "ours.pth.tar"
    torch.save({"state_dict": model.state_dict(), "model_config": cfg}, path)
    assert load_checkpoint(path).config["max_support_slices"] == 2


def test_missing_key_is_named(tiny_model, tmp_path):
    sd = dict(tiny_model.state_dict())
    del sd["g_s.0.conv.bias"]
    path = tmp_path / "broken.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(UserError, match=r"missing keys: g_s\.0\.conv\.bias"):
        load_checkpoint(path)


def test_shape_conflict_is_named(tiny_model, tmp_path):
    sd = dict(tiny_model.state_dict())
    sd["g_s.0.conv.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pt"
    torch.save({"state_dict": sd, "model_config": get_config("tiny")}, path)
    with pytest.raises(UserError, match=r"g_s\.0\.conv\.bias: checkpoint \(7,\) vs model \(64,\)"):
        load_checkpoint(path)


def test_foreign_model_is_refused(tmp_path):
    from compressai.models import ScaleHyperprior

    path = tmp_path / "other.pt"
    torch.save({"state_dict": ScaleHyperprior(8, 8).state_dict()}, path)
    with pytest.raises(UserError, match="not an ICWEM state dict"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_unreadable_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_code_objects_are_refused(tmp_path):
    """weights_only=True: a pickle that would run code is rejected, not executed."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
