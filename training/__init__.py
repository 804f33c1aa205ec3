"""Training and evaluation of IDM models (not public API: use ``python -m idm_rt.training.train``). They need torch:
without it, importing this package (and so ``python -m idm_rt.training.*``) says so in one line."""

from idm_rt.backends.registry import require

require(("torch",), "training", package=__name__)
