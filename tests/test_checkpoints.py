"""Checkpoint loading and saving: round trips, conversion, and errors that name the problem."""

from __future__ import annotations

import json

import pytest
import torch

import idm_rt
from idm_rt import CheckpointMismatch

from .helpers import TINY, rel_err


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


def test_a_crafted_checkpoint_is_refused_before_the_network_is_built(tmp_path):
    """3.7 KB of expanded tensors that describe a 155 GB network: the size is computed from the
    shapes and refused with the number and the limit, nothing is allocated."""
    from idm_rt.model.idm import MAX_PARAMETERS, parameter_count
    from idm_rt.released import key_table

    huge = idm_rt.preset("small", inner_channel=65536, norm_groups=32)
    assert parameter_count(huge) > MAX_PARAMETERS
    with torch.device("meta"):
        shapes = {}
        for part in (
            idm_rt.model.encoder.EDSREncoder(huge.encoder_blocks, huge.encoder_feats),
            idm_rt.model.conditioning.LRConditioner(huge),
            idm_rt.model.unet.UNet(huge),
        ):
            prefix = {"EDSREncoder": "encoder", "LRConditioner": "conditioner", "UNet": "unet"}[type(part).__name__]
            shapes |= {f"{prefix}.{k}": v.shape for k, v in part.state_dict().items()}
    inverse = {ours: theirs for theirs, ours in key_table(huge).items()}
    state = {}
    for key, shape in shapes.items():
        prefix, _, suffix = key.rpartition(".")
        if prefix in inverse:
            state[f"{inverse[prefix]}.{suffix}"] = torch.zeros(1).expand(shape)
    for scale in ("scale1", "scale2"):  # level 0, which the release computes but never uses
        state[f"denoise_fn.condition_{scale}.0.weight"] = torch.zeros(1).expand(huge.channels[0], 1)
    torch.save(state, tmp_path / "crafted.pth")
    assert (tmp_path / "crafted.pth").stat().st_size < 200_000
    with pytest.raises(CheckpointMismatch, match=r"crafted\.pth .*parameters, above the limit of 1,073,741,824"):
        idm_rt.load_model(tmp_path / "crafted.pth")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"inner_channel": 1048576}, "above the limit"),
        ({"res_blocks": 10_000_000}, "res_blocks 10000000 is above the limit of 16"),
        ({"norm_groups": 0}, "norm_groups must be an integer >= 1, got 0"),
        ({"inner_channel": -8}, "inner_channel must be an integer >= 1"),
        ({"channel_multiplier": [1, 0]}, "positive multipliers"),
        ({"channel_multiplier": [1] * 40}, "2..8 levels"),
        ({"dropout": "x"}, "dropout must be a number"),
        ({"attn_levels": [7]}, "outside the 3 U-Net levels"),
        ({"encoder_upsampler": "magic"}, "encoder_upsampler must be one of"),
    ],
)
def test_a_crafted_config_is_refused_with_the_loaders_error(tiny_model, tmp_path, change, message):
    idm_rt.save_model(tiny_model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["network"].update(change)
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatch, match=message):
        idm_rt.load_model(tmp_path / "m")


@pytest.mark.parametrize("value", [1, 0.5, float("nan"), float("inf"), "8", True])
def test_max_scale_is_checked(tiny_model, tmp_path, value):
    idm_rt.save_model(tiny_model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["max_scale"] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatch, match="max_scale"):
        idm_rt.load_model(tmp_path / "m")
    with pytest.raises(ValueError, match="max_scale .* must be a finite number > 1"):
        idm_rt.IDM(TINY, max_scale=value)
