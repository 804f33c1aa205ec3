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
import dataclasses
import hashlib
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from idm_rt.backends.engine_dir import (
    BACKENDS,
    BUILT_FILE,
    INT8_CHECK,
    MANIFEST_NAME,
    PARTIAL,
    GraphEntry,
    Manifest,
    artifact_name,
    graph_key,
    graph_specs,
    inside,
    read_manifest,
)
from idm_rt.backends.tensorrt import PIP_REQUIREMENT
from idm_rt.buckets import Bucket, tile_side
from idm_rt.checkpoints import is_project, load_model, model_hash
from idm_rt.cost import stage_flops
from idm_rt.fileio import atomic_write
from idm_rt.model import IDM

from . import int8_check, ort_build, quantize, tensorrt_build, winograd
from .graphs import OPSET, export_graph
from .opcheck import check_graph

EXIT_OK, EXIT_NEEDS_GPU = 0, 3  # failures raise BuildError (status 1 in idm_rt.build)
# bump when export_graph changes what a graph contains (2: dynamic graphs, implicit encoder; 3: the encoder in
# two graphs, LR features and HR blocks)
EXPORT_VERSION = 3


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
    calibration: str = "auto"  # int8: where the calibration images come from (see export.quantize)
    check_int8: bool = True  # int8: check the engine against the float32 model, BuildError when it falls short
    export_device: str = "cpu"  # where the graphs are traced: "cuda" traces a float16 U-Net in seconds, not minutes
    static: bool = True  # also a static U-Net graph per bucket (False: dynamic sizes only, a smaller directory)


def digest(*parts) -> str:
    """Short stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reusable(folder: Path, file: str | None, size: int | None, old_key: str | None, key: str, force: bool) -> bool:
    """Whether an artifact recorded with ``old_key`` and ``size`` bytes at ``file`` can stand in for one
    with ``key``."""
    return (
        not force
        and file is not None
        and size is not None
        and old_key == key
        and (folder / file).is_file()
        and (folder / file).stat().st_size == size
    )


# The engine builders, one module per backend a build makes (idm_rt.backends.BUILD_BACKENDS), each with
# missing_requirements(), identity(), manifest_flags(options), key_flags(options) and write_engine(...).
ENGINE_BUILDERS = {"onnxruntime": ort_build, "tensorrt": tensorrt_build}


def backend_identity(options: BuildOptions) -> tuple[dict, list[str]]:
    """(identity, missing requirements) of the backend on this machine."""
    engines = ENGINE_BUILDERS[options.backend]
    missing = engines.missing_requirements()
    return ({} if missing else engines.identity()), missing


def build(options: BuildOptions, log: Callable[[str], None] = print) -> int:
    """Run the build; returns the exit status (0 done, 3 ONNX written but TensorRT unavailable).

    The output folder must be new, empty or an engine directory: a build writes, replaces and deletes
    only the files its manifest lists (the names of :func:`~idm_rt.backends.engine_dir.artifact_name`),
    never through a symbolic link. Builds of one folder take turns (a lock file); the manifest is only
    rewritten when something in it changed, so that a build that reuses everything leaves a folder
    others read untouched."""
    model = load_model(options.model_path, max_scale=options.max_scale)
    if options.max_scale is None and not is_project(options.model_path):
        log(
            f"note: released checkpoints do not record their largest training scale; assuming M = "
            f"{model.max_scale:g} (--max-scale M to change it)"
        )
    try:
        tile_side(options.buckets, model.config.size_multiple)
    except ValueError as e:
        log(f"warning: {e}; outputs larger than it will fail with these engines")
    check_folder(options.out)
    with _lock(options.out, log):
        return _build(model, options, log)


LOCK_NAME = ".build.lock"


def check_folder(folder: Path) -> None:
    """BuildError unless ``folder`` is absent, empty or an engine directory whose own parts are no
    symbolic links: a build never writes into, or empties, a folder that holds other things."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise BuildError(f"{folder} is a file, not a folder")
    for name in (MANIFEST_NAME, LOCK_NAME, "onnx", *BACKENDS):
        try:
            inside(folder, name)
        except ValueError as e:
            raise BuildError(str(e)) from None
    if (folder / MANIFEST_NAME).exists():
        owned_files(folder)  # an engine directory this version can read: ours
    elif any(p.name != LOCK_NAME for p in folder.iterdir()):
        raise BuildError(
            f"{folder} is not empty and is not an engine directory (no {MANIFEST_NAME}); build into a "
            f"new or empty folder (nothing in {folder} was changed)"
        )


def owned_files(folder: Path) -> tuple[Manifest | None, list[str]]:
    """(the directory's manifest, or None for one written by an earlier version; every file it lists).
    BuildError when manifest.json is not one of ours."""
    path = folder / MANIFEST_NAME
    try:
        manifest = read_manifest(folder)
        return manifest, manifest.files()
    except ValueError as e:
        try:  # an earlier version's directory: its files are ours to replace, nothing is reused
            d = json.loads(path.read_text())
            if isinstance(d, dict) and d.get("format") in LEGACY_FORMATS and isinstance(d.get("graphs"), dict):
                files = [
                    f for g in d["graphs"].values() if isinstance(g, dict) for f in (g.get("onnx"), g.get("engine"))
                ]
                return None, [f for f in files if isinstance(f, str) and BUILT_FILE.fullmatch(f)]
        except (ValueError, OSError):
            pass
        raise BuildError(
            f"{path} is not a manifest this version of idm-rt can read ({e}); build into a new folder "
            f"(nothing was changed)"
        ) from None


LEGACY_FORMATS = ("idm-rt-engines/1", "idm-rt-engines/2")


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
    with open(inside(folder, LOCK_NAME), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build of {folder} to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


class _Writer:
    """Writes the directory's files and its manifest. Every file is listed in the manifest on disk
    before it is written (as pending, with the temp name it is written under), so that an interrupted
    build leaves nothing the next one does not know as its own."""

    def __init__(self, folder: Path, manifest: Manifest, old_files: list[str], log: Callable[[str], None]):
        self.folder, self.manifest, self.log = folder, manifest, log
        self.owned = set(old_files)
        manifest.pending = sorted(self.owned)  # old files stay listed until this build settles them

    def save(self) -> None:
        atomic_write(inside(self.folder, MANIFEST_NAME), lambda tmp: Path(tmp).write_text(self.manifest.to_json()))

    def write(self, rel: str, write: Callable[[str], None]) -> None:
        """Write ``folder/rel`` through ``write(tmp_path)``: listed first, then atomically renamed into place."""
        path = inside(self.folder, rel)
        if path.exists() and rel not in self.owned:
            raise BuildError(
                f"{path} exists, but no build of {self.folder} wrote it (its manifest does not list it); "
                f"move it away and build again"
            )
        new = [f for f in (rel, rel + PARTIAL) if f not in self.manifest.pending]
        if new:
            self.manifest.pending += new
            self.save()
        self.owned |= {rel, rel + PARTIAL}
        atomic_write(path, write, temp=inside(self.folder, rel + PARTIAL))

    def settle(self) -> None:
        """Delete the files listed before that no graph uses now (an earlier build's, an interrupted
        write's temp file) and list only what the graphs use."""
        keep = set(self.manifest.graph_files())
        for rel in self.manifest.pending:
            if rel not in keep:
                path = inside(self.folder, rel)
                if path.is_file():
                    path.unlink()
        self.manifest.pending = []


def _build(model: IDM, options: BuildOptions, log: Callable[[str], None]) -> int:
    folder = options.out
    old, old_files = owned_files(folder) if (folder / MANIFEST_NAME).exists() else (None, [])
    ident, missing = backend_identity(options)
    if missing:  # said before minutes of export, not only after them
        log(
            f"TensorRT engines cannot be built on this machine; it lacks: {'; '.join(missing)}. Exporting the ONNX "
            f"graphs only, for a machine that has them (exit status {EXIT_NEEDS_GPU} at the end); --backend "
            "onnxruntime builds engines that run here"
        )
    flags = {"opset": OPSET, "conv": options.conv, "command": options.command}
    flags |= ENGINE_BUILDERS[options.backend].manifest_flags(options)
    calibration = quantize.Calibration.load(options.calibration) if options.precision == "int8" else None
    if calibration is not None:
        flags["int8"] = {**calibration.settings.to_dict(), "calibration": calibration.source}
        log(f"int8 calibration images: {calibration.source}")
        if options.check_int8:  # the images the engine is checked on: a folder too small for them is said now
            quantize.held_out_images(calibration.origin, calibration.settings, int8_check.IMAGES)
    manifest = Manifest(
        model_hash=model_hash(model),
        model_path=str(Path(options.model_path).resolve()),
        network=model.config.to_dict(),
        max_scale=model.max_scale,
        precision=options.precision,
        backend=options.backend,
        opset=OPSET,
        buckets=options.buckets,
        graphs={},
        identity=ident,
        build_flags=flags,
        static=options.static,
        defaults=model.recommended.to_dict() if model.recommended else {},
        presets={name: s.to_dict() for name, s in model.presets.items()},
        stage_flops=dataclasses.asdict(stage_flops(model.config)),
    )
    writer = _Writer(folder, manifest, old_files, log)
    specs = graph_specs(options.buckets, options.static)
    for i, (kind, bucket) in enumerate(specs, 1):
        key = graph_key(kind, bucket)
        label = f"[{i}/{len(specs)}] {key}"
        entry = _onnx_stage(model, manifest.model_hash, kind, bucket, options, old, label, writer, calibration)
        if not missing:
            _engine_stage(entry, kind, bucket, options, ident, old.graphs.get(key) if old else None, label, writer)
        manifest.graphs[key] = entry
        if old is None or old.graphs.get(key) != entry:  # progress kept for an interrupted build
            writer.save()
    manifest.complete = not missing
    if calibration is not None and options.check_int8:
        _reuse_int8_check(manifest, old)
    writer.settle()
    if old is None or old.to_json() != manifest.to_json():
        writer.save()
    if missing:
        log(_missing_message(folder, missing, options))
        return EXIT_NEEDS_GPU
    if calibration is not None and options.check_int8:
        _check_int8(model, options, calibration, writer, log)
    log(f"done: {folder} ({len(specs)} graphs, {options.precision}, {options.backend})")
    return EXIT_OK


def _int8_graphs(manifest: Manifest) -> dict[str, str | None]:
    return {key: g.onnx_key for key, g in manifest.graphs.items() if g.precision == "int8"}


def _reuse_int8_check(manifest: Manifest, old: Manifest | None) -> None:
    """Carry the int8 check's result over from ``old`` when it measured the int8 graphs ``manifest`` has."""
    record = old.build_flags.get(INT8_CHECK) if old is not None else None
    if (
        isinstance(record, dict)
        and record.get("version") == int8_check.VERSION
        and record.get("graphs") == _int8_graphs(manifest)
        and isinstance(record.get("passed"), bool)
        and isinstance(record.get("report"), str)
    ):
        manifest.build_flags[INT8_CHECK] = record


def _check_int8(
    model: IDM, options: BuildOptions, calibration: quantize.Calibration, writer: _Writer, log: Callable[[str], None]
) -> None:
    """:func:`.int8_check.check` of the directory just built, recorded in its manifest (a build that reuses the
    int8 graphs reuses it); BuildError naming the numbers when the engine falls short."""
    record = writer.manifest.build_flags.get(INT8_CHECK)
    if record is None:
        result = int8_check.check(options.out, model, calibration, log)
        record = {
            "version": int8_check.VERSION,
            "graphs": _int8_graphs(writer.manifest),
            "passed": result.passed,
            "report": result.report(),
        }
        writer.manifest.build_flags[INT8_CHECK] = record
        writer.save()
    else:
        log("int8 check: measured before on these int8 graphs")
    log(record["report"])
    if not record["passed"]:
        raise BuildError(
            f"the int8 engine in {options.out} falls short of the float32 model it was built from (the "
            "FAIL lines above): its images would not be the model's. Use --engine fp32, or calibrate on "
            "images like yours (--calibration DIR); --skip-int8-check keeps such an engine, to measure it"
        )


def graph_precision(precision: str, kind: str) -> str:
    """The precision graph ``kind`` is exported in for a directory of ``precision``: the U-Nets run in
    it, the encoder and the conditioner (once per image or tile) in fp32, and so does the dynamic
    U-Net of an int8 directory (static shapes are calibrated per bucket)."""
    if kind == "unet" or (kind == "unet_dynamic" and precision != "int8"):
        return precision
    return "fp32"


def onnx_key(mhash: str, kind: str, bucket: Bucket | None, precision: str, *conv_and_calibration) -> str:
    """The key of graph ``kind`` exported from the model of hash ``mhash``: the model, the graph, its bucket and
    precision, the opset and :data:`EXPORT_VERSION` (and, when they apply, the Winograd transform's version and the
    int8 calibration)."""
    return digest(
        mhash, kind, bucket.to_dict() if bucket else None, precision, OPSET, EXPORT_VERSION, *conv_and_calibration
    )


def _onnx_stage(
    model: IDM,
    mhash: str,
    kind: str,
    bucket: Bucket | None,
    options: BuildOptions,
    old: Manifest | None,
    label: str,
    writer: _Writer,
    calibration: quantize.Calibration | None = None,
) -> GraphEntry:
    precision = graph_precision(options.precision, kind)
    # Winograd transforms need static shapes and float32; int8 graphs are quantised from direct ones
    conv = options.conv if kind == "unet" and precision != "int8" else "direct"
    key = graph_key(kind, bucket)
    rel = artifact_name(key)
    winograd_key = [conv, winograd.VERSION] if conv == "winograd" else []  # direct graphs keep their old keys
    sampling = model.recommended.to_dict() if model.recommended else None  # what calibration samples with
    int8_key = [calibration.key(), sampling] if precision == "int8" else []
    key_of_onnx = onnx_key(mhash, kind, bucket, precision, *winograd_key, *int8_key)
    prev = old.graphs.get(key) if old else None
    path = options.out / rel
    if reusable(
        options.out, prev and prev.onnx, prev and prev.onnx_bytes, prev and prev.onnx_key, key_of_onnx, options.force
    ):
        writer.log(f"{label}: ONNX {precision} reused")
    elif precision == "int8":
        start = time.perf_counter()
        kept = []
        writer.write(rel, lambda tmp: kept.extend(quantize.build_unet(model, bucket, Path(tmp), calibration)))
        writer.log(
            f"{label}: ONNX int8 calibrated and quantised in {time.perf_counter() - start:.1f} s "
            f"({len(kept)} convolutions kept in float32)"
        )
    else:
        start = time.perf_counter()
        writer.write(
            rel, lambda tmp: export_graph(model, kind, bucket, Path(tmp), precision, conv, options.export_device)
        )
        writer.log(
            f"{label}: ONNX {precision} exported{' with Winograd convolutions' if conv == 'winograd' else ''} "
            f"in {time.perf_counter() - start:.1f} s"
        )
    problems = check_graph(path, OPSET)
    if problems:
        raise BuildError(f"{rel} fails the ONNX/TensorRT operator check:\n  " + "\n  ".join(problems))
    return GraphEntry(onnx=rel, precision=precision, onnx_key=key_of_onnx, onnx_bytes=path.stat().st_size)


def _engine_stage(
    entry: GraphEntry,
    kind: str,
    bucket: Bucket | None,
    options: BuildOptions,
    ident: dict,
    prev: GraphEntry | None,
    label: str,
    writer: _Writer,
) -> None:
    key = graph_key(kind, bucket)
    flags = ENGINE_BUILDERS[options.backend].key_flags(options)
    entry.engine_key = digest(entry.onnx_key, options.backend, ident, flags)
    entry.engine = artifact_name(key, options.backend)
    if reusable(
        options.out,
        prev and prev.engine,
        prev and prev.engine_bytes,
        prev and prev.engine_key,
        entry.engine_key,
        options.force,
    ):
        entry.engine_bytes = (options.out / entry.engine).stat().st_size
        writer.log(f"{label}: {options.backend} artifact reused")
        return
    start = time.perf_counter()
    onnx_path = options.out / entry.onnx
    engines = ENGINE_BUILDERS[options.backend]
    writer.write(
        entry.engine, lambda tmp: engines.write_engine(onnx_path, Path(tmp), kind, bucket, entry.precision, options)
    )
    entry.engine_bytes = (options.out / entry.engine).stat().st_size
    writer.log(f"{label}: {options.backend} artifact built in {time.perf_counter() - start:.1f} s")


def _missing_message(folder: Path, missing: list[str], options: BuildOptions) -> str:
    lines = [
        f"ONNX graphs written to {folder} and checked (onnx.checker, TensorRT operator list); "
        "TensorRT engines NOT built. This machine lacks:"
    ]
    lines += [f"  - {m}" for m in missing]
    # --force would export the graphs again instead of reusing them
    again = shlex.join(t for t in shlex.split(options.command) if t != "--force") or "python -m idm_rt.build ..."
    lines += [
        "To finish on the target machine (NVIDIA GPU, driver, TensorRT 10.x or 11.x):",
        f"  1. bring {folder} and the model ({options.model_path}) there, then: pip install '{PIP_REQUIREMENT}'",
        f"  2. run the same command again: {again}",
        "     (the ONNX graphs are reused; only the engines are built, for that GPU and TensorRT version)",
        f"Meanwhile the ONNX graphs run with ONNX Runtime: "
        f"Upscaler.from_engines({str(folder)!r}, backend='onnxruntime')",
    ]
    return "\n".join(lines)
