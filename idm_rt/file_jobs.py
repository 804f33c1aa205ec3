"""Which files a run reads and which it writes: the inputs a command names (files, folders, globs, or URIs that
pyarrow's filesystems read), each paired with its output, and the pairs no run may do.

The command line and the Ray batch job plan with the one function :func:`plan_jobs`, so that the two cannot
differ on what they read or would write. Its rules:

* an output is never one of the inputs, whatever ``--overwrite`` says (compared as the files they resolve to);
* a link found in a folder (by naming the folder or a glob) is followed only to a file in that same folder or
  below it, unless ``follow_links``; a link named on the command line is the user's choice and is followed;
* an output is named after the path the input was found by (a link's own name, not its target's);
* a file named twice is done once; files in a folder that are not images are listed, not silently passed over.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import os
import posixpath
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .image_files import encode_image, image_format, read_image, save_image
from .images import IMAGE_SUFFIXES

MAX_LISTED = 5  # names listed in one note before "and N more"


@dataclass(frozen=True)
class Place:
    """A file: a local path (``fs`` None) or a path on a pyarrow filesystem (``s3://...``, ``gs://...``)."""

    path: Path | PurePosixPath
    fs: Any = None  # pyarrow.fs.FileSystem
    scheme: str = ""

    def __str__(self) -> str:
        return str(self.path) if self.fs is None else f"{self.scheme}://{self.path}"

    @property
    def identity(self) -> str:
        """What two places that are the same file share: the resolved path of a local file (links followed),
        the URI of a remote one."""
        return str(Path(os.path.realpath(self.path))) if self.fs is None else str(self)

    def exists(self) -> bool:
        if self.fs is None:
            return os.path.lexists(self.path)
        from pyarrow.fs import FileType

        return self.fs.get_file_info(str(self.path)).type != FileType.NotFound

    def read(self, max_pixels: int | None = None, check_size=None):
        """The image, decoded (:func:`~idm_rt.image_files.read_image`; larger than ``max_pixels``, or refused by
        ``check_size(height, width)``: refused undecoded)."""
        if self.fs is None:
            return read_image(self.path, max_pixels, check_size)
        with self.fs.open_input_file(str(self.path)) as f:
            return read_image(io.BytesIO(f.read()), max_pixels, check_size)

    def write(self, image, replace: bool = True) -> None:
        """Atomic: written under a temporary name beside the target, then renamed (moved) into place. On a
        local disk ``replace=False`` keeps a file that appeared meanwhile (FileExistsError); pyarrow's
        filesystems have no such move, so there the check before the job is all there is."""
        if self.fs is None:
            save_image(image, self.path, replace)
            return
        buffer = io.BytesIO()
        encode_image(image, image_format(self.path), buffer)
        parent = str(self.path.parent)
        self.fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".{self.path.stem}.{secrets.token_hex(4)}{self.path.suffix}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(buffer.getvalue())
            self.fs.move(tmp, str(self.path))
        except BaseException:
            from pyarrow.fs import FileType

            if self.fs.get_file_info(tmp).type != FileType.NotFound:
                self.fs.delete_file(tmp)
            raise


@dataclass(frozen=True)
class Job:
    """One input and the output it is written to."""

    src: Place
    dst: Place


@dataclass
class Plan:
    """What a run will do: ``jobs`` to run, ``problems`` (errors: inputs not found or refused, each one a failed
    input), ``existing`` (jobs whose output exists; the command decides whether that is an error or a job
    already done) and ``notes`` (said, not failures: files skipped as not images, names told apart)."""

    jobs: list[Job] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    existing: list[Job] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def remote(uri: str) -> tuple[Any, str, str]:
    """(filesystem, path, scheme) of a URI; ValueError naming it when pyarrow cannot open it."""
    try:
        from pyarrow.fs import FileSystem
    except ImportError:
        raise ValueError(f"{uri}: reading URIs needs pyarrow (pip install 'idm-rt[serve]')") from None
    try:
        fs, path = FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ... for bad or unreachable URIs)
        raise ValueError(f"{uri}: cannot open it: {e}") from None
    return fs, path, uri.split("://", 1)[0]


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


class _Finder:
    """Expands what a command names into places, collecting problems and notes as it goes."""

    def __init__(self, follow_links: bool):
        self.follow_links = follow_links
        self.places: list[Place] = []
        self.problems: list[str] = []
        self.not_images: list[str] = []
        self.links_out: list[str] = []

    def local(self, item: str) -> None:
        p = Path(item)
        if p.is_dir():
            entries = sorted(q for q in p.iterdir() if q.is_file())  # (is_file follows links)
            found = [q for q in entries if q.suffix.lower() in IMAGE_SUFFIXES]
            self.not_images += [str(q) for q in entries if q.suffix.lower() not in IMAGE_SUFFIXES]
            found = [q for q in found if self._kept(q, p)]
            if not found:
                self.problems.append(f"{item}: no images in this folder")
            self.places += [Place(q) for q in found]
        elif p.exists():
            self.places.append(Place(p))  # named by the user: a link is followed
        else:
            matched = sorted(Path(m) for m in glob.glob(item) if Path(m).is_file())
            matched = [m for m in matched if self._kept(m, m.parent)]
            if not matched:
                self.problems.append(f"{item}: no such file")
            self.places += [Place(m) for m in matched]

    def _kept(self, file: Path, folder: Path) -> bool:
        """Whether ``file``, found in ``folder``, is no link or a link to a file in ``folder`` or below (any
        link, with ``follow_links``); a link leading out is recorded."""
        if self.follow_links or not file.is_symlink():
            return True
        root, target = os.path.realpath(folder), os.path.realpath(file)
        if os.path.commonpath([root, target]) == root:
            return True
        self.links_out.append(f"{file} -> {target}")
        return False

    def uri(self, item: str) -> None:
        try:
            fs, path, scheme = remote(item)
        except ValueError as e:
            self.problems.append(str(e))
            return
        from pyarrow.fs import FileSelector, FileType

        kind = fs.get_file_info(path).type
        if kind == FileType.Directory:
            entries = [e for e in fs.get_file_info(FileSelector(path)) if e.is_file]
            found = sorted(e.path for e in entries if PurePosixPath(e.path).suffix.lower() in IMAGE_SUFFIXES)
            self.not_images += sorted(
                f"{scheme}://{e.path}" for e in entries if PurePosixPath(e.path).suffix.lower() not in IMAGE_SUFFIXES
            )
            problem = "no images in this folder"
        elif kind == FileType.File:
            found, problem = [path], ""
        else:
            parent, pattern = posixpath.split(path)
            entries = fs.get_file_info(FileSelector(parent, allow_not_found=True))
            found = sorted(e.path for e in entries if e.is_file and fnmatch.fnmatchcase(e.base_name, pattern))
            problem = "no such file"
        if not found:
            self.problems.append(f"{item}: {problem}")
        self.places += [Place(PurePosixPath(p), fs, scheme) for p in found]


def find_inputs(items: list[str], follow_links: bool = False) -> tuple[list[Place], list[str], list[str]]:
    """Files, folders (the images inside, sorted), globs and URIs of any of these -> (places, problems, notes);
    a file named twice is done once, under the first name it was found by."""
    finder = _Finder(follow_links)
    for item in items:
        finder.uri(item) if "://" in item else finder.local(item)
    notes = []
    if finder.not_images:
        notes.append(
            f"skipped {len(finder.not_images)} file(s) that are not images ({_listed(finder.not_images)}); "
            f"images end in {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    problems = finder.problems + [
        f"{link} leads out of its folder; skipped (--follow-links upscales such files)" for link in finder.links_out
    ]
    unique: dict[str, Place] = {}
    for place in finder.places:
        unique.setdefault(place.identity, place)
    return list(unique.values()), problems, notes


def output_names(sources: list[PurePosixPath | Path]) -> tuple[list[str], list[str]]:
    """(file name of each source's output in a folder, notes): ``<stem>.png``; sources sharing a stem (a.jpg and
    a.png) keep their suffix in the name (``a.jpg.png``, ``a.png.png``), then ``-2``, ``-3``... for same-named files
    from different folders, so that none overwrites another."""
    stems = [p.stem for p in sources]
    names: list[str] = []
    shared = sorted({str(p.name) for p in sources if stems.count(p.stem) > 1})
    for p in sources:
        base = p.name if stems.count(p.stem) > 1 else p.stem
        name, n = f"{base}.png", 1
        while name in names:
            n += 1
            name = f"{base}-{n}.png"
        names.append(name)
    notes = (
        [
            f"inputs sharing a name ({_listed(shared)}) keep their suffix in the output's name, e.g. "
            f"{shared[0]} -> {shared[0]}.png"
        ]
        if shared
        else []
    )
    return names, notes


def plan_outputs(
    sources: list[PurePosixPath | Path], out: PurePosixPath | Path, out_is_dir: bool
) -> tuple[list[PurePosixPath | Path], list[str]]:
    """(each source's output, notes): OUT itself for one source and an OUT with an image suffix, else files in the
    folder OUT (:func:`output_names`). ValueError for several sources and an image file name, or an output file of
    a type no format is known for."""
    named_image = out.suffix.lower() in IMAGE_SUFFIXES and not out_is_dir
    if len(sources) > 1 and named_image:
        raise ValueError(
            f"{len(sources)} input images need an output folder, not the file name {out} (-o FOLDER "
            "writes FOLDER/<name>.png)"
        )
    if not (len(sources) > 1 or out_is_dir or not out.suffix):
        if not named_image:
            raise ValueError(f"unknown output image type {out.suffix!r} (use one of {sorted(IMAGE_SUFFIXES)})")
        return [out], []
    names, notes = output_names(sources)
    return [out / name for name in names], notes


def output_place(text: str) -> tuple[Place, bool]:
    """OUT as a place, and whether it names a folder (an existing one, or a path ending in a slash)."""
    if "://" not in text:
        return Place(Path(text)), Path(text).is_dir() or text.endswith(("/", os.sep))
    from pyarrow.fs import FileType

    fs, path, scheme = remote(text)
    return Place(PurePosixPath(path), fs, scheme), fs.get_file_info(path).type == FileType.Directory or text.endswith(
        "/"
    )


def plan_jobs(inputs: list[str], output: str, follow_links: bool = False) -> Plan:
    """The plan of ``upscale IN... -o OUT`` (:mod:`this module's rules <idm_rt.file_jobs>`); ValueError for an OUT
    that cannot take the inputs (several inputs and a file name, an unknown image type, a URI pyarrow cannot
    open)."""
    sources, problems, notes = find_inputs(inputs, follow_links)
    out, out_is_dir = output_place(output)
    if not sources:
        return Plan(problems=problems, notes=notes)
    targets, naming = plan_outputs([s.path for s in sources], out.path, out_is_dir)
    plan = Plan(problems=problems, notes=notes + naming)
    inputs_seen = {s.identity for s in sources}
    for src, target in zip(sources, targets):
        job = Job(src, Place(target, out.fs, out.scheme))
        if job.dst.identity in inputs_seen:  # whatever --overwrite says
            plan.problems.append(f"{job.dst} is an input; skipped {src} (choose another output)")
        elif job.dst.exists():
            plan.existing.append(job)
        else:
            plan.jobs.append(job)
    return plan


def check_writable(folders: set[Path]) -> None:
    """ValueError, before any work, for a local output folder that cannot be made or written: the nearest part of
    its path that exists must be a folder this process may write in."""
    for folder in sorted(folders):
        there = next(p for p in (folder, *folder.absolute().parents) if p.exists())
        if not there.is_dir():
            raise ValueError(f"cannot write into {folder}: {there} is a file, not a folder")
        if not os.access(there, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write into {folder}: no permission to write in {there}")
