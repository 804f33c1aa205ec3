"""Released IDM checkpoints (the authors' ``.pth`` layout): recognise the network shape from the
keys and tensor shapes, and translate key names to this package's modules.

The translation is one table, :func:`key_table`, generated from the config the same way the
release builds its module lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .config import IDMConfig

# Keys the released forward pass never reads (spec: "Never used"), dropped on load.
UNUSED = re.compile(
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod"
    r"|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod"
    r"|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|ddim_c1)$"
    r"|^imnet\."
    r"|^encoder\.(sub_mean|add_mean)\."
    r"|^denoise_fn\.(final_down1|final_down2|final_linear|final_styleconv)\."
    r"|^denoise_fn\.ups\.\d+\.style\.(modulated_conv\.|weight$)"
)

PARAM_SUFFIX = re.compile(r"\.(weight|bias)$")


class CheckpointMismatch(ValueError):
    """A checkpoint's keys or shapes do not match the network they are loaded into."""


def is_released(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a state dict in the release's layout."""
    return any(k.startswith("denoise_fn.") for k in state)


def key_table(config: IDMConfig) -> dict[str, str]:
    """Released module prefix -> this package's module prefix, for every used module."""
    t: dict[str, str] = {"encoder.head.0": "encoder.head", "encoder.tail.0": "encoder.tail"}
    for b in range(config.encoder_blocks):
        t[f"encoder.body.{b}.body.0"] = f"encoder.blocks.{b}.conv1"
        t[f"encoder.body.{b}.body.2"] = f"encoder.blocks.{b}.conv2"
    t[f"encoder.body.{config.encoder_blocks}"] = "encoder.body_conv"

    d = "denoise_fn"
    t[f"{d}.noise_level_mlp.1"] = "unet.noise_mlp.fc1"
    t[f"{d}.noise_level_mlp.3"] = "unet.noise_mlp.fc2"
    t[f"{d}.conv_body_first.0"] = "conditioner.first.conv"
    t[f"{d}.conv_body_first.1"] = "conditioner.first"
    for j in range(1, config.levels):
        t[f"{d}.conv_body_down.{j - 1}.1"] = f"conditioner.down.{j - 1}.conv"
        t[f"{d}.conv_body_down.{j - 1}.2"] = f"conditioner.down.{j - 1}"
        t[f"{d}.condition_shift.{j}.0"] = f"conditioner.shift.{j}"
        t[f"{d}.condition_scale1.{j}"] = f"conditioner.scale1.{j}"
        t[f"{d}.condition_scale2.{j}"] = f"conditioner.scale2.{j}"

    def res_attn(src: str, dst: str, attn: bool) -> None:
        r = f"{src}.res_block"
        t[f"{r}.block1.block.0"] = f"{dst}.res.block1.norm"
        t[f"{r}.block1.block.3"] = f"{dst}.res.block1.conv"
        t[f"{r}.noise_func.noise_func.0"] = f"{dst}.res.noise_proj"
        t[f"{r}.block2.block.0"] = f"{dst}.res.block2.norm"
        t[f"{r}.block2.block.3"] = f"{dst}.res.block2.conv"
        t[f"{r}.res_conv"] = f"{dst}.res.skip"
        if attn:
            for part in ("norm", "qkv", "out"):
                t[f"{src}.attn.{part}"] = f"{dst}.attn.{part}"

    t[f"{d}.downs.0"] = "unet.input_conv"
    n = 1
    for i in range(config.levels):
        for b in range(config.res_blocks):
            res_attn(f"{d}.downs.{n}", f"unet.down.{i}.blocks.{b}", i in config.attn_levels)
            n += 1
        if i < config.levels - 1:
            t[f"{d}.downs.{n}.conv"] = f"unet.down.{i}.downsample"
            n += 1
    res_attn(f"{d}.mid.0", "unet.mid.0", True)
    res_attn(f"{d}.mid.1", "unet.mid.1", False)
    n = 0
    for k, i in enumerate(reversed(range(config.levels))):
        for b in range(config.res_blocks + 1):
            res_attn(f"{d}.ups.{n}", f"unet.up.{k}.blocks.{b}", i in config.attn_levels)
            n += 1
        if i > 0:
            t[f"{d}.ups.{n}.style.activate"] = f"unet.up.{k}.upsample"
            t[f"{d}.ups.{n}.imnet.0"] = f"unet.up.{k}.upsample.fc1"
            t[f"{d}.ups.{n}.imnet.1"] = f"unet.up.{k}.upsample.fc2"
            n += 1
    t[f"{d}.final_conv.block.0"] = "unet.final.norm"
    t[f"{d}.final_conv.block.3"] = "unet.final.conv"
    return t


def infer_config(state: Mapping[str, torch.Tensor], **overrides) -> IDMConfig:
    """The network shape of a released checkpoint, from its keys and tensor shapes."""
    try:
        inner = state["denoise_fn.downs.0.weight"].shape[0]
        levels = len({k.split(".")[2] for k in state if k.startswith("denoise_fn.condition_scale1.")})
        mult = tuple(state[f"denoise_fn.condition_scale1.{i}.weight"].shape[0] // inner for i in range(levels))
        downs = {int(k.split(".")[2]) for k in state if k.startswith("denoise_fn.downs.")}
        res_blocks = (len(downs) - levels) // levels
        attn, n = [], 1
        for i in range(levels):
            if f"denoise_fn.downs.{n}.attn.qkv.weight" in state:
                attn.append(i)
            n += res_blocks + (i < levels - 1)
        enc_blocks = len({k.split(".")[2] for k in state if re.match(r"encoder\.body\.\d+\.body\.0\.weight$", k)})
        enc_feats = state["encoder.head.0.weight"].shape[0]
        hidden = state[f"denoise_fn.ups.{res_blocks + 1}.imnet.0.weight"].shape[0]
    except (KeyError, IndexError) as e:
        raise CheckpointMismatch(
            f"not a released IDM checkpoint: cannot infer the network shape ({e!r} missing)"
        ) from e
    except ZeroDivisionError:  # no pyramid levels, or a first layer without channels
        raise CheckpointMismatch(
            "not a released IDM checkpoint: cannot infer the network shape (no levels or no channels)"
        ) from None
    params = dict(
        inner_channel=inner,
        channel_multiplier=mult,
        res_blocks=res_blocks,
        attn_levels=tuple(attn),
        encoder_blocks=enc_blocks,
        encoder_feats=enc_feats,
        implicit_hidden=hidden,
    )
    params.update(overrides)
    return IDMConfig(**params)


def translate(state: Mapping[str, torch.Tensor], config: IDMConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Released state dict -> (tensors under this package's names, released keys that have no place);
    the keys the release never uses are dropped."""
    table = key_table(config)
    out, unknown = {}, []
    for key, value in state.items():
        if UNUSED.search(key):
            continue
        m = PARAM_SUFFIX.search(key)
        prefix = key[: m.start()] if m else None
        if prefix is None or prefix not in table:
            # The release computes level 0 of the pyramid and conv_body_down[L-1] but never uses them.
            never_used = rf"denoise_fn\.(condition_(shift|scale1|scale2)\.0\.|conv_body_down\.{config.levels - 1}\.)"
            if re.match(never_used, key):
                continue
            unknown.append(key)
            continue
        out[f"{table[prefix]}.{m.group(1)}"] = value
    return out, unknown


def released_name(key: str, config: IDMConfig) -> str:
    """This package's parameter name -> the released checkpoint's name for it."""
    prefix, _, suffix = key.rpartition(".")
    inverse = {ours: theirs for theirs, ours in key_table(config).items()}
    return f"{inverse.get(prefix, prefix)}.{suffix}"
