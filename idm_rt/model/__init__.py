"""IDM network parts: encoder, LR conditioning, implicit up-layer, U-Net (torch), and what the engines share with
them without torch: the index tables (:mod:`.tables`), the pieces work is cut into and the conditioning
(:mod:`.pieces`), the interface the sampling loop calls (:mod:`.protocol`). The torch parts load when first used."""

from __future__ import annotations

from .pieces import Conditioning

__all__ = ["IDM", "Conditioning"]


def __getattr__(name: str):
    if name == "IDM":
        from .idm import IDM

        return IDM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
