"""Training options: one dataclass, named recipes (``recipes/``), JSON config files and ``key=value``
overrides.

The resolved options are saved next to every run (``train_config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idm_rt.backends.registry import BACKENDS
from idm_rt.config import check_max_scale, preset, strict_from_dict
from idm_rt.sampling import SamplingSettings

SCALE_SAMPLINGS = ("uniform", "log")


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the CPU-sized ``small`` recipe."""

    network_preset: str = "small"  # the network's shape (idm_rt.config.PRESETS)
    network: dict[str, Any] = field(default_factory=dict)  # overrides of that shape's fields
    data: str = "../shared/datasets/train"
    val_data: str | None = None  # held-out folder; None: the last ``val_holdout`` images of data
    val_holdout: int = 4
    out: str = "runs/small"
    crop: int = 64  # HR crop side (the batch's output size), a multiple of 8
    batch: int = 8  # per process; the effective batch is batch x world size
    max_scale: float = 4.0  # M: stage 1 trains at M, stage 2 at s ~ U(1, M]
    fixed_scale_steps: int = 4000  # the stage switch point
    steps: int = 8000
    max_timestep: int = 2000  # train noise levels t in 1..max_timestep (2000: the paper's full range)
    snr_gamma: float = 0.0  # > 0: Min-SNR-gamma weighting of the noise loss (training.loss.IDMLoss)
    aux_weight: float = 0.0  # > 0: L1 regression of the encoder's condition image onto the HR image
    regression_steps: int = 0  # the first steps train the condition image alone (aux loss, no U-Net call)
    lr: float = 1e-4  # stage 1
    lr_stage2: float = 2e-5
    lr_decay_steps: int = 0  # > 0: over the last lr_decay_steps steps the rate falls linearly towards 0, step k
    # (0-based) at (steps - k) / lr_decay_steps of it (the decay phase of a warmup-stable-decay schedule; it
    # follows --steps when a resumed run is given more)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast, on GPUs)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 250
    keep_last: int = 3
    val_every: int = 500
    val_crop: int = 128
    val_sampling: dict[str, Any] = field(default_factory=lambda: {"steps": 10})  # idm_rt.SamplingSettings fields
    threads: int = 0  # torch CPU threads; 0: the CPUs this process may use (idm_rt.configure_threads)
    init_from: str | None = None  # a model folder (e.g. a checkpoint's ema/) whose weights start a new run
    freeze_encoder: bool = False  # the encoder keeps its weights; only the conditioner and the U-Net train
    scale_sampling: str = "uniform"  # s in (1, M]: "uniform" (the paper's) or "log" (log-uniform: each octave alike)
    lr_patch: int = 0  # > 0: regression steps crop round(lr_patch * s) HR pixels a side (LR lr_patch a side), at most
    max_crop: int = 192  # ... max_crop; 0: the HR crop is ``crop`` at every scale

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The options, checked (:meth:`check`): a bad value fails here, not steps into a run. Runs saved
        before ``val_sampling`` gave its fields as ``val_sampler``, ``val_steps``, ... and called the network's
        shape ``preset`` (read as such)."""
        d = {"network_preset" if k == "preset" else k: v for k, v in d.items()}  # its name in older runs
        legacy = {
            k: d.pop(f"val_{k}") for k in ("sampler", "steps", "init", "init_level", "consistency") if f"val_{k}" in d
        }  # (consistency: the back-projection count's old name, SamplingSettings.from_dict)
        if legacy:
            d["val_sampling"] = {**d.get("val_sampling", {}), **legacy}
        cfg = strict_from_dict(cls, d, "training options")
        cfg.check()
        return cfg

    def check(self) -> None:
        """ValueError naming the first option that is of the wrong type or out of range."""
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{f.name} must be true or false, got {value!r}")
            elif isinstance(default, (int, float)) and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or isinstance(default, int)
                and not isinstance(value, int)
                or not math.isfinite(value)
            ):
                raise ValueError(
                    f"{f.name} must be {'an integer' if isinstance(default, int) else 'a finite number'}, got {value!r}"
                )
        positive = (
            "crop",
            "batch",
            "max_timestep",
            "log_every",
            "ckpt_every",
            "keep_last",
            "val_crop",
            "lr",
            "lr_stage2",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in (
            "steps",
            "fixed_scale_steps",
            "val_every",
            "val_holdout",
            "threads",
            "grad_clip",
            "snr_gamma",
            "aux_weight",
            "regression_steps",
            "lr_decay_steps",
            "lr_patch",
            "max_crop",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        BACKENDS["torch"].check_precision(self.precision)  # autocast: the torch backend's own precisions
        if self.regression_steps and not self.aux_weight:
            raise ValueError("regression_steps train the condition image with the aux loss: set aux_weight > 0")
        if self.crop % 8:
            raise ValueError(f"crop must be a multiple of 8, got {self.crop}")
        if self.scale_sampling not in SCALE_SAMPLINGS:
            raise ValueError(f"scale_sampling must be one of {SCALE_SAMPLINGS}, got {self.scale_sampling!r}")
        if self.lr_patch and self.max_crop < 8:
            raise ValueError(f"max_crop must be >= 8 when lr_patch is set, got {self.max_crop}")
        if self.freeze_encoder and (self.regression_steps or self.aux_weight):
            raise ValueError(
                "freeze_encoder keeps the encoder's weights, which regression_steps and aux_weight train: set both to 0"
            )
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"init_from must be a model folder, got {self.init_from!r}")
        check_max_scale(self.max_scale)
        try:
            network = preset(self.network_preset, **self.network)
        except TypeError as e:  # an unknown network field
            raise ValueError(f"network options: {e}") from None
        self.sampling().check_for(network)

    def sampling(self) -> SamplingSettings:
        """How validation samples (``val_sampling``), checked."""
        return SamplingSettings.from_dict(self.val_sampling, "val_sampling")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE_DIR = Path(__file__).parent / "recipes"


def recipes() -> dict[str, dict[str, Any]]:
    """The named training recipes: ``small`` (the options' defaults, CPU-sized) and every JSON file of
    ``recipes/`` by its name: ``default`` is the bundled model's, ``default-v1`` the one before it,
    ``official-face-8x`` and ``official-scenes-4x`` the paper's."""
    return {"small": {}, **{p.stem: json.loads(p.read_text()) for p in sorted(RECIPE_DIR.glob("*.json"))}}


def parse_value(text: str) -> Any:
    """``key=value`` override values are JSON where they parse as JSON, else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def resolve(
    recipe: str = "small",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """A recipe (:func:`recipes`), then the config file's keys, then ``key=value`` overrides
    (``network.dropout=0``); ``base`` (a saved run's options) replaces the recipe and the file."""
    if base is not None:
        d = dict(base)
    else:
        known = recipes()
        if recipe not in known:
            raise ValueError(f"unknown training recipe {recipe!r}; choose from {sorted(known)}")
        d = TrainConfig().to_dict()
        d.update(known[recipe])
        if config_file:
            d.update(json.loads(Path(config_file).read_text()))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        if key.startswith("network."):
            d["network"] = {**d["network"], key.split(".", 1)[1]: parse_value(value)}
        else:
            d[key] = parse_value(value)
    return TrainConfig.from_dict(d)
