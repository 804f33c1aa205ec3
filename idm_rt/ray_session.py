"""Which Ray a command runs on: the one this process already uses, a cluster, or a local instance of its own."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from .ray_local import READY


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[bool]:
    """Ray for the time of one command; yields whether this command started it (a local instance).

    Uses the session this process already holds if any (left running afterwards), else connects to ``address``
    ("auto", "HOST:PORT", "ray://HOST:PORT"; default ``$RAY_ADDRESS``; disconnected afterwards, the cluster keeps
    running), else starts a local instance on 127.0.0.1 (:mod:`idm_rt.ray_local`) that stops with this command,
    however it ends.
    """
    try:
        import ray
    except ImportError:
        raise ImportError("this needs Ray: pip install 'idm-rt[serve]' (it installs ray[serve,data])") from None
    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS")
    with contextlib.ExitStack() as stack:
        local = not address or address == "local"
        if local:
            address = stack.enter_context(local_instance())
        ray.init(address=address)
        try:
            yield local
        finally:
            ray.shutdown()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the system picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_instance() -> Iterator[str]:
    """A local Ray head owned by a watcher process that stops it when this process ends; yields its address."""
    temp = tempfile.mkdtemp(prefix="idm-rt-ray-")  # short: Ray's socket paths live under it
    port = free_port()
    # A token of its own: Ray's GCS and raylet listen on every interface (README), the token keeps others out.
    # The command's process and the instance (and every Ray process they start) share it through the environment.
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    from ray._raylet import Config

    Config.initialize("")  # Ray read its settings when imported: read them again (as ray.init does for tokens)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "idm_rt.ray_local", temp, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = watcher.stdout.readline().strip()
        if line != READY:
            raise RuntimeError(f"the local Ray instance did not start: {line or 'no answer'}")
        print(
            f"note: started a local Ray instance (GCS port {port}, a new access token, files in {temp}); it stops "
            "with this command",
            file=sys.stderr,
        )
        yield f"127.0.0.1:{port}"
    finally:
        watcher.stdin.close()  # (a killed command closes it too: the watcher then stops Ray)
        watcher.wait()
