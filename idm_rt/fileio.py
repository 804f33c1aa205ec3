"""Atomic file writes: never leave a half-written output behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(target: str | os.PathLike, write: Callable[[str], None],
                 temp: str | os.PathLike | None = None) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``target``, then rename it into place.

    The file gets the usual permissions (0666 less the umask); on any error the temporary file
    is removed and ``target`` is untouched. ``temp`` fixes the temporary file's name (a writer that
    records it beforehand can find what an interrupted write left); by default it is a new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if temp is None:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix + ".tmp")
        os.close(fd)
    else:
        tmp = str(temp)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
