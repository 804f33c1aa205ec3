"""Upscaling planned files (:mod:`idm_rt.file_jobs`): the Upscaler a command's options ask for, and one job run
from reading to writing. The command line and the Ray batch job's workers both run jobs with :func:`run_job`, so
that a file is read, checked, upscaled and written the same way by either."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from . import sampling
from .backends.registry import BACKENDS
from .file_jobs import Job, Plan
from .options import per_image_seeds

if TYPE_CHECKING:
    from .upscaler import Upscaler


def describe(error: Exception) -> str:
    """An error as the user sees it: a ValueError's message is the whole story, other types are named."""
    return str(error) if isinstance(error, ValueError) else f"{error.__class__.__name__}: {error}"


def load_upscaler(args: argparse.Namespace, runner_options: dict | None = None) -> Upscaler:
    """The Upscaler the ``upscale`` options ask for (model or engines, backend, device, precision, sampling
    settings); ``runner_options`` go to an engine runner (:meth:`~idm_rt.Upscaler.from_engines`)."""
    up = _load_upscaler(args, runner_options)
    up.sampling = sampling.from_arguments(args, up.sampling, up.presets)  # checked once, before any image
    return up


def _load_upscaler(args: argparse.Namespace, runner_options: dict | None) -> Upscaler:
    from .upscaler import Upscaler

    if args.engines:
        if args.precision or args.max_scale:
            raise ValueError("--precision and --max-scale are fixed when engines are built; drop them with --engines")
        if args.backend is not None and not BACKENDS[args.backend].engine:
            raise ValueError(f"--engines runs engines; --backend {args.backend} is for --model")
        return Upscaler.from_engines(
            args.engines,
            device=args.device,
            backend=args.backend,
            max_pixels=args.max_pixels,
            max_memory=getattr(args, "max_memory", None),
            runner_options=runner_options,
        )
    if args.backend is not None and BACKENDS[args.backend].engine:
        return Upscaler.from_pretrained(
            args.model,
            device=args.device,
            backend=args.backend,
            max_pixels=args.max_pixels,
            precision=args.precision,
            max_scale=args.max_scale,
            max_memory=getattr(args, "max_memory", None),
            runner_options=runner_options,
        )
    return Upscaler.from_pretrained(
        args.model,
        device=args.device or "cpu",
        backend=args.backend,
        max_pixels=args.max_pixels,
        precision=args.precision or "fp32",
        max_scale=args.max_scale,
        max_memory=getattr(args, "max_memory", None),
    )


def check_call_options(up: Upscaler, args: argparse.Namespace) -> None:
    """ValueError for a ``--seed`` or ``--tile`` no image could use: said once, before any image is read."""
    from .tiling import TilePlan

    per_image_seeds(args.seed, 1)
    if args.tile is not None and args.tile < 0:
        raise ValueError(f"--tile must be >= 0 (0: no tiling), got {args.tile}")
    if args.tile:
        TilePlan.for_image((1, 1), args.tile, up.model.config.size_multiple)


def upscale_options(args: argparse.Namespace) -> dict:
    """The ``Upscaler.upscale`` keywords the ``upscale`` options set (the sampling settings are the
    Upscaler's own, :func:`load_upscaler`)."""
    return {"scale": args.scale, "size": args.size, "seed": args.seed, "tile": args.tile}


def report_plan(plan: Plan) -> None:
    """A plan's problems (errors) and notes, on stderr, before any work."""
    for message in plan.problems:
        print(f"error: {message}", file=sys.stderr)
    for message in plan.notes:
        print(f"note: {message}", file=sys.stderr)


def to_run(plan: Plan, overwrite: bool) -> list[Job]:
    """The jobs a plan runs: with ``overwrite`` also those whose output exists (never an input: the plan has
    refused those)."""
    return plan.jobs + plan.existing if overwrite else plan.jobs


def run_job(up: Upscaler, job: Job, options: dict, overwrite: bool, progress: bool = False) -> tuple[str, str]:
    """Read, upscale and write one job: ("done" | "exists" | "failed", the message to print). An output that
    exists (it appeared since the plan was made) is kept unless ``overwrite``; a file that appears while the
    output is computed is always kept."""
    if not overwrite and job.dst.exists():
        return "exists", f"{job.dst} exists (use --overwrite to replace it); skipped {job.src}"
    try:  # too large an input or output is refused before decoding
        image = job.src.read(
            up.max_pixels, lambda h, w: up.check_output_pixels(h, w, options["scale"], options["size"])
        )
    except ValueError as e:
        return "failed", f"{job.src}: {e}"
    except Exception as e:  # noqa: BLE001 (PIL raises several types for unreadable files)
        return "failed", f"cannot read {job.src}: {e}"
    try:
        result = up.upscale(image, progress=progress, **options)
        job.dst.write(result, replace=overwrite)  # never a file made while this one was computed
    except FileExistsError as e:
        return "exists", f"{e}; skipped {job.src}"
    except Exception as e:  # noqa: BLE001 (one bad file, or a full disk, must not stop the others)
        return "failed", f"{job.src}: {describe(e)}"
    return "done", f"{job.src} -> {job.dst} ({result.size[0]}x{result.size[1]})"
