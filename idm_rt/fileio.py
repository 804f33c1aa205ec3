"""Atomic file writes: never leave a half-written output behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(
    target: str | os.PathLike, write: Callable[[str], None], temp: str | os.PathLike | None = None, replace: bool = True
) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``target``, then rename it into place.

    The file gets the usual permissions (0666 less the umask); on any error the temporary file
    is removed and ``target`` is untouched. ``temp`` fixes the temporary file's name (a writer that
    records it beforehand can find what an interrupted write left); by default it is a new one.
    ``replace=False`` never replaces a file that exists when the output is put in place (one another
    process or the user made while it was being computed): FileExistsError, and that file is kept.
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
        if replace:
            os.replace(tmp, target)
        else:
            _place_new(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _place_new(tmp: str, target: Path) -> None:
    """Link ``tmp`` to ``target`` only if no file is there (one atomic step where the filesystem has hard
    links; elsewhere a check just before the rename)."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        pass
    except OSError:  # no hard links on this filesystem
        if not os.path.lexists(target):
            os.replace(tmp, target)
            return
    raise FileExistsError(f"{target} exists (it appeared while this output was being made); left it as it is")
