"""Devices named the way torch names them ("cpu", "cuda", "cuda:1"), without needing torch."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"([a-z_]+)(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    """A device type and its index (None: the current one of that type)."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def parse_device(device: Any) -> Device:
    """``device`` ("cpu", "cuda:1", a :class:`Device` or a ``torch.device``) as a :class:`Device`; ValueError
    naming it when it is none of these."""
    if isinstance(device, Device):
        return device
    if hasattr(device, "type") and hasattr(device, "index"):  # a torch.device
        return Device(str(device.type), device.index)
    match = _NAME.fullmatch(device.strip()) if isinstance(device, str) else None
    if match is None or (match[1] not in KNOWN and not _torch_knows(device)):
        raise ValueError(f"unknown device {device!r}: give one as torch names them, e.g. 'cpu', 'cuda' or 'cuda:1'")
    return Device(match[1], int(match[2]) if match[2] is not None else None)


KNOWN = ("cpu", "cuda")  # without torch; with it, every type torch names (mps, xpu, ...)


def _torch_knows(name: str) -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True
