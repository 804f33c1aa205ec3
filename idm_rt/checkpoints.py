"""Loading and saving IDM weights.

Two formats are read by :func:`load_model`:
* a released ``.pth`` (the authors' layout, shape inferred from the keys, see :mod:`idm_rt.released`),
  read with ``torch.load(weights_only=True)`` so that no pickled code runs;
* the project format written by :func:`save_model`: a folder with ``model.safetensors`` and
  ``config.json`` (network config, max training scale M, provenance).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import IDMConfig, check_max_scale
from .fileio import atomic_write
from .model import IDM
from .released import (
    CheckpointMismatch,
    infer_config,
    is_released,
    released_name,
    translate,
)
from .sampling import SamplingSettings, presets_from_dict

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODEL_FORMAT = "idm-rt/1"


def load_model(path: str | os.PathLike, config: IDMConfig | None = None, max_scale: float | None = None) -> IDM:
    """Load an IDM in eval mode, float32, on the CPU.

    Args:
        path: a released ``.pth``/``.pt`` file, or a project-format folder (or its ``.safetensors``).
        config: the network shape; inferred from the checkpoint when None.
        max_scale: largest training magnification M. Released checkpoints do not store it
            (8 for the face model, 4 for DIV2K); the default there is 8.
    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointMismatch: keys or shapes that do not fit the network, all listed.
    """
    path = Path(path)
    if max_scale is not None:
        check_max_scale(max_scale)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if is_project(path):
        return _load_project(path, config, max_scale)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # torch's zip format, or a legacy pickle (protocol >= 2)
        raise CheckpointMismatch(
            f"{path} is not a torch checkpoint file; pass a released IDM .pth or a project "
            f"folder (model.safetensors + config.json)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-checkpoint files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise CheckpointMismatch(f"{path} is not a readable torch checkpoint: {first_line}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    # a crafted file may hold other keys and values than a state dict's (weights_only allows them)
    odd = (
        [
            k
            for k, v in state.items()
            if not isinstance(k, str)
            or not isinstance(v, torch.Tensor)
            or v.layout != torch.strided
            or v.is_meta
            or v.is_quantized
        ]
        if isinstance(state, dict)
        else []
    )
    if odd:
        raise CheckpointMismatch(
            f"{path} holds entries that are not named tensors of values: "
            f"{', '.join(repr(k) for k in odd[:5])}{' and more' if len(odd) > 5 else ''}"
        )
    if not isinstance(state, dict) or not is_released(state):
        raise CheckpointMismatch(f"{path} is not a released IDM checkpoint (no 'denoise_fn.*' keys)")
    try:
        config = config or infer_config(state)
        model = IDM(config, max_scale=8.0 if max_scale is None else max_scale)
    except ValueError as e:  # keys missing, a shape no network has, or one too large to build
        raise CheckpointMismatch(f"{path} does not describe a usable IDM network: {e}") from None
    translated, unknown = translate(state, config)
    _load_state(model, translated, str(path), unexpected=unknown, rename=lambda k: released_name(k, config))
    return model.eval()


def is_project(path: str | os.PathLike) -> bool:
    """Whether :func:`load_model` reads ``path`` as the project format (else as a released checkpoint,
    which does not record its largest training scale)."""
    return Path(path).is_dir() or Path(path).suffix == ".safetensors"


def _load_project(path: Path, config: IDMConfig | None, max_scale: float | None) -> IDM:
    folder = path if path.is_dir() else path.parent
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    meta_path = folder / CONFIG_NAME
    if not weights.exists() or not meta_path.exists():
        held = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
        raise FileNotFoundError(
            f"{folder} needs both {WEIGHTS_NAME} and {CONFIG_NAME} (it holds: {', '.join(held) or 'nothing'})"
        )
    try:
        meta = json.loads(meta_path.read_text())
        config = config or IDMConfig.from_dict(meta["network"])
        max_scale = max_scale if max_scale is not None else meta["max_scale"]
        model = IDM(config, max_scale=max_scale)
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting
        raise CheckpointMismatch(f"{meta_path} is not an idm-rt model config ({e.__class__.__name__}: {e})") from None
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()}
    except Exception as e:  # noqa: BLE001 (safetensors raises its own SafetensorError for a damaged file)
        raise CheckpointMismatch(f"{weights} cannot be read: {e}") from None
    _load_state(model, state, str(weights))
    model.provenance = meta.get("provenance", {})
    try:
        defaults = meta.get("defaults") or {}
        model.recommended = SamplingSettings.from_dict(defaults, "its defaults") if defaults else None
        model.presets = presets_from_dict(meta.get("presets", {}), "its presets")
    except ValueError as e:
        raise CheckpointMismatch(f"{meta_path}: {e}") from None
    return model.eval()


def _load_state(
    model: IDM, state: dict[str, torch.Tensor], source: str, unexpected: list[str] | None = None, rename=lambda key: key
) -> None:
    """load_state_dict with every missing, unexpected and mis-shaped key named in one error; keys are
    reported under the file's own names (``rename`` maps ours back for released checkpoints)."""
    own = model.state_dict()
    missing = sorted(rename(k) for k in set(own) - set(state))
    unexpected = sorted(set(state) - set(own)) + sorted(unexpected or [])
    shapes = [
        f"{rename(k)}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches {shapes}")
        raise CheckpointMismatch(f"{source} does not fit the network: " + "; ".join(parts))
    # damaged or crafted weights would make every output NaN (a black image), or be cast silently
    unusable = [rename(k) for k in own if not state[k].is_floating_point() or not torch.isfinite(state[k]).all()]
    if unusable:
        raise CheckpointMismatch(
            f"{source} holds weights that are not finite floating-point numbers: "
            f"{unusable[:5]}{' and more' if len(unusable) > 5 else ''}"
        )
    model.load_state_dict(state)


def save_model(
    model: IDM, folder: str | os.PathLike, dtype: torch.dtype = torch.float32, provenance: dict[str, Any] | None = None
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``, each via a temp file.

    Raises:
        OSError: they cannot be written (a full disk, ...). Nothing is left behind: a model already
            in ``folder`` is kept whole, and folders this call created are removed again.
    """
    folder = Path(folder)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": MODEL_FORMAT,
        "network": model.config.to_dict(),
        "max_scale": model.max_scale,
        "dtype": str(dtype).replace("torch.", ""),
        "provenance": provenance or model.provenance,
        "defaults": model.recommended.to_dict() if model.recommended else {},
        "presets": {name: s.to_dict() for name, s in model.presets.items()},
    }

    def write(weights_tmp: str) -> None:
        """The weights into their temp file, then the config into place; the weights are renamed in
        last, so that a failure on the way leaves a model already in ``folder`` as it was."""
        try:
            save_file(state, weights_tmp)
        except SafetensorError as e:  # safetensors' own type, also for a full disk
            raise OSError(str(e)) from None
        atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))

    created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    try:
        atomic_write(folder / WEIGHTS_NAME, write)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return folder


def model_hash(model: IDM) -> str:
    """Short SHA-256 over the config and weights: identifies a model in manifests and provenance."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["load_model", "save_model", "model_hash", "CheckpointMismatch"]
