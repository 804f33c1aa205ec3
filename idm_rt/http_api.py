"""The HTTP API on one Upscaler: ``POST /v1/upscale``, ``GET /v1/model``, ``GET /healthz``.

Plain Starlette requests and responses: :mod:`idm_rt.serve` runs it as a Ray Serve replica (which
batches requests across clients), tests run it without Ray. A bad request gets a 4xx whose JSON body
``{"error": ...}`` holds the message the Python API raises; an internal failure gets a 500 with a
generic message (the details go to the log); a request past its time limit gets a 504 and its
computation stops at the next U-Net call, so it does not hold the replica.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .buckets import parse_size
from .image_files import encode, read_image
from .upscaler import Upscaler, seed_list

logger = logging.getLogger("ray.serve")  # Serve's replica logger; a plain logger elsewhere

# format parameter -> (PIL format, media type, largest side the format can hold)
FORMATS = {"png": ("PNG", "image/png", 2**31 - 1), "webp": ("WEBP", "image/webp", 16383),
           "jpeg": ("JPEG", "image/jpeg", 65500)}
PARAMS = ("scale", "size", "steps", "sampler", "seed", "format")
ENDPOINTS = {"/v1/upscale": "POST", "/v1/model": "GET", "/healthz": "GET"}
INTERNAL_ERROR = "internal error while upscaling; the details are in the service's log"


class HTTPError(Exception):
    """A request the service refuses with ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Expired(Exception):
    """Every request of a network batch is past its time limit: the computation stops."""


class Failed(Exception):
    """An internal failure, logged where it happened; the client gets a generic 500."""


@dataclass(frozen=True)
class Job:
    """One decoded request, as the batch runner sees it."""

    image: Image.Image
    scale: float | None
    size: tuple[int, int] | None
    steps: int | None
    sampler: str | None
    seed: int
    format: str
    deadline: float  # time.monotonic() after which nobody waits for the result

    @property
    def group(self) -> tuple:
        """Jobs with equal groups run as one network batch: same input and output size, same sampling."""
        return self.image.size, self.scale, self.size, self.steps, self.sampler


@dataclass(frozen=True)
class Result:
    data: bytes
    media_type: str
    batch: int  # images in the network batch this one ran in


def parse_query(query: QueryParams, max_steps: int) -> dict:
    """The upscale parameters of a query string, parsed; ValueError names the first bad one."""
    names = [k for k, _ in query.multi_items()]
    unknown = sorted(set(names) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(PARAMS)}")
    repeated = sorted({k for k in names if names.count(k) > 1})
    if repeated:
        raise ValueError(f"parameter(s) given more than once: {', '.join(repeated)}")
    out = {"scale": None, "size": None, "steps": None, "sampler": query.get("sampler"), "format": "png"}
    if "scale" in query:
        out["scale"] = _number(query["scale"], float, "scale must be a finite number > 1")
    if "size" in query:
        out["size"] = parse_size(query["size"])
    if "steps" in query:
        out["steps"] = _number(query["steps"], int, "steps must be a positive integer")
        if out["steps"] > max_steps:
            raise ValueError(f"steps must be at most {max_steps} on this service, got {out['steps']}")
    seed = _number(query["seed"], int, "seed must be an integer in [0, 2**63)") if "seed" in query else None
    out["seed"] = seed_list(secrets.randbelow(2**63) if seed is None else seed, 1)[0]
    if "format" in query:
        out["format"] = query["format"].lower()
        if out["format"] not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {query['format']!r}")
    return out


def _number(text: str, kind: type, message: str):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{message}, got {text!r}") from None


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
        return JSONResponse({"error": str(error)}, status_code=error.status)
    if isinstance(error, ValueError):
        return JSONResponse({"error": str(error)}, status_code=400)
    if not isinstance(error, Failed):
        logger.error("internal error", exc_info=error)
    return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)


class UpscaleApp:
    """The API on one :class:`~idm_rt.Upscaler`; ``run_batched`` is where batching plugs in.

    Args:
        upscaler: the model; its U-Net call (``denoise``) is wrapped so that a batch whose requests are all
            past their time limit stops at the next call.
        model: what to call the model in ``GET /v1/model``.
        max_body_bytes, timeout_s, max_steps: the per-request limits (the output limit is the
            Upscaler's ``max_pixels``).
        batching: the batching settings to report.
    """

    def __init__(self, upscaler: Upscaler, model: str, backend: str, max_body_bytes: int, timeout_s: float,
                 max_steps: int, batching: dict | None = None):
        self.up, self.model, self.backend = upscaler, model, backend
        self.max_body_bytes, self.timeout_s, self.max_steps = max_body_bytes, timeout_s, max_steps
        self.batching = batching or {}
        self.stats = {"images": 0, "batches": 0, "largest_batch": 0, "timed_out": 0, "stopped_batches": 0}
        self._lock = threading.Lock()
        self._local = threading.local()  # the deadline of the batch this thread runs
        denoise = upscaler.denoise or upscaler.model.denoise  # the U-Net call every sampler makes

        def checked_denoise(*args, **kwargs):
            if time.monotonic() > getattr(self._local, "deadline", math.inf):
                raise Expired
            return denoise(*args, **kwargs)

        upscaler.denoise = checked_denoise

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.removeprefix(request.scope.get("root_path", "")) or "/"
        if path not in ENDPOINTS:
            return JSONResponse({"error": f"no endpoint {path}; the API is POST /v1/upscale, GET /v1/model and "
                                          "GET /healthz"}, status_code=404)
        if request.method != ENDPOINTS[path]:
            return JSONResponse({"error": f"{path} takes {ENDPOINTS[path]}, not {request.method}"}, status_code=405)
        if path == "/healthz":
            return PlainTextResponse("ok")
        if path == "/v1/model":
            return JSONResponse(self.describe())
        try:
            return await self.upscale(request)
        except Exception as e:  # noqa: BLE001 (every failure becomes a response; the service keeps serving)
            return error_response(e)

    def describe(self) -> dict:
        """What is served: model, sampling defaults, backend, buckets, limits and batching so far."""
        up = self.up
        with self._lock:
            stats = dict(self.stats)
        return {"model": self.model, "max_scale": float(up.model.max_scale), "backend": self.backend,
                "device": str(up.device),
                "defaults": up.sampling.to_dict(),
                "tile": up.tile,
                "buckets": [b.name for b in up.model.buckets] if up.model.backend != "torch" else None,
                "limits": {"max_body_bytes": self.max_body_bytes, "max_pixels": up.max_pixels,
                           "max_steps": self.max_steps, "timeout_s": self.timeout_s},
                "formats": list(FORMATS), "batching": {**self.batching, **stats}}

    async def upscale(self, request: Request) -> Response:
        deadline = time.monotonic() + self.timeout_s
        params = parse_query(request.query_params, self.max_steps)
        body = await read_body(request, self.max_body_bytes)

        def check_output(h: int, w: int) -> None:  # too large an output is refused before the body is decoded
            self.up.check_output_pixels(h, w, params["scale"], params["size"])

        try:
            image = await asyncio.to_thread(read_image, io.BytesIO(body), self.up.max_pixels, check_output)
        except ValueError:
            raise
        except UnidentifiedImageError:
            raise HTTPError(400, "cannot read the body as an image: not a format PIL knows (PNG, JPEG, WebP, TIFF, "
                                 "BMP, ...)") from None
        except Exception as e:  # noqa: BLE001 (PIL raises several types for damaged data)
            raise HTTPError(400, f"cannot read the body as an image: {e}") from None
        height, width = self.up.output_size(image.height, image.width, params["scale"], params["size"])
        fmt, _, side = FORMATS[params["format"]]
        if max(height, width) > side:
            raise ValueError(f"{fmt} images are at most {side} pixels wide and high; the output is {width}x{height} "
                             "(ask for format=png)")
        job = Job(image=image, deadline=deadline, **params)
        try:
            outcome = await asyncio.wait_for(self.run_batched(job), deadline - time.monotonic())
        except asyncio.TimeoutError:
            with self._lock:
                self.stats["timed_out"] += 1
            raise self._too_late() from None
        if isinstance(outcome, Exception):
            raise outcome
        return Response(outcome.data, media_type=outcome.media_type,
                        headers={"X-Seed": str(job.seed), "X-Batch-Size": str(outcome.batch)})

    def _too_late(self) -> HTTPError:
        return HTTPError(504, f"the request took longer than this service's limit of {self.timeout_s:g} s")

    async def run_batched(self, job: Job) -> Result | Exception:
        """One job, alone; Ray Serve replicas batch jobs from many clients here instead."""
        return (await asyncio.to_thread(self.run_batch, [job]))[0]

    def run_batch(self, jobs: list[Job]) -> list[Result | Exception]:
        """Jobs -> their results (or errors), in order; each group of alike jobs runs as one network batch."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.group].append(i)
        outcomes: list[Result | Exception] = [None] * len(jobs)
        for idx in groups.values():
            for i, outcome in zip(idx, self._run_group([jobs[i] for i in idx])):
                outcomes[i] = outcome
        return outcomes

    def _run_group(self, jobs: list[Job]) -> list[Result | Exception]:
        first = jobs[0]
        self._local.deadline = max(job.deadline for job in jobs)
        try:
            images = self.up.upscale([job.image for job in jobs], scale=first.scale, size=first.size,
                                     steps=first.steps, sampler=first.sampler, seed=[job.seed for job in jobs],
                                     progress=False)
        except ValueError as e:  # raised before any work: whose request is it? Each one alone says
            return [self._run_group([job])[0] for job in jobs] if len(jobs) > 1 else [e]
        except Expired:
            with self._lock:
                self.stats["stopped_batches"] += 1
            return [self._too_late()] * len(jobs)
        except Exception:  # internal: logged once, a 500 for each request of the batch
            logger.exception("upscaling a batch of %d image(s) failed", len(jobs))
            return [Failed()] * len(jobs)
        finally:
            self._local.deadline = math.inf
        with self._lock:
            self.stats["images"] += len(jobs)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        return [self._encode(image, job.format, len(jobs)) for image, job in zip(images, jobs)]

    @staticmethod
    def _encode(image: Image.Image, format: str, batch: int) -> Result | Exception:
        fmt, media_type, _ = FORMATS[format]
        buffer = io.BytesIO()
        try:
            encode(image, fmt, buffer)
        except Exception:
            logger.exception("encoding a %dx%d %s image as %s failed", *image.size, image.mode, fmt)
            return Failed()
        return Result(buffer.getvalue(), media_type, batch)
