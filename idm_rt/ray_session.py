"""Which Ray a command runs on: the one this process already uses, a cluster, or a local instance."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[bool]:
    """Ray for the time of one command; yields whether this command started it (a local instance).

    Uses the session this process already holds if any (left running afterwards), else connects to
    ``address`` ("auto", "HOST:PORT", "ray://HOST:PORT"; default ``$RAY_ADDRESS``), else starts a local
    instance. Whatever this function connected to or started it disconnects from or stops afterwards;
    a cluster keeps running.
    """
    try:
        import ray
    except ImportError:
        raise ImportError("this needs Ray: pip install 'idm-rt[serve]' (it installs ray[serve,data])") from None
    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address)
    try:
        yield address == "local"
    finally:
        ray.shutdown()
