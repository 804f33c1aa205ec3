"""Ray Serve application: the HTTP API of :mod:`idm_rt.http_api` as two deployments, a frontend and replicated,
batching workers.

``python -m idm_rt serve`` runs it on a local Ray instance or a cluster; people who deploy with Ray's own tools use
``serve run idm_rt.serve:app`` (bundled model, defaults), ``serve run idm_rt.serve:build_app model=DIR max_batch=8
...``, or a Serve config file whose application has ``import_path: idm_rt.serve:build_app`` and ``args:`` (the
fields of :class:`ServeSettings`).

* ``HttpFrontend`` (one replica, no CPU reserved): every connection, the body limits and the admission by work
  (:class:`~idm_rt.http_api.Frontend`); it answers ``/healthz`` whatever the workers do, and retries a request on
  another worker when the one running it died (a node lost), while the request's time allows.
* ``UpscaleWorker`` (``replicas`` of them): each its own :class:`~idm_rt.Upscaler`; Ray Serve gathers up to
  ``max_batch`` requests waiting at most ``batch_wait_ms``, and requests with the same input size, output size and
  sampling settings run as one network batch, each with its own seed (so each gets exactly the image
  ``Upscaler.upscale`` gives it alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from ray import serve
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

from .backends.registry import BACKENDS, default_backend, runner_threads, worker_gpus
from .http_api import Frontend, Job, Limits, Result, Worker
from .memory import configure_allocator
from .options import OPTIONS
from .upscaler import DEFAULT_MODEL, Upscaler

APP_NAME = "idm_rt"
RETRIES = 3  # times a request is sent again after the worker running it died
# Seconds before the n-th resend, times n: time for Serve to mark a dead replica so that the resend goes elsewhere.
RETRY_WAIT_S = 1.0
# What a request meets when the worker running it, or its node, went away (not a fault of the request): the actor
# died or is unreachable, its process crashed, its node died, or the result was lost with the node's object store.
WORKER_LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)
logger = logging.getLogger("ray.serve")


class _Settings(BaseModel):
    """What a deployment serves; its limits are the fields :data:`SERVICE_OPTIONS` adds (:data:`~idm_rt.options.
    OPTIONS`)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="checkpoint, model folder or engine directory; None: bundled")
    backend: Literal[tuple(BACKENDS)] | None = Field(
        None, description="None: torch where it is installed, else onnxruntime (idm_rt.backends.default_backend)"
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1, ...; default cpu (cuda for tensorrt)")
    frontend_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources the frontend replica needs, e.g. {'ingress': 1} to keep it on the node "
        "that takes the traffic (beside the HTTP proxy); default: any node",
    )

    @property
    def gpus(self) -> float:
        """GPUs per replica: ``replica_gpus``, else one for a CUDA device or a GPU-only backend."""
        return self.replica_gpus if self.replica_gpus is not None else worker_gpus(self.backend, self.device)

    @property
    def limits(self) -> Limits:
        return Limits(
            max_body_bytes=int(self.max_body_mb * 2**20),
            timeout_s=self.timeout_s,
            max_steps=self.max_steps,
            body_timeout_s=self.body_timeout_s,
            max_uploads=self.max_uploads,
            max_client_requests=self.max_client_requests,
        )


SERVICE_OPTIONS = (
    "replicas",
    "replica_cpus",
    "replica_gpus",
    "max_batch",
    "batch_wait_ms",
    "max_body_mb",
    "max_pixels",
    "max_steps",
    "max_memory",
    "timeout_s",
    "body_timeout_s",
    "max_uploads",
    "max_client_requests",
    "max_queued",
)
ServeSettings = create_model(
    "ServeSettings",
    __base__=_Settings,
    __doc__="What a deployment serves and its limits: ``python -m idm_rt serve`` options, or a config file's ``args``.",
    **{name: OPTIONS[name].field() for name in SERVICE_OPTIONS},
)


@serve.deployment
class UpscaleWorker:
    """One worker replica: its own Upscaler, requests batched by Ray Serve."""

    def __init__(self, settings: ServeSettings):
        configure_allocator()  # a replica is a process of its own: freed memory kept for the next request
        backend = settings.backend or default_backend()
        threads = runner_threads(backend, settings.replica_cpus)  # runner options only for runners that take them
        up = Upscaler.from_pretrained(
            settings.model,
            device=settings.device,
            backend=backend,
            max_pixels=settings.max_pixels,
            max_memory=settings.max_memory,
            **({"runner_options": threads} if threads else {}),
        )
        self.worker = Worker(up, name=serve.get_replica_context().replica_tag)
        self._batched = serve.batch(
            max_batch_size=settings.max_batch, batch_wait_timeout_s=settings.batch_wait_ms / 1000
        )(self._run_jobs)

    def sheet(self) -> dict:
        return self.worker.sheet()

    async def _run_jobs(self, jobs: list[Job]) -> list[Result | Exception]:
        return await asyncio.to_thread(self.worker.run_batch, jobs)

    async def run(self, job: Job) -> Result | Exception:
        try:
            return await self._batched(job)
        except asyncio.CancelledError:  # the frontend gave up on it (its time ran out, its client left)
            self.worker.cancel(job.id)
            raise


@serve.deployment
class HttpFrontend(Frontend):
    """The frontend replica: HTTP, limits and admission; jobs go to the workers through ``workers``."""

    def __init__(self, workers, settings: ServeSettings):
        self.workers_handle = workers
        batching = {
            "max_batch": settings.max_batch,
            "batch_wait_ms": settings.batch_wait_ms,
            "replicas": settings.replicas,
        }
        super().__init__(
            self._send,
            None,
            settings.limits,
            {
                "model": settings.model or f"bundled default ({DEFAULT_MODEL.name})",
                "backend": settings.backend or default_backend(),
                "batching": batching,
            },
            workers=settings.replicas,
            fetch_sheet=self._sheet,
        )
        self.stats["retried"] = 0

    async def _sheet(self) -> dict:
        return await self.workers_handle.sheet.remote()

    async def _send(self, job: Job) -> Result | Exception:
        """The job on a worker; sent again (at most :data:`RETRIES` times) when the worker died under it."""
        for attempt in range(RETRIES + 1):
            response = self.workers_handle.run.remote(job)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except WORKER_LOST as e:
                if attempt == RETRIES or time.time() > job.deadline:
                    logger.error("a worker died running request %s: %s", job.id, e.__class__.__name__)
                    return e
                self.stats["retried"] += 1
                logger.warning("a worker died running request %s (%s); sending it again", job.id, e.__class__.__name__)
                await asyncio.sleep(RETRY_WAIT_S * (attempt + 1))
        raise AssertionError("unreachable")


def build_app(args: dict | ServeSettings) -> serve.Application:
    """The application for ``settings`` (a dict is validated into :class:`ServeSettings`, the way
    ``serve run idm_rt.serve:build_app key=value ...`` and config files pass them)."""
    settings = args if isinstance(args, ServeSettings) else ServeSettings.model_validate(args)
    quiet = {"enable_access_log": False}  # the frontend logs each request with its own path
    workers = UpscaleWorker.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.gpus},
        max_ongoing_requests=2 * settings.max_batch + 2,  # one batch running, the next one filling, the sheet
        max_queued_requests=settings.max_queued,
        graceful_shutdown_timeout_s=settings.timeout_s + 5,  # a replica stopped finishes what it runs
        graceful_shutdown_wait_loop_s=0.5,
        logging_config=quiet,
    ).bind(settings)
    return HttpFrontend.options(
        num_replicas=1,  # holds the count of admitted work; cheap: no CPU reserved
        ray_actor_options={"num_cpus": 0, "resources": settings.frontend_resources},
        max_ongoing_requests=100_000,  # connections cost it little; its own limits apply
        logging_config=quiet,
    ).bind(workers, settings)


app = build_app({})  # the bundled default model with default settings: serve run idm_rt.serve:app


def run_service(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then drain: refuse new requests (503, ``/healthz`` 503), answer the ones in
    flight (up to ``timeout_s``), then remove the application (and stop a local Ray instance)."""
    from .ray_session import ray_session

    with ray_session(address), _stop_signals() as stop:
        try:
            serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
            try:
                handle = serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
            except RuntimeError as e:  # Serve gave up on the replicas; their errors are in the log above
                print(f"error: {str(e).splitlines()[0]} (the replicas' errors are above)", file=sys.stderr)
                return 1
            print(
                f"idm-rt: serving {settings.model or 'the bundled default model'} on http://{host}:{port} "
                f"({settings.replicas} replica(s)): POST /v1/upscale, GET /v1/model, GET /healthz; "
                "Ctrl-C stops",
                flush=True,
            )
            while not stop.wait(0.5):
                pass
            print("idm-rt: draining: new requests get 503, the ones in flight are answered", flush=True)
            left = handle.drain.remote(settings.timeout_s + 5).result()
            print(f"idm-rt: stopping ({left} request(s) still in flight)" if left else "idm-rt: stopping", flush=True)
        finally:  # (a local instance stops with its Ray: a controller shut down separately logs a failed task)
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
