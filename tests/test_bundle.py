"""Bundling a training checkpoint as the shipped default model (idm_rt.training.bundle): fp16 EMA weights
with the sampling defaults, the size budget, a full disk."""

from __future__ import annotations

import torch

import idm_rt
from idm_rt.training.trainer import Trainer

from .helpers import make_folder, safetensors_no_space, train_config


def test_bundle_ships_fp16_ema_with_defaults_and_respects_the_budget(tmp_path, monkeypatch):
    from idm_rt.training import bundle

    make_folder(tmp_path / "data")
    Trainer(train_config(tmp_path, steps=3, ckpt_every=3)).fit()
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003"
    out = tmp_path / "default"
    assert (
        bundle.main(
            [
                str(ckpt),
                "--out",
                str(out),
                "--sampler",
                "ddim",
                "--steps",
                "7",
                "--init",
                "bicubic",
                "--init-level",
                "0.6",
            ]
        )
        == 0
    )
    up = idm_rt.Upscaler.from_pretrained(out)
    assert up.sampling == idm_rt.SamplingSettings(sampler="ddim", steps=7, init="bicubic", init_level=0.6)
    assert up.model.provenance["step"] == 3 and up.model.provenance["weights"] == "EMA"
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(out / "model.safetensors").values())
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(bundle, "MAX_BYTES", 10)
    assert bundle.main([str(ckpt), "--out", str(out), "--steps", "3"]) == 1
    assert (out / "model.safetensors").read_bytes() == before  # the shipped model is left as it was


def test_bundle_on_a_full_disk_leaves_the_shipped_model_as_it_was(tmp_path, monkeypatch, capsys):
    from idm_rt import checkpoints
    from idm_rt.training import bundle

    make_folder(tmp_path / "data")
    Trainer(train_config(tmp_path, steps=3, ckpt_every=3)).fit()
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003"
    out = tmp_path / "default"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"shipped")
    monkeypatch.setattr(checkpoints, "save_file", safetensors_no_space)
    assert bundle.main([str(ckpt), "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if "default" in p.name] == ["default"]  # no staging folder left
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"shipped"
