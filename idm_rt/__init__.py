"""idm-rt: fast inference for IDM (Implicit Diffusion Models for continuous super-resolution)."""

from pathlib import Path as _Path

# A source checkout keeps training/, export/ and kernels/ beside idm_rt/ (pyproject.toml's package-dir installs
# them inside it). Imported from a checkout rather than from an install (`python -m idm_rt` run from the
# repository root puts the checkout first on sys.path, ahead of a plain `pip install .`), idm_rt.training,
# idm_rt.export and idm_rt.kernels are found beside it.
if not (_Path(__file__).parent / "kernels").is_dir() and (_Path(__file__).parent.parent / "pyproject.toml").is_file():
    __path__.append(str(_Path(__file__).parent.parent))

from .config import IDMConfig, preset
from .memory import configure_allocator
from .model import Conditioning
from .sampling import SamplingSettings
from .threads import configure_threads
from .upscaler import DEFAULT_ENGINES, DEFAULT_MODEL, Upscaler

__all__ = [
    "Upscaler",
    "DEFAULT_MODEL",
    "DEFAULT_ENGINES",
    "SamplingSettings",
    "IDM",
    "IDMConfig",
    "Conditioning",
    "CheckpointMismatch",
    "load_model",
    "save_model",
    "preset",
    "configure_threads",
    "configure_allocator",
]
__version__ = "0.1.0"

# The torch network and its checkpoints load when first asked for: engines run without torch installed.
_WITH_TORCH = {
    "IDM": ".model",
    "CheckpointMismatch": ".checkpoints",
    "load_model": ".checkpoints",
    "save_model": ".checkpoints",
}


def __getattr__(name: str):
    if name in _WITH_TORCH:
        import importlib

        from .backends.registry import require

        require(("torch",), f"idm_rt.{name}")
        return getattr(importlib.import_module(_WITH_TORCH[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
