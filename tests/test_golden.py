"""Parity with the release's own numbers (../shared/golden): the definition of correct."""

from __future__ import annotations

import json
import re

import pytest
import torch

import idm_rt
from idm_rt.diffusion import LinearSchedule, ddpm_step, sampler
from idm_rt.released import infer_config

from .helpers import rel_err

# The released network at full size: its checkpoint loads in about 3 s and each U-Net call takes seconds.
pytestmark = pytest.mark.slow

TOL = 1e-4

# Released parameters the forward pass never uses (final_down1, final_down2, final_linear, final_styleconv, and each
# implicit layer's style.modulated_conv and style.weight), plus pyramid level 0 and conv_body_down[L-1] (computed,
# never consumed).
NEVER_USED = re.compile(
    r"final_down1|final_down2|final_linear|final_styleconv|style\.modulated_conv|style\.weight"
    r"|condition_(shift|scale1|scale2)\.0\.|conv_body_down\.4\."
)


def test_config_inferred_from_keys_matches_release_config(golden_dir, golden_model):
    cfg = json.loads((golden_dir / "config.json").read_text())
    c = golden_model.config
    assert c.inner_channel == cfg["inner_channel"]
    assert list(c.channel_multiplier) == cfg["channel_multiplier"]
    assert c.res_blocks == cfg["res_blocks"]
    assert c.attn_levels == idm_rt.config.attn_levels_from_release(cfg["image_size"], cfg["attn_res"], c.levels)
    assert (c.encoder_blocks, c.encoder_feats) == (cfg["encoder"]["n_resblocks"], cfg["encoder"]["n_feats"])


@pytest.mark.parametrize("case", ["a", "b", "c"])
@pytest.mark.parametrize("form", ["fast", "literal"])
def test_denoiser_cases(golden_model, golden_cases, case, form):
    m, c = golden_model, golden_cases
    m.set_implicit_form(form)
    try:
        with torch.no_grad():
            cond = m.encode(c[f"{case}.lr"], tuple(c[f"{case}.x_t"].shape[-2:]))
            eps = m.denoise(
                c[f"{case}.x_t"], m.condition(c[f"{case}.cond"], c[f"{case}.scaler"]), c[f"{case}.noise_level"].view(-1)
            )
    finally:
        m.set_implicit_form("fast")
    assert rel_err(cond, c[f"{case}.cond"]) < TOL
    assert rel_err(eps, c[f"{case}.eps"]) < TOL


@pytest.mark.parametrize("t", [1999, 1000, 1, 0])
def test_ddpm_step(golden_model, golden_cases, t):
    c, sched = golden_cases, LinearSchedule()
    with torch.no_grad():
        cn = golden_model.condition(c["a.cond"], torch.tensor([1.0]))
        x = c[f"ddpm.t{t}.x_t"]
        eps = golden_model.denoise(x, cn, torch.tensor([sched.noise_level(t)]))
    out = ddpm_step(x, t, eps, c[f"ddpm.t{t}.z"], sched)
    assert rel_err(out, c[f"ddpm.t{t}.x_prev"]) < TOL


def test_ddim_200_whole_loop(golden_model, golden_cases):
    c = golden_cases
    with torch.no_grad():
        cond = golden_model.encode(c["ddim200.lr"], (64, 64))
        cn = golden_model.condition(cond, torch.tensor([1.0]))
        out = sampler("ddim").run(lambda x, g: golden_model.denoise(x, cn, g), c["ddim200.x_T"], 200)
    assert rel_err(out, c["ddim200.out"]) < TOL


def test_full_size_official_layout_loads(golden_dir, tmp_path):
    """Every key of the released 8x face checkpoint maps onto the `official` preset, none left over."""
    state, used = {}, 0
    for line in (golden_dir.parent / "official_face_8x_keys.txt").read_text().splitlines():
        key, shape, _ = line.split()
        state[key] = torch.zeros([int(s) for s in shape.split("x")])
        consumed = key.startswith(("encoder.head", "encoder.body", "encoder.tail", "denoise_fn."))
        if consumed and not NEVER_USED.search(key):
            used += state[key].numel()
    cfg = infer_config(state)
    assert cfg == idm_rt.preset("official")
    path = tmp_path / "face8x.pth"
    torch.save(state, path)
    model = idm_rt.load_model(path)
    assert sum(p.numel() for p in model.parameters()) == used
