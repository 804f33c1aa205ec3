"""The HTTP API: ``POST /v1/upscale``, ``GET /v1/model``, ``GET /healthz``, in two parts that Ray Serve runs as two
deployments (:mod:`idm_rt.serve`) and that run in one process without Ray (:class:`UpscaleApp`):

* :class:`Frontend`, the HTTP side: asynchronous and cheap, it holds the connections. It reads a body under a time
  limit, caps the requests one client has open and the uploads in progress overall, checks the parameters and the
  image's header, estimates the request's work (FLOPs of every stage, :mod:`idm_rt.cost`, at the rate the worker
  measured) and admits it only if it fits the time limit on top of the work already admitted; the rest get a 413
  (too much work for one request) or a 503 (busy: retry later) at once, before any computation. ``/healthz`` and
  ``/v1/model`` never wait for a computation. On :meth:`Frontend.drain` it refuses new requests (503) and lets
  the admitted ones finish.
* :class:`Worker`, one :class:`~idm_rt.Upscaler`: decodes, upscales each group of alike requests as one network
  batch (each with its own seed, so each gets the image it gets alone) and encodes; a group whose requests are all
  past their deadline or cancelled stops at the next piece of work (:mod:`idm_rt.cancel`), so a 504 frees the worker
  within one encoder tile, one conditioning or one U-Net call.

A bad request gets a 4xx whose JSON body ``{"error": ...}`` holds the message the Python API raises; an internal
failure a 500 with a generic message (the details go to the log).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import math
import secrets
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .buckets import parse_size
from .cancel import Cancelled, cancel_when
from .cost import StageFlops, flops_of
from .diffusion import calls_for
from .image_files import encode_image, read_image
from .options import OPTIONS, parse_number
from .sampling import SamplingSettings, choose_preset, presets_from_dict
from .sizes import output_size

logger = logging.getLogger("ray.serve")  # Serve's replica logger (its access log too); a plain logger elsewhere

# format parameter -> (PIL format, media type, largest side the format can hold)
FORMATS = {
    "png": ("PNG", "image/png", 2**31 - 1),
    "webp": ("WEBP", "image/webp", 16383),
    "jpeg": ("JPEG", "image/jpeg", 65500),
}
PARAMS = ("scale", "size", "quality", "steps", "sampler", "seed", "format")
ENDPOINTS = {"/v1/upscale": "POST", "/v1/model": "GET", "/healthz": "GET"}
INTERNAL_ERROR = "internal error while upscaling; the details are in the service's log"
NOMINAL_TILE = 256  # the tile side the work estimate assumes when the worker has no fixed one


class HTTPError(Exception):
    """A request the service refuses with ``status``, a message for the client and optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class Failed(Exception):
    """An internal failure, logged where it happened; the client gets a generic 500."""


@dataclass(frozen=True)
class Limits:
    """What one request may cost the service, and what one client may hold of it (:data:`~idm_rt.options.OPTIONS`
    says what each means)."""

    max_body_bytes: int = int(OPTIONS["max_body_mb"].default * 2**20)
    timeout_s: float = OPTIONS["timeout_s"].default
    max_steps: int = OPTIONS["max_steps"].default
    body_timeout_s: float = OPTIONS["body_timeout_s"].default
    max_uploads: int = OPTIONS["max_uploads"].default
    max_client_requests: int = OPTIONS["max_client_requests"].default


@dataclass(frozen=True)
class Job:
    """One request as the worker sees it: the body's bytes, the parameters, and when nobody waits any more."""

    body: bytes
    scale: float | None
    size: tuple[int, int] | None
    quality: str | None
    steps: int | None
    sampler: str | None
    seed: int
    format: str
    deadline: float  # time.time() after which nobody waits for the result (wall clock: it crosses processes)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Result:
    data: bytes
    media_type: str
    batch: int  # images in the network batch this one ran in
    stats: tuple[str, dict]  # (worker replica, its counters), which the frontend reports in GET /v1/model
    seconds: float = 0.0  # the batch's compute time, and its estimated work, for the frontend's rate
    flops: float = 0.0


def parse_query(query: QueryParams, max_steps: int) -> dict:
    """The upscale parameters of a query string, parsed; ValueError names the first bad one."""
    names = [k for k, _ in query.multi_items()]
    unknown = sorted(set(names) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(PARAMS)}")
    repeated = sorted({k for k in names if names.count(k) > 1})
    if repeated:
        raise ValueError(f"parameter(s) given more than once: {', '.join(repeated)}")
    out = {
        "scale": None,
        "size": None,
        "steps": None,
        "sampler": query.get("sampler"),
        "format": "png",
        "quality": query.get("quality"),
    }
    for name in ("scale", "steps", "seed"):
        if name in query:
            out[name] = _number(name, query[name])
    if "size" in query:
        out["size"] = parse_size(query["size"])
    if out["steps"] is not None and out["steps"] > max_steps:
        raise ValueError(f"steps must be at most {max_steps} on this service, got {out['steps']}")
    if "seed" not in query:
        out["seed"] = secrets.randbelow(2**63)
    if "format" in query:
        out["format"] = query["format"].lower()
        if out["format"] not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {query['format']!r}")
    return out


def _number(name: str, text: str) -> int | float:
    """A query parameter's text as the option ``name`` takes it (:data:`~idm_rt.options.OPTIONS`)."""
    option = OPTIONS[name]
    try:
        return option.check(parse_number(text, option.kind), required=True)
    except ValueError:
        raise ValueError(f"{name} must be {option.describe()}, got {text!r}") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"the body has {declared} bytes, above the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the body is longer than the limit of {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise HTTPError(400, "the body is empty: send the image file's bytes")
    return b"".join(chunks)


def error_response(error: Exception) -> Response:
    """The response for a failed request: the message for bad requests, a generic one for internal errors
    (logged here unless already logged where they happened)."""
    if isinstance(error, HTTPError):
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)
    if isinstance(error, ValueError):
        return JSONResponse({"error": str(error)}, status_code=400)
    if not isinstance(error, Failed):
        logger.error("internal error", exc_info=error)
    return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)


def upright_size(body: bytes) -> tuple[int, int]:
    """(height, width) of the image in ``body`` as it will be upscaled (after its EXIF orientation), read from
    its header without decoding the pixels; the errors PIL raises for data it cannot read."""
    with Image.open(io.BytesIO(body)) as im:
        width, height = im.size
        turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap width and height
    return (width, height) if turned else (height, width)


class Frontend:
    """The HTTP side of the API (see the module's docstring).

    Args:
        run: sends a :class:`Job` to a worker and returns its :class:`Result` (or the exception for its client).
        sheet: what the worker serves and what its work costs (:meth:`Worker.sheet`).
        limits: the per-request and per-client limits.
        info: more to report in ``GET /v1/model`` (model name, backend, batching settings).
        workers: workers the admitted work is shared by.
    """

    def __init__(
        self,
        run: Callable[[Job], Awaitable[Result | Exception]],
        sheet: dict | None,
        limits: Limits,
        info: dict,
        workers: int = 1,
        fetch_sheet: Callable[[], Awaitable[dict]] | None = None,
    ):
        self.run, self.limits, self.info, self.workers, self.fetch_sheet = run, limits, info, workers, fetch_sheet
        if sheet is not None:
            self.set_sheet(sheet)
        self.admitted_s = 0.0  # estimated seconds of the work admitted and not finished
        self.uploads, self.in_flight = 0, 0
        self.clients: dict[str, int] = defaultdict(int)
        self.draining = False
        self.stats = {"timed_out": 0, "refused_work": 0, "refused_busy": 0, "refused_client": 0, "body_timeouts": 0}
        self.workers_stats: dict[str, dict] = {}

    def set_sheet(self, sheet: dict) -> None:
        """What the worker serves and its costs (:meth:`Worker.sheet`)."""
        self.sheet = sheet
        self.flops = StageFlops.from_dict(sheet["stage_flops"])
        self.flops_per_s = float(sheet["flops_per_s"])
        self.defaults = SamplingSettings.from_dict(sheet["defaults"])
        self.presets = presets_from_dict(sheet["presets"], "the worker's presets")

    async def __call__(self, request: Request) -> Response:
        start = time.monotonic()
        path = request.url.path.removeprefix(request.scope.get("root_path", "")) or "/"
        response = await self._route(request, path)
        client = request.client.host if request.client else "-"
        logger.info('%s "%s %s" %d %.3fs', client, request.method, path, response.status_code, time.monotonic() - start)
        return response

    async def _route(self, request: Request, path: str) -> Response:
        if path not in ENDPOINTS:
            return JSONResponse(
                {"error": f"no endpoint {path}; the API is POST /v1/upscale, GET /v1/model and GET /healthz"},
                status_code=404,
            )
        if request.method != ENDPOINTS[path]:
            return JSONResponse({"error": f"{path} takes {ENDPOINTS[path]}, not {request.method}"}, status_code=405)
        if path == "/healthz":
            return PlainTextResponse("draining", status_code=503) if self.draining else PlainTextResponse("ok")
        if not hasattr(self, "sheet"):  # the first request after start-up asks a worker once
            self.set_sheet(await self.fetch_sheet())
        if path == "/v1/model":
            return JSONResponse(self.describe())
        client = request.client.host if request.client else "-"
        try:
            if self.draining:
                raise HTTPError(503, "the service is shutting down; retry on another instance", {"Retry-After": "1"})
            if self.clients[client] >= self.limits.max_client_requests:
                self.stats["refused_client"] += 1
                raise HTTPError(
                    429,
                    f"this client has {self.clients[client]} requests open, the most one may "
                    "have; wait for one to finish",
                    {"Retry-After": "1"},
                )
            self.clients[client] += 1
            self.in_flight += 1
            try:
                return await self.upscale(request)
            finally:
                self.in_flight -= 1
                self.clients[client] -= 1
                if not self.clients[client]:
                    del self.clients[client]
        except Exception as e:  # noqa: BLE001 (every failure becomes a response; the service keeps serving)
            return error_response(e)

    def describe(self) -> dict:
        """What is served: model, sampling defaults, backend, tile or buckets, limits, and the service's
        counters (batching from each worker, refusals and time-outs here)."""
        sheet, limits = self.sheet, self.limits
        batching = {
            k: sum(s.get(k, 0) for s in self.workers_stats.values()) for k in ("images", "batches", "stopped_batches")
        }
        batching["largest_batch"] = max((s.get("largest_batch", 0) for s in self.workers_stats.values()), default=0)
        batching["replicas_answering"] = len(self.workers_stats)
        return {
            "model": self.info.get("model"),
            "backend": self.info.get("backend"),
            "max_scale": sheet["max_scale"],
            "device": sheet["device"],
            "defaults": sheet["defaults"],
            "presets": sheet["presets"],
            "tile": sheet["tile"],
            "buckets": sheet["buckets"],
            "limits": {
                "max_body_bytes": limits.max_body_bytes,
                "max_pixels": sheet["max_pixels"],
                "max_steps": limits.max_steps,
                "timeout_s": limits.timeout_s,
                "body_timeout_s": limits.body_timeout_s,
                "max_uploads": limits.max_uploads,
                "max_client_requests": limits.max_client_requests,
            },
            "formats": list(FORMATS),
            "work": {"flops_per_s": self.flops_per_s, "admitted_s": round(self.admitted_s, 3)},
            "batching": {**self.info.get("batching", {}), **batching},
            "requests": dict(self.stats),
            "draining": self.draining,
        }

    async def read(self, request: Request) -> bytes:
        """The body, within ``body_timeout_s`` and the cap on uploads in progress."""
        if self.uploads >= self.limits.max_uploads:
            self.stats["refused_busy"] += 1
            raise HTTPError(
                503,
                f"{self.uploads} uploads are in progress, the most this service takes at once; retry shortly",
                {"Retry-After": "1"},
            )
        self.uploads += 1
        try:
            return await asyncio.wait_for(read_body(request, self.limits.max_body_bytes), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            self.stats["body_timeouts"] += 1
            raise HTTPError(408, f"the body did not arrive within {self.limits.body_timeout_s:g} s") from None
        except ClientDisconnect:
            raise HTTPError(400, "the client closed the connection before the body was complete") from None
        finally:
            self.uploads -= 1

    def estimate(self, params: dict, height: int, width: int) -> tuple[tuple[int, int], float]:
        """(output size (H, W), estimated seconds) of a request; ValueError for a bad size or sampling."""
        out = output_size(height, width, params["scale"], params["size"], self.sheet["max_pixels"])
        settings = choose_preset(params["quality"], self.defaults, self.presets).replace(
            steps=params["steps"], sampler=params["sampler"]
        )
        calls = calls_for(settings.sampler, settings.steps, t_start=settings.start_timestep)
        flops = self.flops.total(
            (height, width),
            out,
            calls,
            self.sheet["tile"] or NOMINAL_TILE,
            self.sheet["multiple"],
            self.sheet["feature_tile"],
            self.sheet["radius"],
        )
        return out, flops / self.flops_per_s

    async def upscale(self, request: Request) -> Response:
        deadline = time.time() + self.limits.timeout_s
        params = parse_query(request.query_params, self.limits.max_steps)
        body = await self.read(request)
        try:
            height, width = upright_size(body)
        except UnidentifiedImageError:
            raise HTTPError(
                400, "cannot read the body as an image: not a format PIL knows (PNG, JPEG, WebP, TIFF, BMP, ...)"
            ) from None
        except Exception as e:  # noqa: BLE001 (PIL raises several types for damaged data)
            raise HTTPError(400, f"cannot read the body as an image: {e}") from None
        if height * width > self.sheet["max_pixels"]:
            raise ValueError(f"image {width}x{height} has more than {self.sheet['max_pixels']} pixels")
        (out_h, out_w), seconds = self.estimate(params, height, width)
        fmt, _, side = FORMATS[params["format"]]
        if max(out_h, out_w) > side:
            raise ValueError(
                f"{fmt} images are at most {side} pixels wide and high; the output is {out_w}x{out_h} "
                "(ask for format=png)"
            )
        budget = self.limits.timeout_s
        if seconds > budget:
            self.stats["refused_work"] += 1
            raise HTTPError(
                413,
                f"this request needs about {seconds:.0f} s of computation here ({width}x{height} -> "
                f"{out_w}x{out_h}), above this service's limit of {budget:g} s: ask for a smaller "
                "output or fewer steps",
            )
        if self.admitted_s / self.workers + seconds > budget:
            self.stats["refused_busy"] += 1
            wait = max(1, math.ceil(self.admitted_s / self.workers))
            raise HTTPError(
                503,
                f"the service is busy: the work already admitted takes about {wait} s; retry later",
                {"Retry-After": str(wait)},
            )
        job = Job(body=body, deadline=deadline, **params)
        self.admitted_s += seconds
        try:
            outcome = await asyncio.wait_for(self.run(job), deadline - time.time())
        except asyncio.TimeoutError:
            self.stats["timed_out"] += 1
            raise self._too_late() from None
        finally:
            self.admitted_s = max(0.0, self.admitted_s - seconds)
        if isinstance(outcome, Result):
            name, counters = outcome.stats  # (counters only grow: keep the latest, whatever order results come in)
            seen = self.workers_stats.setdefault(name, {})
            seen.update({k: max(v, seen.get(k, 0)) for k, v in counters.items()})
            if outcome.seconds > 0 and outcome.flops > 0:  # follow the rate the workers show, smoothly
                self.flops_per_s = 0.8 * self.flops_per_s + 0.2 * outcome.flops / outcome.seconds
        if isinstance(outcome, Exception):
            if isinstance(outcome, Cancelled):
                self.stats["timed_out"] += 1
                raise self._too_late()
            raise outcome
        return Response(
            outcome.data,
            media_type=outcome.media_type,
            headers={"X-Seed": str(job.seed), "X-Batch-Size": str(outcome.batch)},
        )

    def _too_late(self) -> HTTPError:
        return HTTPError(504, f"the request took longer than this service's limit of {self.limits.timeout_s:g} s")

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests (503, and ``/healthz`` says "draining") and wait up to ``timeout_s`` for the ones in
        flight; returns how many are still in flight."""
        self.draining = True
        end = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return self.in_flight


class Worker:
    """One :class:`~idm_rt.Upscaler` running jobs (see the module's docstring)."""

    def __init__(self, upscaler, name: str = "worker"):
        self.up, self.name = upscaler, name
        self.stats = {"images": 0, "batches": 0, "largest_batch": 0, "stopped_batches": 0}
        self.cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.flops_per_s = self.calibrate()

    def calibrate(self) -> float:
        """FLOPs per second of this worker, from one timed upscale of a 64x64 image at 2x at the defaults (the
        first admissions are estimated with it; the frontend then follows the requests' own timings)."""
        image = Image.new("RGB", (64, 64), (128, 128, 128))
        start = time.perf_counter()
        self.up.upscale(image, scale=2, seed=0, progress=False)
        return self.work(64, 64, (128, 128), self.up.sampling) / max(time.perf_counter() - start, 1e-6)

    def work(self, height: int, width: int, out: tuple[int, int], settings: SamplingSettings) -> float:
        """Estimated FLOPs of one upscale (:mod:`idm_rt.cost`)."""
        from .model.pieces import FEATURE_TILE, receptive_radius

        calls = calls_for(settings.sampler, settings.steps, t_start=settings.start_timestep)
        tile = self.up.tile or NOMINAL_TILE
        return flops_of(self.up.model).total(
            (height, width),
            out,
            calls,
            tile,
            self.up.model.config.size_multiple,
            FEATURE_TILE,
            receptive_radius(self.up.model.config.encoder_blocks),
        )

    def sheet(self) -> dict:
        """What the frontend needs to check and estimate requests without the model."""
        from .model.pieces import FEATURE_TILE, receptive_radius

        up, config = self.up, self.up.model.config
        return {
            "max_pixels": up.max_pixels,
            "max_scale": float(up.model.max_scale),
            "device": str(up.device),
            "defaults": up.sampling.to_dict(),
            "tile": up.tile,
            "presets": {name: s.to_dict() for name, s in up.presets.items()},
            "buckets": [b.name for b in up.model.buckets] if up.model.backend != "torch" else None,
            "multiple": config.size_multiple,
            "feature_tile": FEATURE_TILE,
            "radius": receptive_radius(config.encoder_blocks),
            "stage_flops": dataclasses.asdict(flops_of(up.model)),
            "flops_per_s": self.flops_per_s,
        }

    def cancel(self, job_id: str) -> None:
        """Stop ``job_id``'s work at its next piece (its client is gone)."""
        self.cancelled.add(job_id)

    def run_batch(self, jobs: list[Job]) -> list[Result | Exception]:
        """Jobs -> their results (or errors), in order; each group of alike jobs runs as one network batch."""
        images: list[Image.Image | None] = []
        outcomes: list[Result | Exception | None] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            try:
                images.append(self._decode(job))
            except Exception as e:  # noqa: BLE001 (a bad body is its own client's 400)
                images.append(None)
                outcomes[i] = e
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (job, image) in enumerate(zip(jobs, images)):
            if image is not None:
                groups[(image.size, job.scale, job.size, job.quality, job.steps, job.sampler)].append(i)
        for idx in groups.values():
            for i, outcome in zip(idx, self._run_group([jobs[i] for i in idx], [images[i] for i in idx])):
                outcomes[i] = outcome
        self.cancelled.difference_update(job.id for job in jobs)
        return outcomes

    def _decode(self, job: Job) -> Image.Image:
        try:
            return read_image(
                io.BytesIO(job.body),
                self.up.max_pixels,
                lambda h, w: self.up.check_output_pixels(h, w, job.scale, job.size),
            )
        except (ValueError, Cancelled):
            raise
        except Exception as e:  # noqa: BLE001 (PIL raises several types for damaged data)
            raise HTTPError(400, f"cannot read the body as an image: {e}") from None

    def _run_group(self, jobs: list[Job], images: list[Image.Image]) -> list[Result | Exception]:
        first = jobs[0]
        abandoned = lambda: all(time.time() > job.deadline or job.id in self.cancelled for job in jobs)
        start = time.perf_counter()
        try:
            with cancel_when(abandoned):
                results = self.up.upscale(
                    images,
                    scale=first.scale,
                    size=first.size,
                    steps=first.steps,
                    sampler=first.sampler,
                    quality=first.quality,
                    seed=[job.seed for job in jobs],
                    progress=False,
                )
        except ValueError as e:  # raised before any work: whose request is it? Each one alone says
            return [self._run_group([job], [im])[0] for job, im in zip(jobs, images)] if len(jobs) > 1 else [e]
        except Cancelled as e:
            with self._lock:
                self.stats["stopped_batches"] += 1
            return [e] * len(jobs)
        except Exception:  # internal: logged once, a 500 for each request of the batch
            logger.exception("upscaling a batch of %d image(s) failed", len(jobs))
            return [Failed()] * len(jobs)
        seconds = time.perf_counter() - start
        out = (results[0].height, results[0].width)
        settings = choose_preset(first.quality, self.up.sampling, self.up.presets).replace(
            steps=first.steps, sampler=first.sampler
        )
        flops = self.work(images[0].height, images[0].width, out, settings) * len(jobs)
        with self._lock:
            self.stats["images"] += len(jobs)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
            stats = (self.name, dict(self.stats))
        return [self._encode(image, job.format, len(jobs), stats, seconds, flops) for image, job in zip(results, jobs)]

    @staticmethod
    def _encode(
        image: Image.Image, format: str, batch: int, stats: tuple[str, dict], seconds: float, flops: float
    ) -> Result | Exception:
        fmt, media_type, _ = FORMATS[format]
        buffer = io.BytesIO()
        try:
            encode_image(image, fmt, buffer)
        except Exception:
            logger.exception("encoding a %dx%d %s image as %s failed", *image.size, image.mode, fmt)
            return Failed()
        return Result(buffer.getvalue(), media_type, batch, stats, seconds / batch, flops / batch)


class UpscaleApp(Frontend):
    """The whole API in one process on one Upscaler, without Ray: each request runs alone in a thread."""

    def __init__(self, upscaler, model: str, backend: str, limits: Limits | None = None):
        self.worker = Worker(upscaler)
        super().__init__(self._run_alone, self.worker.sheet(), limits or Limits(), {"model": model, "backend": backend})

    async def _run_alone(self, job: Job) -> Result | Exception:
        try:
            return (await asyncio.to_thread(self.worker.run_batch, [job]))[0]
        except asyncio.CancelledError:
            self.worker.cancel(job.id)
            raise
