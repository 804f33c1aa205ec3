"""Stopping a run cleanly: the first Ctrl-C (or SIGTERM) asks the loop to stop after its current step,
with a checkpoint there; a second one stops at once."""

from __future__ import annotations

import contextlib
import signal
import threading

from tqdm.auto import tqdm


@contextlib.contextmanager
def stop_requests():
    """A list that gets an entry on the first SIGINT or SIGTERM (the loop then stops after its
    current step); a second signal raises KeyboardInterrupt at once. Handlers are installed only in
    the main thread (elsewhere Python cannot), also over an ignored SIGINT of a background job."""
    requested: list[int] = []

    def handler(signum, _frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        tqdm.write("stopping after this step, with a checkpoint (Ctrl-C again: stop at once, without one)")

    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
