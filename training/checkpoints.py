"""A run's checkpoints: ``checkpoints/step_N/{ema,raw}`` in the project format plus ``trainer_state.pt``
(optimizer, grad scaler, every rank's random streams, the step), written to a temp folder and renamed,
the last few kept; only folders that are checkpoints are ever resumed from or deleted."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import re
import shutil
from pathlib import Path

import torch

from idm_rt import IDM, IDMConfig, save_model

STATE_NAME = "trainer_state.pt"
CHECKPOINT_NAME = re.compile(r"step_\d{8}")


class CheckpointError(OSError):
    """A checkpoint that cannot be resumed from or written; the message is one line naming it."""


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder as :func:`write_checkpoint` writes them: named
    ``step_NNNNNNNN`` and holding ``ema/``, ``raw/`` and the trainer state."""
    return (
        CHECKPOINT_NAME.fullmatch(path.name) is not None
        and (path / "ema").is_dir()
        and (path / "raw").is_dir()
        and (path / STATE_NAME).is_file()
    )


def list_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints in ``folder`` (:func:`is_checkpoint`), oldest first; anything else there is
    neither resumed from nor deleted."""
    return sorted(p for p in folder.iterdir() if is_checkpoint(p)) if folder.exists() else []


def write_checkpoint(
    folder: Path, step: int, ema: IDM, raw: IDM, state: dict, provenance: dict, keep_last: int
) -> Path:
    """``folder/step_N`` with both models and the trainer ``state``; then only the last ``keep_last``
    checkpoints are kept.

    Raises:
        CheckpointError: it cannot be written (a full disk: nothing is left behind), or ``step_N``
            exists and is not a checkpoint (it is left alone).
    """
    final = folder / f"step_{step:08d}"
    if final.exists() and not is_checkpoint(final):
        raise CheckpointError(f"{final} exists and is not a checkpoint: move it away (it was left alone)")
    tmp = folder / f".tmp_step_{step:08d}"  # (a leftover of an interrupted save is replaced)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(ema, tmp / "ema", provenance=provenance)
        save_model(raw, tmp / "raw", provenance=provenance)
        with open(tmp / STATE_NAME, "wb") as f:  # a file object: a full disk is an OSError, not a RuntimeError
            torch.save(state, f)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {e}") from None
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(folder)[:-keep_last]:
        shutil.rmtree(old)
    return final


def check_same_network(path: Path, saved: IDMConfig, ours: IDMConfig) -> None:
    """ValueError naming every difference when checkpoint ``path`` holds another network than ``ours``
    (dropout may change: it has no weights)."""
    ours = dataclasses.replace(ours, dropout=saved.dropout)
    if saved != ours:
        changed = {
            k: (v, getattr(ours, k))
            for k, v in saved.to_dict().items()
            if getattr(ours, k) != (tuple(v) if isinstance(v, list) else v)
        }
        raise ValueError(
            f"{path} holds another network than these options ask for "
            f"({', '.join(f'{k}: {a} there, {b} here' for k, (a, b) in changed.items())}); a "
            f"resumed run keeps its network's shape"
        )


@contextlib.contextmanager
def restoring(file: Path):
    """Any failure while the trainer state ``file`` is read and applied, as one line naming it
    (CheckpointError): a truncated, empty or random file, or one that safe loading refuses."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 (torch.load and the load_state_dicts raise many types)
        raise CheckpointError(
            f"{file} cannot be resumed from ({_why(e)}); it is damaged or not a trainer state"
        ) from None


def _why(e: Exception) -> str:
    """One line on why a trainer state did not load."""
    if isinstance(e, pickle.UnpicklingError):  # torch's message is a page of advice, partly unsafe
        return "safe loading (weights_only=True) refused its contents"
    first = str(e).strip().split("\n")[0].split(". ")[0]
    return f"{e.__class__.__name__}: {first}" if first else e.__class__.__name__
