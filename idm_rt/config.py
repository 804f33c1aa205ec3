"""Network configuration of IDM and its named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ENCODER_UPSAMPLERS = ("nearest", "implicit")
# Bounds on the network's structure, far above every real one (the release: 5 levels, 2 residual
# blocks, 16 encoder blocks): a crafted config must not build millions of modules. The weights
# themselves are bounded by :data:`idm_rt.model.idm.MAX_PARAMETERS`.
MAX_LEVELS, MAX_RES_BLOCKS, MAX_ENCODER_BLOCKS = 8, 16, 128


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class IDMConfig:
    """Shape of an IDM network.

    Attributes:
        inner_channel: channels of the first U-Net level (``C_0 / multiplier[0]``).
        channel_multiplier: one entry per U-Net level; ``C_i = inner * mult[i]``.
        res_blocks: residual blocks per level on the way down (``+1`` on the way up).
        attn_levels: U-Net levels with self-attention; fixed by the config, not by
            the run-time image size (the release derives them from
            ``image_size / 2**i in attn_res``, see :func:`attn_levels_from_release`).
        norm_groups: GroupNorm groups.
        dropout: dropout in the second conv of every residual block (training only).
        encoder_blocks, encoder_feats: EDSR-baseline encoder depth and width.
        implicit_hidden: hidden width of the coordinate-MLP in the implicit layers.
        implicit_relu: paper variant, ReLU between the two Linear layers
            (the released weights have none).
        implicit_abs_scale: paper variant, ``|a|`` in the scale normalisation
            (the release uses the signed values).
        encoder_upsampler: how the encoder reaches the output size. ``"nearest"`` is the
            release's (nearest-resized features, 3x3 tail conv); ``"implicit"`` queries the
            nearest feature with its relative coordinate and the cell size through a 1x1 layer
            and a ReLU before the tail, and adds the bicubic upscale, so that the condition
            image is an HR estimate in its own right (see :mod:`idm_rt.model.encoder`).
    """

    inner_channel: int = 64
    channel_multiplier: tuple[int, ...] = (1, 2, 4, 8, 8)
    res_blocks: int = 2
    attn_levels: tuple[int, ...] = (3,)
    norm_groups: int = 32
    dropout: float = 0.2
    encoder_blocks: int = 16
    encoder_feats: int = 64
    implicit_hidden: int = 256
    implicit_relu: bool = False
    implicit_abs_scale: bool = False
    encoder_upsampler: str = "nearest"

    def __post_init__(self) -> None:
        for name in (
            "inner_channel",
            "res_blocks",
            "norm_groups",
            "encoder_blocks",
            "encoder_feats",
            "implicit_hidden",
        ):
            low = 0 if name == "encoder_blocks" else 1
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        for name in ("channel_multiplier", "attn_levels"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not all(map(_is_int, values)):
                raise ValueError(f"{name} must be a list of integers, got {values!r}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        object.__setattr__(self, "attn_levels", tuple(sorted(self.attn_levels)))
        for name in ("implicit_relu", "implicit_abs_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 2 <= len(self.channel_multiplier) <= MAX_LEVELS or min(self.channel_multiplier) < 1:
            raise ValueError(
                f"channel_multiplier needs 2..{MAX_LEVELS} levels (at least one implicit up-layer) of "
                f"positive multipliers, got {list(self.channel_multiplier)}"
            )
        for name, limit in (("res_blocks", MAX_RES_BLOCKS), ("encoder_blocks", MAX_ENCODER_BLOCKS)):
            if getattr(self, name) > limit:
                raise ValueError(f"{name} {getattr(self, name)} is above the limit of {limit}")
        bad = [a for a in self.attn_levels if not 0 <= a < self.levels]
        if bad:
            raise ValueError(f"attn_levels {bad} outside the {self.levels} U-Net levels")
        if self.encoder_upsampler not in ENCODER_UPSAMPLERS:
            raise ValueError(f"encoder_upsampler must be one of {ENCODER_UPSAMPLERS}, got {self.encoder_upsampler!r}")
        for c in self.channels:
            if c % self.norm_groups:
                raise ValueError(f"{c} channels are not divisible into {self.norm_groups} GroupNorm groups")

    @property
    def levels(self) -> int:
        """Number of U-Net levels ``L``."""
        return len(self.channel_multiplier)

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level, ``C_i``."""
        return tuple(self.inner_channel * m for m in self.channel_multiplier)

    @property
    def size_multiple(self) -> int:
        """Image sizes that are multiples of this keep every level exactly half the previous."""
        return 2 ** (self.levels - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_multiplier"] = list(self.channel_multiplier)
        d["attn_levels"] = list(self.attn_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IDMConfig:
        return strict_from_dict(cls, d, "IDM config keys")


def check_max_scale(value: Any) -> float:
    """The largest training magnification M as a float; ValueError unless it is a finite number > 1."""
    try:  # an int beyond float range (a crafted config.json) is no finite number either
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    if not 1 < number < math.inf:
        raise ValueError(f"max_scale (the largest training magnification M) must be a finite number > 1, got {value!r}")
    return number


def strict_from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    """``cls(**d)`` for a dataclass, with a clear error naming any key it does not have."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what}: {unknown}")
    return cls(**d)


def attn_levels_from_release(image_size: int, attn_res: list[int], levels: int) -> tuple[int, ...]:
    """The release's rule: level i has attention when ``image_size / 2**i`` is in attn_res."""
    return tuple(i for i in range(levels) if image_size // 2**i in set(attn_res))


PRESETS: dict[str, IDMConfig] = {
    # The released shape (face 8x, cats 16x, DIV2K 4x): 115 M denoiser parameters.
    "official": IDMConfig(),
    # The default-model candidate, cheap on a CPU.
    "small": IDMConfig(
        inner_channel=32,
        channel_multiplier=(1, 2, 4, 4),
        res_blocks=1,
        attn_levels=(3,),
        dropout=0.1,
    ),
}


def preset(name: str, **overrides: Any) -> IDMConfig:
    """A named preset with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


__all__ = ["IDMConfig", "PRESETS", "preset", "attn_levels_from_release"]
