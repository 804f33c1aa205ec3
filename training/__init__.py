"""Training and evaluation of IDM models (not public API: use ``python -m idm_rt.training.train``)."""
