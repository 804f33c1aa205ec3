"""Ray Serve application: the HTTP API of :mod:`idm_rt.http_api`, replicated and batched across clients.

``python -m idm_rt serve`` runs it on a local Ray instance or a cluster; people who deploy with Ray's
own tools use ``serve run idm_rt.serve:app`` (bundled model, defaults), ``serve run
idm_rt.serve:build_app model=DIR max_batch=8 ...``, or a Serve config file whose application has
``import_path: idm_rt.serve:build_app`` and ``args:`` (the fields of :class:`ServeSettings`).

Each replica holds its own :class:`~idm_rt.Upscaler`; Ray Serve gathers up to ``max_batch`` requests
waiting at most ``batch_wait_ms``, and requests with the same input size, output size and sampling
settings run as one network batch, each with its own seed (so each gets exactly the image
``Upscaler.upscale`` gives it alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from .http_api import Job, Result, UpscaleApp
from .memory import configure_allocator
from .upscaler import DEFAULT_MODEL, Upscaler

APP_NAME = "idm_rt"


class ServeSettings(BaseModel):
    """What a deployment serves and its limits: ``python -m idm_rt serve`` options, or a config file's ``args``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="checkpoint, model folder or engine directory; None: bundled")
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    device: str | None = Field(None, description="cpu, cuda, cuda:1, ...; default cpu (cuda for tensorrt)")
    replicas: int = Field(1, ge=1, le=1024)
    replica_cpus: float = Field(1.0, gt=0, le=1024, description="CPUs Ray reserves per replica (its threads)")
    replica_gpus: float | None = Field(None, ge=0, le=64, description="GPUs per replica, fractions too; "
                                                                      "default 1 on CUDA devices, else 0")
    max_batch: int = Field(8, ge=1, le=64, description="most requests in one batch (1: no batching)")
    batch_wait_ms: float = Field(10.0, ge=0, le=10_000, description="longest wait for a batch to fill")
    max_body_mb: float = Field(32.0, gt=0, le=2048, description="largest request body")
    max_pixels: int = Field(64_000_000, ge=1, description="largest output (and input) image, in pixels")
    max_steps: int = Field(2000, ge=1, le=100_000, description="most sampling steps a request may ask for")
    max_memory: int | None = Field(None, ge=2**20, le=2**50, description="bytes each replica's calls may plan "
                                                                        "(Upscaler's max_memory); default: "
                                                                        "half the device's memory")
    timeout_s: float = Field(300.0, gt=0, le=86_400, description="per-request time limit (504 after it)")
    max_queued: int = Field(256, ge=1, le=1_000_000, description="requests waiting per caller before 503s")

    @property
    def gpus(self) -> float:
        """GPUs per replica: ``replica_gpus``, else one for a CUDA device or TensorRT."""
        if self.replica_gpus is not None:
            return self.replica_gpus
        return 1.0 if self.backend == "tensorrt" or (self.device or "").startswith("cuda") else 0.0


@serve.deployment
class UpscaleService(UpscaleApp):
    """One replica: its own Upscaler, requests batched by Ray Serve."""

    def __init__(self, settings: ServeSettings):
        configure_allocator()  # a replica is a process of its own: freed memory kept for the next request
        threads = {"runner_options": {"threads": max(1, round(settings.replica_cpus))}}  # not every core
        up = Upscaler.from_pretrained(settings.model, device=settings.device, backend=settings.backend,
                                      max_pixels=settings.max_pixels, max_memory=settings.max_memory,
                                      **(threads if settings.backend == "onnxruntime" else {}))
        batching = {"max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms,
                    "replicas": settings.replicas, "replica": serve.get_replica_context().replica_tag}
        super().__init__(up, model=settings.model or f"bundled default ({DEFAULT_MODEL.name})",
                         backend=settings.backend, max_body_bytes=int(settings.max_body_mb * 2**20),
                         timeout_s=settings.timeout_s, max_steps=settings.max_steps, batching=batching)
        self._batched = serve.batch(max_batch_size=settings.max_batch,
                                    batch_wait_timeout_s=settings.batch_wait_ms / 1000)(self._run_jobs)

    async def _run_jobs(self, jobs: list[Job]) -> list[Result | Exception]:
        return await asyncio.to_thread(self.run_batch, jobs)

    async def run_batched(self, job: Job) -> Result | Exception:
        return await self._batched(job)


def build_app(args: dict | ServeSettings) -> serve.Application:
    """The application for ``settings`` (a dict is validated into :class:`ServeSettings`, the way
    ``serve run idm_rt.serve:build_app key=value ...`` and config files pass them)."""
    settings = args if isinstance(args, ServeSettings) else ServeSettings.model_validate(args)
    return UpscaleService.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.gpus},
        max_ongoing_requests=2 * settings.max_batch + 2,  # one batch running, the next one filling, probes
        max_queued_requests=settings.max_queued,
    ).bind(settings)


app = build_app({})  # the bundled default model with default settings: serve run idm_rt.serve:app


def run_service(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
                address: str | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then remove the application (and stop a local Ray instance)."""
    from .ray_session import ray_session

    with ray_session(address) as local, _stop_signals() as stop:
        try:
            serve.start(http_options={"host": host, "port": port})
            try:
                serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
            except RuntimeError as e:  # Serve gave up on the replicas; their errors are in the log above
                print(f"error: {str(e).splitlines()[0]} (the replicas' errors are above)", file=sys.stderr)
                return 1
            print(f"idm-rt: serving {settings.model or 'the bundled default model'} on http://{host}:{port} "
                  f"({settings.replicas} replica(s)): POST /v1/upscale, GET /v1/model, GET /healthz; "
                  "Ctrl-C stops", flush=True)
            while not stop.wait(0.5):
                pass
            print("idm-rt: stopping", flush=True)
        finally:
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
    return 0


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event that SIGINT and SIGTERM set (instead of Ray's handler, which aborts the process); the previous
    handlers are put back afterwards."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
