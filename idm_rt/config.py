"""Network configuration of IDM and its named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


ENCODER_UPSAMPLERS = ("nearest", "implicit")


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
        object.__setattr__(self, "channel_multiplier", tuple(int(m) for m in self.channel_multiplier))
        object.__setattr__(self, "attn_levels", tuple(sorted(int(a) for a in self.attn_levels)))
        if len(self.channel_multiplier) < 2:
            raise ValueError("channel_multiplier needs at least two levels (one implicit up-layer)")
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
    def from_dict(cls, d: dict[str, Any]) -> "IDMConfig":
        return strict_from_dict(cls, d, "IDM config keys")


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
