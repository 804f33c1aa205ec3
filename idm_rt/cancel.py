"""Stopping work nobody waits for any more.

The long loops of an upscale (the encoder's feature tiles and HR blocks, the tiles' conditionings, every U-Net
call) call :func:`checkpoint` between their pieces. It raises :class:`Cancelled` once the check that the caller
set for its context (:func:`cancel_when`) says so; without one it does nothing. A service sets the check for the
time of a request (its deadline passed, its client gone), so that a request it gave up on frees the worker within
one piece of work (one encoder tile, one conditioning, one U-Net call) instead of running to the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_check: ContextVar[Callable[[], bool] | None] = ContextVar("idm_rt_cancel_check", default=None)


class Cancelled(Exception):
    """The work was stopped at a checkpoint because its cancel check said so."""


def checkpoint() -> None:
    """Raise :class:`Cancelled` if the current context's cancel check says to stop."""
    check = _check.get()
    if check is not None and check():
        raise Cancelled


@contextlib.contextmanager
def cancel_when(check: Callable[[], bool]) -> Iterator[None]:
    """Within this block (in this thread or task), :func:`checkpoint` raises when ``check()`` is true."""
    token = _check.set(check)
    try:
        yield
    finally:
        _check.reset(token)
