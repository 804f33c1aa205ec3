"""IDM network parts: encoder, LR conditioning, implicit up-layer, U-Net."""

from .conditioning import Conditioning
from .idm import IDM

__all__ = ["IDM", "Conditioning"]
