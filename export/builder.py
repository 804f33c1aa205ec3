"""``python -m idm_rt.build``: export every graph per bucket, check it, build the backend's artifacts,
and keep ``manifest.json`` up to date so that a second run reuses what still matches.

Reuse rule: each graph records the key of what it was exported from (model hash, graph, bucket,
precision, opset, exporter version) and of what its engine was built with (that key plus the
backend's identity: ONNX Runtime version, or TensorRT version, GPU and build flags), and the size
of each file it wrote. A graph or engine is rebuilt when its key changed, its file is missing or
has another size (an interrupted copy), or ``--force`` is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from idm_rt.backends.engine_dir import MANIFEST_NAME, GraphEntry, Manifest, graph_key, graph_specs, read_manifest
from idm_rt.buckets import Bucket, tile_side
from idm_rt.checkpoints import is_project, load_model, model_hash
from idm_rt.fileio import atomic_write
from idm_rt.model import IDM

from . import ort_build, tensorrt_build, winograd
from .graphs import OPSET, export_graph
from .opcheck import check_graph

EXIT_OK, EXIT_NEEDS_GPU = 0, 3  # failures raise BuildError (status 1 in idm_rt.build)
EXPORT_VERSION = 1  # bump when export_graph changes what a graph contains


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


@dataclass
class BuildOptions:
    """What ``python -m idm_rt.build`` was asked for (see its --help)."""

    model_path: Path
    out: Path
    precision: str
    backend: str
    buckets: list[Bucket]
    workspace_mb: int = 4096
    force: bool = False
    command: str = ""
    conv: str = "direct"  # the U-Net's 3x3 convolutions: "direct" or "winograd" (see export.winograd)
    max_scale: float | None = None  # overrides the model's M (released .pth files do not record it)


def digest(*parts) -> str:
    """Short stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reusable(folder: Path, file: str | None, size: int | None, old_key: str | None, key: str, force: bool) -> bool:
    """Whether an artifact recorded with ``old_key`` and ``size`` bytes at ``file`` can stand in for one
    with ``key`` (size None: a manifest from before sizes were recorded, whose files are trusted)."""
    return (not force and file is not None and old_key == key and (folder / file).is_file()
            and size in (None, (folder / file).stat().st_size))


def backend_identity(options: BuildOptions) -> tuple[dict, list[str]]:
    """(identity, missing requirements) of the backend on this machine."""
    if options.backend == "onnxruntime":
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}, []
    missing = tensorrt_build.missing_requirements()
    return ({} if missing else tensorrt_build.identity()), missing


def build(options: BuildOptions, log: Callable[[str], None] = print) -> int:
    """Run the build; returns the exit status (0 done, 3 ONNX written but TensorRT unavailable).

    Builds of one folder take turns (a lock file); the manifest is only rewritten when something in
    it changed, so that a build that reuses everything leaves a folder others read untouched."""
    model = load_model(options.model_path, max_scale=options.max_scale)
    if options.max_scale is None and not is_project(options.model_path):
        log(f"note: released checkpoints do not record their largest training scale; assuming M = "
            f"{model.max_scale:g} (--max-scale M to change it)")
    try:
        tile_side(options.buckets, model.config.size_multiple)
    except ValueError as e:
        log(f"warning: {e}; outputs larger than it will fail with these engines")
    with _lock(options.out, log):
        return _build(model, options, log)


@contextlib.contextmanager
def _lock(folder: Path, log: Callable[[str], None]):
    """Hold an exclusive lock on ``folder/.build.lock`` (POSIX; elsewhere no lock), saying so when
    another build holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".build.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build of {folder} to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(model: IDM, options: BuildOptions, log: Callable[[str], None]) -> int:
    folder = options.out
    old = _previous(folder, log)
    ident, missing = backend_identity(options)
    flags = {"opset": OPSET, "conv": options.conv, "command": options.command}
    if options.backend == "tensorrt":
        flags |= {"workspace_mb": options.workspace_mb, "strongly_typed": options.precision == "fp16", "tf32": False}
    manifest = Manifest(model_hash=model_hash(model), model_path=str(Path(options.model_path).resolve()),
                        network=model.config.to_dict(), max_scale=model.max_scale, precision=options.precision,
                        backend=options.backend, opset=OPSET, buckets=options.buckets, graphs={}, identity=ident,
                        build_flags=flags, defaults=model.defaults)
    specs = graph_specs(options.buckets)
    for i, (kind, bucket) in enumerate(specs, 1):
        key = graph_key(kind, bucket)
        label = f"[{i}/{len(specs)}] {key}"
        entry = _onnx_stage(model, manifest.model_hash, kind, bucket, options, old, label, log)
        if not missing:
            _engine_stage(entry, kind, bucket, options, ident, old.graphs.get(key) if old else None, label, log)
        manifest.graphs[key] = entry
        if old is None or old.graphs.get(key) != entry:  # progress kept for an interrupted build
            _write(folder, manifest)
    manifest.complete = not missing
    if old is None or old.to_json() != manifest.to_json():
        _write(folder, manifest)
    _remove_stale(folder, manifest)
    if missing:
        log(_missing_message(folder, missing, options))
        return EXIT_NEEDS_GPU
    log(f"done: {folder} ({len(specs)} graphs, {options.precision}, {options.backend})")
    return EXIT_OK


def _onnx_stage(model: IDM, mhash: str, kind: str, bucket: Bucket | None, options: BuildOptions,
                old: Manifest | None, label: str, log) -> GraphEntry:
    precision, conv = (options.precision, options.conv) if kind == "unet" else ("fp32", "direct")
    key = graph_key(kind, bucket)
    rel = f"onnx/{key.replace('/', '_')}.onnx"
    winograd_key = [conv, winograd.VERSION] if conv == "winograd" else []  # direct graphs keep their old keys
    onnx_key = digest(mhash, kind, bucket.to_dict() if bucket else None, precision, OPSET, EXPORT_VERSION,
                      *winograd_key)
    prev = old.graphs.get(key) if old else None
    path = options.out / rel
    if reusable(options.out, prev and prev.onnx, prev and prev.onnx_bytes, prev and prev.onnx_key, onnx_key,
                options.force):
        log(f"{label}: ONNX {precision} reused")
    else:
        start = time.perf_counter()
        export_graph(model, kind, bucket, path, precision, conv)
        log(f"{label}: ONNX {precision} exported{' with Winograd convolutions' if conv == 'winograd' else ''} "
            f"in {time.perf_counter() - start:.1f} s")
    problems = check_graph(path, OPSET)
    if problems:
        raise BuildError(f"{rel} fails the ONNX/TensorRT operator check:\n  " + "\n  ".join(problems))
    return GraphEntry(onnx=rel, precision=precision, onnx_key=onnx_key, onnx_bytes=path.stat().st_size)


def _engine_stage(entry: GraphEntry, kind: str, bucket: Bucket | None, options: BuildOptions, ident: dict,
                  prev: GraphEntry | None, label: str, log) -> None:
    name = Path(entry.onnx).stem
    flags = [options.workspace_mb, tensorrt_build.VERSION] if options.backend == "tensorrt" else []
    entry.engine_key = digest(entry.onnx_key, options.backend, ident, flags)
    suffix = ".plan" if options.backend == "tensorrt" else ".onnx"
    entry.engine = f"{options.backend}/{name}{suffix}"
    if reusable(options.out, prev and prev.engine, prev and prev.engine_bytes, prev and prev.engine_key,
                entry.engine_key, options.force):
        entry.engine_bytes = (options.out / entry.engine).stat().st_size
        log(f"{label}: {options.backend} artifact reused")
        return
    start = time.perf_counter()
    onnx_path, engine_path = options.out / entry.onnx, options.out / entry.engine
    if options.backend == "onnxruntime":
        ort_build.optimise(onnx_path, engine_path)
    else:
        tensorrt_build.build_engine(onnx_path, engine_path, tensorrt_build.profile_shapes(kind, bucket, onnx_path),
                                    fp16=entry.precision == "fp16", workspace_mb=options.workspace_mb,
                                    timing_cache=options.out / options.backend / "timing.cache")
    entry.engine_bytes = engine_path.stat().st_size
    log(f"{label}: {options.backend} artifact built in {time.perf_counter() - start:.1f} s")


def _previous(folder: Path, log) -> Manifest | None:
    if not (folder / MANIFEST_NAME).exists():
        return None
    try:
        return read_manifest(folder)
    except ValueError as e:
        log(f"warning: ignoring the old manifest, everything is rebuilt ({e})")
        return None


def _write(folder: Path, manifest: Manifest) -> None:
    atomic_write(folder / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(manifest.to_json()))


# The graph and engine files a build writes, and the temp files of their atomic writes.
_BUILT_FILE = re.compile(r"(encoder|conditioner_.+|unet_.+)\.(onnx|plan)|\.(encoder|conditioner_.+|unet_.+)\..+\.tmp")


def _remove_stale(folder: Path, new: Manifest) -> None:
    """Delete the graph and engine files (names a build writes, nothing else) that the new manifest
    does not list: an older build's, an interrupted build's (its manifest lists only what it had
    reached) and a killed write's temp files (builds of a folder take turns, so none is in progress)."""
    keep = {f for g in new.graphs.values() for f in (g.onnx, g.engine) if f}
    for sub in ("onnx", "onnxruntime", "tensorrt"):
        for path in (folder / sub).glob("*"):
            if _BUILT_FILE.fullmatch(path.name) and path.relative_to(folder).as_posix() not in keep:
                path.unlink()


def _missing_message(folder: Path, missing: list[str], options: BuildOptions) -> str:
    lines = [f"ONNX graphs written to {folder} and checked (onnx.checker, TensorRT operator list); "
             "TensorRT engines NOT built. This machine lacks:"]
    lines += [f"  - {m}" for m in missing]
    # --force would export the graphs again instead of reusing them
    again = shlex.join(t for t in shlex.split(options.command) if t != "--force") or "python -m idm_rt.build ..."
    lines += ["To finish on the target machine (NVIDIA GPU, driver, TensorRT 10.x):",
              f"  1. bring {folder} and the model ({options.model_path}) there, then: pip install tensorrt",
              f"  2. run the same command again: {again}",
              "     (the ONNX graphs are reused; only the engines are built, for that GPU and TensorRT version)",
              f"Meanwhile the ONNX graphs run with ONNX Runtime: "
              f"Upscaler.from_engines({str(folder)!r}, backend='onnxruntime')"]
    return "\n".join(lines)
