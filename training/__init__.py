"""Training and evaluation of IDM models (not public API: use ``python -m training.train``)."""
