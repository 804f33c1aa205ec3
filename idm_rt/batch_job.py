"""``python -m idm_rt upscale IN... -o OUT --ray``: many images through Ray Data, on a pool of Upscaler workers.

Inputs are what the CLI takes (files, folders, globs) or URIs that pyarrow's filesystems read
(``s3://bucket/photos/``, ``gs://...``, with the credentials pyarrow finds); OUT may be such a URI too.
Outputs are named as the CLI names them (:func:`~idm_rt.cli.plan_outputs`) and written atomically (a
temporary name, then a rename or move). Outputs that exist are skipped before any work is scheduled, so
a rerun continues an interrupted job; unreadable files are listed and skipped. Each worker is a Ray actor
holding one Upscaler: by default one per CPU of the cluster, or one per GPU with a CUDA device.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import posixpath
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .cli import describe, expand_inputs, load_upscaler, plan_outputs, upscale_options
from .image_files import encode, image_format, read_image, save_image
from .images import IMAGE_SUFFIXES
from .memory import configure_allocator
from .ray_session import ray_session


@dataclass(frozen=True)
class Place:
    """A file: a local path (``fs`` None, handled exactly as the CLI does) or a path on a pyarrow filesystem."""

    path: Path | PurePosixPath
    fs: Any = None  # pyarrow.fs.FileSystem
    scheme: str = ""

    def __str__(self) -> str:
        return str(self.path) if self.fs is None else f"{self.scheme}://{self.path}"

    def exists(self) -> bool:
        if self.fs is None:
            return self.path.exists()
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
        fmt = image_format(self.path)
        buffer = io.BytesIO()
        encode(image, fmt, buffer)
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


def _remote(uri: str) -> tuple[Any, str, str]:
    """(filesystem, path, scheme) of a URI; ValueError naming it when pyarrow cannot open it."""
    from pyarrow.fs import FileSystem

    try:
        fs, path = FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ... for bad or unreachable URIs)
        raise ValueError(f"{uri}: cannot open it: {e}") from None
    return fs, path, uri.split("://", 1)[0]


def find_inputs(items: list[str]) -> tuple[list[Place], list[str]]:
    """Files, folders (images inside, sorted), globs and URIs of any of these -> (files, problems), as
    :func:`~idm_rt.cli.expand_inputs` does for local paths."""
    places, problems = [], []
    for item in items:
        if "://" not in item:
            files, found_problems = expand_inputs([item])
            places += [Place(f) for f in files]
            problems += found_problems
            continue
        try:
            fs, path, scheme = _remote(item)
        except ValueError as e:
            problems.append(str(e))
            continue
        from pyarrow.fs import FileSelector, FileType

        kind = fs.get_file_info(path).type
        if kind == FileType.Directory:
            found = sorted(e.path for e in fs.get_file_info(FileSelector(path)) if e.is_file and
                           PurePosixPath(e.path).suffix.lower() in IMAGE_SUFFIXES)
            problem = "no images in this folder"
        elif kind == FileType.File:
            found, problem = [path], ""
        else:
            parent, pattern = posixpath.split(path)
            entries = fs.get_file_info(FileSelector(parent, allow_not_found=True))
            found = sorted(e.path for e in entries if e.is_file and fnmatch.fnmatchcase(e.base_name, pattern))
            problem = "no such file"
        if not found:
            problems.append(f"{item}: {problem}")
        places += [Place(PurePosixPath(p), fs, scheme) for p in found]
    unique: dict[str, Place] = {}
    for place in places:  # a file named twice is done once
        unique.setdefault(str(place), place)
    return list(unique.values()), problems


def _output(text: str) -> tuple[Place, bool]:
    """OUT as a place, and whether it is an existing folder."""
    if "://" not in text:
        return Place(Path(text)), Path(text).is_dir()
    from pyarrow.fs import FileType

    fs, path, scheme = _remote(text)
    return Place(PurePosixPath(path), fs, scheme), fs.get_file_info(path).type == FileType.Directory


class UpscaleWorker:
    """A Ray Data actor: one Upscaler, each row's image read, upscaled and written."""

    def __init__(self, args: argparse.Namespace, filesystems: list[tuple[Any, str]]):
        configure_allocator()  # a worker is a process of its own: freed memory kept for the next image
        self.options, self.overwrite, self.filesystems = upscale_options(args), args.overwrite, filesystems
        threads = {"threads": max(1, round(args.worker_cpus or 1))}  # ONNX Runtime would take every core
        try:
            self.up, self.error = load_upscaler(args, threads if args.backend == "onnxruntime" else None), ""
        except Exception as e:  # noqa: BLE001 (said by the driver, once, instead of a traceback per retry)
            self.up, self.error = None, describe(e)

    def _place(self, path: str, fs: int) -> Place:
        return Place(Path(path)) if fs < 0 else Place(PurePosixPath(path), *self.filesystems[fs])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [self.run(self._place(s, int(sf)), self._place(d, int(df)))
                for s, sf, d, df in zip(batch["src"], batch["src_fs"], batch["dst"], batch["dst_fs"])]
        return {"status": np.array([d[0] for d in done]), "message": np.array([d[1] for d in done])}

    def run(self, src: Place, dst: Place) -> tuple[str, str]:
        """("done" | "skipped" | "failed" | "no model", the message the CLI prints for it)."""
        if self.up is None:
            return "no model", f"a worker cannot load the model: {self.error}"
        if not self.overwrite and dst.exists():  # written since the job started (another job?)
            return "skipped", f"{dst} exists (use --overwrite to replace it); skipped {src}"
        try:
            image = src.read(self.up.max_pixels, lambda h, w: self.up.check_output_pixels(
                h, w, self.options["scale"], self.options["size"]))
        except ValueError as e:
            return "failed", f"{src}: {e}"
        except Exception as e:  # noqa: BLE001 (PIL raises several types for unreadable files)
            return "failed", f"cannot read {src}: {e}"
        try:
            result = self.up.upscale(image, progress=False, **self.options)
            dst.write(result, replace=self.overwrite)
        except Exception as e:  # noqa: BLE001 (one bad file, or a full disk, must not stop the others)
            return "failed", f"{src}: {describe(e)}"
        return "done", f"{src} -> {dst} ({result.size[0]}x{result.size[1]})"


def run_batch_job(args: argparse.Namespace) -> int:
    """The ``upscale --ray`` command; exit status 1 when any input failed."""
    try:
        sources, problems = find_inputs(args.inputs)
        out, out_is_dir = _output(args.output)
        targets = plan_outputs([s.path for s in sources], out.path, out_is_dir) if sources else []
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr)
    todo = [(s, Place(t, out.fs, out.scheme)) for s, t in zip(sources, targets)]
    if not args.overwrite:
        left = [(s, t) for s, t in todo if not t.exists()]
        if len(left) < len(todo):
            print(f"skipped {len(todo) - len(left)} input(s) whose output exists (--overwrite redoes them)")
        todo = left
    if not todo:
        return 1 if problems or not sources else 0
    try:
        failed = _run(args, todo)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed += len(problems)
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _run(args: argparse.Namespace, todo: list[tuple[Place, Place]]) -> int:
    """Run the pairs on Ray Data; the number that failed."""
    filesystems: list[tuple[Any, str]] = []

    def index(place: Place) -> int:
        if place.fs is None:
            return -1
        key = (place.fs, place.scheme)
        if key not in filesystems:
            filesystems.append(key)
        return filesystems.index(key)

    rows = [{"src": str(s.path), "src_fs": index(s), "dst": str(d.path), "dst_fs": index(d)} for s, d in todo]
    cuda = (args.device or "").startswith("cuda") or args.backend == "tensorrt"
    gpus = args.worker_gpus if args.worker_gpus is not None else (1.0 if cuda else 0.0)
    cpus = args.worker_cpus or 1.0
    with ray_session(args.address):
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False  # the bar below counts images
        resources = ray.cluster_resources()
        slots = int(resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1) / cpus)
        workers = min(args.workers or max(1, slots), len(rows))
        results = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1024)).map_batches(
            UpscaleWorker, fn_constructor_kwargs={"args": args, "filesystems": filesystems}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers), num_cpus=cpus, num_gpus=gpus)
        failed = 0
        with tqdm(total=len(rows), desc="images", unit="img") as bar:
            for row in results.iter_rows():
                if row["status"] == "done":
                    tqdm.write(str(row["message"]))
                elif row["status"] == "skipped":
                    tqdm.write(f"note: {row['message']}", file=sys.stderr)
                elif row["status"] == "no model":
                    tqdm.write(f"error: {row['message']}", file=sys.stderr)
                    return len(rows) - bar.n
                else:
                    tqdm.write(f"error: {row['message']}", file=sys.stderr)
                    failed += 1
                bar.update()
    return failed
