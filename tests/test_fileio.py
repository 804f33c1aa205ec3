"""Atomic writes: a finished file or nothing, and, when asked, never in place of a file that exists."""

from __future__ import annotations

import errno
import os

import pytest

from idm_rt.fileio import atomic_write


def _write(text: str):
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return write


def test_replace_false_keeps_a_file_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "out.txt"

    def someone_else_writes_first(tmp: str) -> None:
        target.write_text("theirs")
        _write("ours")(tmp)

    with pytest.raises(FileExistsError, match="out.txt exists"):
        atomic_write(target, someone_else_writes_first, replace=False)
    assert target.read_text() == "theirs" and os.listdir(tmp_path) == ["out.txt"]
    atomic_write(tmp_path / "new.txt", _write("ours"), replace=False)
    assert (tmp_path / "new.txt").read_text() == "ours"
    atomic_write(target, _write("ours"))  # the default replaces
    assert target.read_text() == "ours" and sorted(os.listdir(tmp_path)) == ["new.txt", "out.txt"]


def test_replace_false_without_hard_links_still_keeps_the_file(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "out.txt"
    atomic_write(target, _write("ours"), replace=False)
    assert target.read_text() == "ours"
    with pytest.raises(FileExistsError):
        atomic_write(target, _write("again"), replace=False)
    assert target.read_text() == "ours" and os.listdir(tmp_path) == ["out.txt"]
