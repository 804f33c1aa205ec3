"""How an image is sampled: one frozen, self-validating settings object.

A model folder stores the settings recommended for its weights (``config.json``, "defaults"), an
engine directory copies them into its manifest, and the Upscaler, the trainer's validation,
``training.evaluate`` and ``training.bundle`` all take a :class:`SamplingSettings`, so that every
rule about them (which sampler, how many steps, where sampling starts) lives here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from .diffusion import SAMPLERS, LinearSchedule, sampler, start_timestep
from .options import MAX_STEPS, check
from .options import add_arguments as add_options

INITS = ("noise", "bicubic", "estimate")


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings, checked when made (ValueError naming the first bad one).

    Attributes:
        sampler: ``"dpmpp_2m"`` (few steps), ``"ddim"`` (the release's grid) or ``"ddpm"``
            (ancestral; 2000 steps from noise is the release's loop, fewer respace it).
        steps: U-Net calls, 0..:data:`MAX_STEPS` (ddpm and ddim: at most the timesteps from the
            start down to 0; ddim at least 2). 0: no U-Net call, the start image itself (the encoder's HR
            estimate, or the bicubic upscale) back-projected ``back_projection`` times: the fast path.
        init: ``"noise"`` starts from pure noise (the paper); ``"bicubic"`` from the bicubic upscale
            diffused to noise level ``init_level`` (Come-Closer-Diffuse-Faster, Chung et al. 2022);
            ``"estimate"`` from the encoder's condition image diffused the same way, for models whose
            encoder was trained as an HR estimate (``IDMConfig.encoder_upsampler="implicit"``).
        init_level: the noise level g = sqrt(gamma) in (0, 1) of a diffused start.
        back_projection: passes per step that back-project the estimate onto the LR input
            (:mod:`idm_rt.backprojection`), 0..100; 0 samples as
            the paper does.
        eta: DDIM's stochasticity in [0, 1] (0: deterministic).
    """

    sampler: str = "dpmpp_2m"
    steps: int = 20
    init: str = "noise"
    init_level: float = 0.5
    back_projection: int = 0
    eta: float = 0.0

    def __post_init__(self) -> None:
        chosen = sampler(self.sampler)  # (checks a str first: `in` would compare a numpy array element-wise)
        for name in ("steps", "init_level", "back_projection", "eta"):
            check(name, getattr(self, name), required=True)
        if not isinstance(self.init, str) or self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.steps == 0 and self.init == "noise":
            raise ValueError(
                "steps=0 gives the start image itself (back-projected), which pure noise is not: use "
                "init='estimate' (the model's own HR estimate) or 'bicubic'"
            )
        object.__setattr__(self, "sampler", str(self.sampler))  # np.str_ -> str
        object.__setattr__(self, "init", str(self.init))
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "init_level", float(self.init_level))
        object.__setattr__(self, "eta", float(self.eta))
        if self.steps:
            chosen.grid(LinearSchedule(), self.steps, self.start_timestep)  # a step count its grid cannot take

    @property
    def start_timestep(self) -> int | None:
        """The timestep sampling starts from: None for pure noise (T-1), else the one whose noise
        level is nearest ``init_level``."""
        return None if self.init == "noise" else start_timestep(self.init_level)

    def replace(self, **changes: Any) -> SamplingSettings:
        """These settings with ``changes`` applied, ignoring the ones given as None."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_for(self, config: Any) -> SamplingSettings:
        """These settings, if a model of ``config`` (an :class:`~idm_rt.IDMConfig`) can sample with them:
        ``init="estimate"`` needs an encoder trained as an HR estimate (``encoder_upsampler="implicit"``);
        the others' condition image is a feature map, and starting from it gives a wrong image."""
        if self.init == "estimate" and config.encoder_upsampler != "implicit":
            raise ValueError(
                f"init='estimate' starts from the encoder's HR estimate, which only models with "
                f"encoder_upsampler='implicit' give; this model's encoder is "
                f"{config.encoder_upsampler!r}: use init='bicubic' (or 'noise')"
            )
        return self

    @classmethod
    def from_dict(cls, d: Any, what: str = "sampling settings") -> SamplingSettings:
        """Settings from a stored dict (a model's or a manifest's "defaults"); the ones it does not give
        keep their defaults. ValueError naming ``what`` for a non-object, an unknown key or a bad value."""
        if not isinstance(d, dict):
            raise ValueError(f"{what} must be a JSON object, got {d!r}")
        if "consistency" in d:  # this count's name before 2026-12 (now IDM's metric only)
            d = {k if k != "consistency" else "back_projection": v for k, v in d.items()}
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{what}: unknown keys {unknown}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None


def presets_from_dict(d: Any, what: str) -> dict[str, SamplingSettings]:
    """Named sampling settings stored beside a model's recommended ones (``"presets"`` of its config.json or an
    engine manifest: ``{"fast": {...}, "detailed": {...}}``); ValueError naming ``what`` and the preset for a bad
    one."""
    if not isinstance(d, dict) or not all(isinstance(k, str) and k.isidentifier() for k in d):
        raise ValueError(f"{what}: presets must be an object of named sampling settings, got {d!r}")
    if "default" in d:
        raise ValueError(f"{what}: the preset 'default' is the model's recommended settings, stored apart")
    return {name: SamplingSettings.from_dict(s, f"{what}, preset {name!r}") for name, s in d.items()}


def add_arguments(parser: argparse.ArgumentParser, default: str = "the model's recommendation") -> None:
    """The command-line options of the settings (``--sampler``, ``--steps``, ``--init``, ``--init-level``,
    ``--back-projection``), for every command that samples; :func:`from_arguments` reads them back."""
    parser.add_argument(
        "--sampler",
        choices=tuple(SAMPLERS),
        help=f"dpmpp_2m (few steps), ddim, or ddpm (ancestral; --steps 2000 from noise is the "
        f"release's loop); default: {default}",
    )
    parser.add_argument(
        "--quality",
        metavar="PRESET",
        help="a sampling preset of the model (see its card): fast (its own estimate, no U-Net call), "
        "default, detailed, ...; the options below change single settings of it",
    )
    parser.add_argument(
        "--init",
        choices=INITS,
        help="start from pure noise (the paper), or from the bicubic upscale or the model's own HR "
        f"estimate diffused to --init-level; default: {default}",
    )
    add_options(parser, "steps", "init_level", "back_projection")


def from_arguments(
    args: argparse.Namespace, base: SamplingSettings | None, presets: dict[str, SamplingSettings] | None = None
) -> SamplingSettings:
    """``base`` (or the defaults), or the preset ``--quality`` names among ``presets``, with the options of
    :func:`add_arguments` that were given."""
    start = choose_preset(args.quality, base or SamplingSettings(), presets or {})
    return start.replace(
        sampler=args.sampler,
        steps=args.steps,
        init=args.init,
        init_level=args.init_level,
        back_projection=args.back_projection,
    )


def choose_preset(
    name: str | None, default: SamplingSettings, presets: dict[str, SamplingSettings]
) -> SamplingSettings:
    """The sampling settings a preset name picks: ``default`` for None or "default", else ``presets[name]``;
    ValueError naming the presets there are."""
    if name is None or name == "default":
        return default
    if name not in presets:
        raise ValueError(f"unknown sampling preset {name!r}; this model has: {', '.join(['default', *presets])}")
    return presets[name]


__all__ = ["SamplingSettings", "INITS", "MAX_STEPS"]
