"""A local Ray instance that cannot outlive the command that asked for it.

``python -m idm_rt.ray_local TEMP PORT`` is started by :func:`idm_rt.ray_session.ray_session` with a pipe as its
standard input. It starts ``ray start --head --block`` in a session of its own (GCS on 127.0.0.1:PORT, node
address 127.0.0.1, no dashboard, Ray's files under TEMP), says ``ready`` on its standard output, and waits for the
pipe to close: when the command ends, normally or killed (``kill -9`` included, the kernel closes its end), it
stops every process of that session (SIGTERM, then SIGKILL after a grace period: GCS, raylet, agents, workers)
and removes TEMP. Ray's own agents otherwise stay orphaned, listening, for minutes after a killed driver.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 5.0  # between SIGTERM and SIGKILL
READY = "ready"


def head_command(temp: str, port: int) -> list[str]:
    """``ray start`` for a head node on this machine only."""
    ray = shutil.which("ray") or "ray"
    return [
        ray,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]


def session_processes(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid:  # (state, ppid, pgrp, session, ...)
            pids.append(int(entry.name))
    return pids


def stop_session(sid: int, grace_s: float = GRACE_S) -> None:
    """SIGTERM to every process of session ``sid``, SIGKILL to those left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid in session_processes(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while session_processes(sid) and time.monotonic() < end:
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    temp, port = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle; it ends us by the pipe
    with open(Path(temp) / "ray_start.log", "w") as log:
        head = subprocess.Popen(
            head_command(temp, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while head.poll() is None and time.monotonic() < deadline:
            if "Ray runtime started" in (Path(temp) / "ray_start.log").read_text(errors="replace"):
                print(READY, flush=True)
                break
            time.sleep(0.2)
        else:
            print("failed: " + (Path(temp) / "ray_start.log").read_text(errors="replace")[-2000:], flush=True)
            return 1
        sys.stdin.buffer.read()  # until the command's end of the pipe closes
        return 0
    finally:
        stop_session(head.pid)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
