"""``python -m idm_rt upscale IN... -o OUT --ray``: many images through Ray Data, on a pool of Upscaler workers.

Inputs and outputs are planned as the command line plans them (:func:`~idm_rt.file_jobs.plan_jobs`: files,
folders, globs, or URIs that pyarrow's filesystems read, such as ``s3://bucket/photos/``; never an input as an
output, no link out of an input folder unless asked), and each job runs as the command line runs it
(:func:`~idm_rt.upscale_files.run_job`: written atomically). Outputs that exist are skipped before any work is
scheduled, so a rerun continues an interrupted job; unreadable files are listed and skipped. Each worker is a Ray
actor holding one Upscaler: by default one per CPU of the cluster, or one per GPU with a CUDA device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .backends.registry import runner_threads, worker_gpus
from .file_jobs import Job, Place, plan_jobs
from .memory import configure_allocator
from .ray_session import ray_session
from .upscale_files import describe, load_upscaler, report_plan, run_job, to_run, upscale_options


class UpscaleWorker:
    """A Ray Data actor: one Upscaler, each row's job run (:func:`~idm_rt.upscale_files.run_job`)."""

    def __init__(self, args: argparse.Namespace, filesystems: list[tuple[Any, str]]):
        configure_allocator()  # a worker is a process of its own: freed memory kept for the next image
        self.options, self.overwrite, self.filesystems = upscale_options(args), args.overwrite, filesystems
        try:
            self.up, self.error = load_upscaler(args, runner_threads(args.backend, args.worker_cpus or 1)), ""
        except Exception as e:  # noqa: BLE001 (said by the driver, once, instead of a traceback per retry)
            self.up, self.error = None, describe(e)

    def _place(self, path: str, fs: int) -> Place:
        return Place(Path(path)) if fs < 0 else Place(PurePosixPath(path), *self.filesystems[fs])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [
            self.run(Job(self._place(s, int(sf)), self._place(d, int(df))))
            for s, sf, d, df in zip(batch["src"], batch["src_fs"], batch["dst"], batch["dst_fs"])
        ]
        return {"status": np.array([d[0] for d in done]), "message": np.array([d[1] for d in done])}

    def run(self, job: Job) -> tuple[str, str]:
        """("done" | "exists" | "failed" | "no model", the message the command prints for it)."""
        if self.up is None:
            return "no model", f"a worker cannot load the model: {self.error}"
        return run_job(self.up, job, self.options, self.overwrite)


def run_batch_job(args: argparse.Namespace) -> int:
    """The ``upscale --ray`` command; exit status 1 when any input failed."""
    try:
        plan = plan_jobs(args.inputs, args.output, args.follow_links)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report_plan(plan)
    if plan.existing and not args.overwrite:
        print(f"skipped {len(plan.existing)} input(s) whose output exists (--overwrite redoes them)")
    todo = to_run(plan, args.overwrite)
    if not todo:
        return 1 if plan.problems or not (plan.jobs or plan.existing) else 0
    try:
        failed = _run(args, todo)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed += len(plan.problems)
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _run(args: argparse.Namespace, todo: list[Job]) -> int:
    """Run the jobs on Ray Data; the number that failed."""
    filesystems: list[tuple[Any, str]] = []

    def index(place: Place) -> int:
        if place.fs is None:
            return -1
        key = (place.fs, place.scheme)
        if key not in filesystems:
            filesystems.append(key)
        return filesystems.index(key)

    rows = [
        {"src": str(j.src.path), "src_fs": index(j.src), "dst": str(j.dst.path), "dst_fs": index(j.dst)} for j in todo
    ]
    gpus = args.worker_gpus if args.worker_gpus is not None else worker_gpus(args.backend, args.device)
    cpus = args.worker_cpus or 1.0
    with ray_session(args.address):
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False  # the bar below counts images
        resources = ray.cluster_resources()
        slots = int(resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1) / cpus)
        workers = min(args.workers or max(1, slots), len(rows))
        results = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1024)).map_batches(
            UpscaleWorker,
            fn_constructor_kwargs={"args": args, "filesystems": filesystems},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        failed = 0
        with tqdm(total=len(rows), desc="images", unit="img") as bar:
            for row in results.iter_rows():
                if row["status"] == "done":
                    tqdm.write(str(row["message"]))
                elif row["status"] == "exists":
                    tqdm.write(f"note: {row['message']}", file=sys.stderr)
                elif row["status"] == "no model":
                    tqdm.write(f"error: {row['message']}", file=sys.stderr)
                    return len(rows) - bar.n
                else:
                    tqdm.write(f"error: {row['message']}", file=sys.stderr)
                    failed += 1
                bar.update()
    return failed
