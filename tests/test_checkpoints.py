"""Checkpoint loading and saving: round trips, conversion, and errors that name the problem."""

from __future__ import annotations

import json

import pytest
import torch

import idm_rt
from idm_rt import CheckpointMismatch

from .conftest import TINY, rel_err


def test_project_format_round_trip(tiny_model, tmp_path):
    idm_rt.save_model(tiny_model, tmp_path / "m", provenance={"note": "test"})
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["network"] == TINY.to_dict() and meta["max_scale"] == 4.0 and meta["provenance"] == {"note": "test"}
    back = idm_rt.load_model(tmp_path / "m")
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_fp16_weights_load_as_float32(tiny_model, tmp_path):
    idm_rt.save_model(tiny_model, tmp_path / "h", dtype=torch.float16)
    back = idm_rt.load_model(tmp_path / "h" / "model.safetensors")
    w = back.unet.input_conv.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, tiny_model.unet.input_conv.weight.half().float())


def test_converted_release_gives_the_same_numbers(golden_dir, golden_model, golden_cases, tmp_path):
    from idm_rt.cli import main

    assert main(["convert", str(golden_dir / "checkpoint.pth"), str(tmp_path / "conv"), "--max-scale", "8"]) == 0
    conv = idm_rt.load_model(tmp_path / "conv")
    c = golden_cases
    with torch.no_grad():
        eps = conv.denoise(c["b.x_t"], conv.condition(c["b.cond"], c["b.scaler"]), c["b.noise_level"].view(-1))
    assert conv.max_scale == 8.0
    assert rel_err(eps, c["b.eps"]) < 1e-4


def released_layout(golden_dir) -> dict[str, torch.Tensor]:
    return torch.load(golden_dir / "checkpoint.pth", weights_only=True)


def test_unexpected_and_missing_release_keys_are_listed_together(golden_dir, tmp_path):
    state = released_layout(golden_dir)
    state["denoise_fn.extra_head.weight"] = torch.zeros(3)
    del state["denoise_fn.final_conv.block.3.bias"]
    state["denoise_fn.ups.3.imnet.0.weight"] = torch.zeros(5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatch) as err:
        idm_rt.load_model(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing keys ['denoise_fn.final_conv.block.3.bias']" in msg  # the file's own names
    assert "unexpected keys ['denoise_fn.extra_head.weight']" in msg
    assert "denoise_fn.ups.3.imnet.0.weight: checkpoint (5, 5)" in msg


def test_wrong_shapes_are_named(tiny_model, tmp_path):
    idm_rt.save_model(tiny_model, tmp_path / "m")
    wider = idm_rt.IDMConfig.from_dict({**TINY.to_dict(), "implicit_hidden": 24})
    with pytest.raises(CheckpointMismatch, match="shape mismatches.*fc1.weight"):
        idm_rt.load_model(tmp_path / "m", config=wider)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="not a torch checkpoint file"):
        idm_rt.load_model(tmp_path / "junk.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "cut.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "cut.pth").read_bytes()[:40])  # a zip cut short
    with pytest.raises(CheckpointMismatch, match="not a readable torch checkpoint"):
        idm_rt.load_model(tmp_path / "cut.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatch, match="not a released IDM checkpoint"):
        idm_rt.load_model(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError):
        idm_rt.load_model(tmp_path / "nowhere.pth")


def test_max_scale_must_exceed_one(golden_dir, tiny_model):
    with pytest.raises(ValueError, match="max_scale"):
        idm_rt.load_model(golden_dir / "checkpoint.pth", max_scale=1)
    with pytest.raises(ValueError, match="max_scale"):
        idm_rt.IDM(tiny_model.config, max_scale=0.5)


def test_pickled_code_never_runs(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('%s', 'w').write('ran')" % (tmp_path / "pwned"),))

    torch.save({"denoise_fn.x": Evil()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(CheckpointMismatch):
        idm_rt.load_model(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
