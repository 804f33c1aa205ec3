"""idm-rt: fast inference for IDM (Implicit Diffusion Models for continuous super-resolution)."""

from .checkpoints import CheckpointMismatch, load_model, save_model
from .config import IDMConfig, preset
from .memory import configure_allocator
from .model import IDM, Conditioning
from .sampling import SamplingSettings
from .threads import configure_threads
from .upscaler import Upscaler

__all__ = ["Upscaler", "SamplingSettings", "IDM", "IDMConfig", "Conditioning", "CheckpointMismatch", "load_model",
           "save_model", "preset", "configure_threads", "configure_allocator"]
__version__ = "0.1.0"
