"""The HTTP API in one process (idm_rt.http_api.UpscaleApp, no Ray): failures and limits, admission by work, time
limits that stop the work within one piece, slow and greedy clients, draining."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import idm_rt
import idm_rt.model.pieces
from idm_rt.cancel import Cancelled, cancel_when
from idm_rt.http_api import INTERNAL_ERROR, Limits, UpscaleApp

from .helpers import TINY, perturbed


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = png(Image.fromarray((np.random.default_rng(0).random((16, 20, 3)) * 255).astype(np.uint8)))


@pytest.fixture(scope="module")
def upscaler():
    torch.manual_seed(0)
    model = perturbed(idm_rt.IDM(TINY, max_scale=4.0))
    return idm_rt.Upscaler(model, sampling=idm_rt.SamplingSettings(sampler="dpmpp_2m", steps=2))


def asgi_request(
    chunks: list[bytes],
    query: str,
    declare_length: bool = True,
    client: str = "10.0.0.1",
    stall: asyncio.Event | None = None,
    path: str = "/v1/upscale",
    method: str = "POST",
):
    """A Starlette request whose body arrives in ``chunks``; with ``stall`` the body stops after them until the
    event is set (a slow client)."""
    from starlette.requests import Request

    messages = [
        {"type": "http.request", "body": c, "more_body": i + 1 < len(chunks) or stall is not None}
        for i, c in enumerate(chunks)
    ]

    async def receive():
        if messages:
            return messages.pop(0)
        await stall.wait()
        return {"type": "http.disconnect"}

    headers = (
        [(b"content-length", str(sum(map(len, chunks)) + (10**6 if stall else 0)).encode())] if declare_length else []
    )
    return Request(
        {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": "",
            "client": (client, 1234),
            "query_string": query.encode(),
            "headers": headers,
        },
        receive,
    )


def test_an_internal_failure_is_a_500_without_details_and_the_api_keeps_serving(upscaler, monkeypatch):
    """A failure inside the Upscaler, a body that streams past the limit undeclared, an input above the pixel
    limit."""
    app = UpscaleApp(
        upscaler, model="tiny", backend="torch", limits=Limits(max_body_bytes=10_000, timeout_s=60, max_steps=100)
    )

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    async def scenario():
        monkeypatch.setattr(upscaler, "upscale", broken)
        failed = await app(asgi_request([GOOD], "scale=2"))
        monkeypatch.undo()
        ok = await app(asgi_request([GOOD], "scale=2&seed=1"))
        streamed = await app(asgi_request([b"x" * 6000, b"x" * 6000], "scale=2", declare_length=False))
        app.sheet["max_pixels"] = 300  # the 20x16 input has 320
        return failed, ok, streamed, await app(asgi_request([GOOD], "scale=2"))

    failed, ok, streamed, large = asyncio.run(scenario())
    assert failed.status_code == 500 and json.loads(failed.body) == {"error": INTERNAL_ERROR}
    assert b"secret" not in failed.body and b"Traceback" not in failed.body
    assert ok.status_code == 200 and ok.headers["x-seed"] == "1" and ok.headers["x-batch-size"] == "1"
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(ok.body))),
        np.asarray(upscaler.upscale(Image.open(io.BytesIO(GOOD)), scale=2, seed=1, progress=False)),
    )
    assert streamed.status_code == 413 and b"longer than the limit of 10000 bytes" in streamed.body
    assert large.status_code == 400 and b"image 20x16 has more than 300 pixels" in large.body  # refused undecoded


@pytest.mark.parametrize("query", ["scale=2_0", "scale=2&seed=1_0", "scale=2&steps=1_0", "scale=0x10", "scale=1e999"])
def test_numbers_with_digit_separators_or_beyond_a_float_are_refused(upscaler, query):
    app = UpscaleApp(upscaler, model="tiny", backend="torch")
    response = asyncio.run(app(asgi_request([GOOD], query)))
    assert response.status_code == 400 and b"got '" in response.body


def test_work_is_estimated_before_anything_runs(upscaler, monkeypatch):
    """Admission counts the encoder's LR pixels, not the output's alone: a 1.1x upscale of a large image costs
    more than a 2x upscale of a small one with a larger output."""
    app = UpscaleApp(upscaler, model="tiny", backend="torch", limits=Limits(timeout_s=10))
    params = {"scale": None, "size": None, "steps": None, "sampler": None, "quality": None}
    _, wide = app.estimate({**params, "scale": 1.1}, 3000, 3000)  # 10.9 MP out, 9 MP into the encoder
    _, tall = app.estimate({**params, "scale": 4.0}, 800, 800)  # 10.2 MP out, 0.64 MP into the encoder
    _, more_steps = app.estimate({**params, "scale": 4.0, "steps": 20}, 800, 800)
    assert wide > tall and more_steps > 5 * tall
    monkeypatch.setattr(upscaler, "upscale", lambda *a, **k: pytest.fail("refused work must not run"))
    app.flops_per_s = app.flops.total((3000, 3000), (3300, 3300), 2, 256, 8, 512, 4) / 12  # 12 s: too slow
    response = asyncio.run(app(asgi_request([png(Image.new("RGB", (3000, 3000)))], "scale=1.1")))
    assert response.status_code == 413 and b"above this service's limit of 10 s" in response.body
    assert app.describe()["requests"]["refused_work"] == 1


def test_a_request_past_its_time_limit_gets_504_and_its_work_stops_within_one_call(upscaler, monkeypatch):
    """The estimate was wrong (the machine got busier): the client gets a 504 at the limit, and the worker starts
    at most one more U-Net call after it."""
    app = UpscaleApp(upscaler, model="tiny", backend="torch", limits=Limits(timeout_s=1.0))
    app.flops_per_s = 1e30  # the estimate says it is instant
    starts, unet = [], upscaler.denoise

    def counted(*args):
        starts.append(time.time())
        time.sleep(0.02)
        return unet(*args)

    monkeypatch.setattr(upscaler, "denoise", counted)  # the U-Net call the Upscaler makes
    sent = time.time()
    response = asyncio.run(app(asgi_request([GOOD], "scale=2&steps=2000")))
    assert response.status_code == 504 and b"limit of 1 s" in response.body
    deadline = time.monotonic() + 30
    while not app.worker.stats["stopped_batches"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.worker.stats["stopped_batches"] == 1 and 0 < len(starts) < 2000
    assert sum(t > sent + 1.0 for t in starts) <= 1, [round(t - sent, 2) for t in starts[-3:]]
    assert app.describe()["requests"]["timed_out"] == 1


def test_a_cancelled_upscale_stops_inside_the_encoder_between_its_tiles(upscaler, monkeypatch):
    """The work before the first U-Net call (the encoder over a large image, in LR tiles) stops at its next tile."""
    monkeypatch.setattr(idm_rt.model.pieces, "FEATURE_TILE", 16)
    pieces, features = [], upscaler.model.encoder.features
    monkeypatch.setattr(upscaler.model.encoder, "features", lambda lr: pieces.append(1) or features(lr))
    lr = torch.zeros(1, 3, 64, 64)  # 16 tiles of 16x16
    with cancel_when(lambda: len(pieces) >= 3), pytest.raises(Cancelled):
        upscaler.model.encode(lr, (128, 128))
    assert len(pieces) == 3
    pieces.clear()
    assert upscaler.model.encode(lr, (128, 128)).shape == (1, 3, 128, 128) and len(pieces) == 16  # no check: all


def test_slow_clients_get_408_and_cannot_take_the_service(upscaler):
    """Uploads that stall: each is cut at the body time limit; beyond the cap on uploads, new ones get 503 at
    once; health and other clients' requests are answered meanwhile."""
    app = UpscaleApp(upscaler, model="tiny", backend="torch", limits=Limits(body_timeout_s=0.5, max_uploads=4))

    async def scenario():
        stall = asyncio.Event()
        stalled = [
            asyncio.create_task(app(asgi_request([b"x" * 10], "scale=2", client=f"10.0.1.{i}", stall=stall)))
            for i in range(4)
        ]
        await asyncio.sleep(0.1)
        refused = await app(asgi_request([b"x" * 10], "scale=2", client="10.0.2.1", stall=stall))
        health = await app(asgi_request([], "", path="/healthz", method="GET"))
        stalled_results = await asyncio.gather(*stalled)
        ok = await app(asgi_request([GOOD], "scale=2&seed=1", client="10.0.3.1"))
        stall.set()
        return stalled_results, refused, health, ok

    stalled, refused, health, ok = asyncio.run(scenario())
    assert [r.status_code for r in stalled] == [408] * 4 and b"did not arrive within 0.5 s" in stalled[0].body
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert health.status_code == 200 and ok.status_code == 200
    assert app.describe()["requests"]["body_timeouts"] == 4


def test_one_client_cannot_open_more_than_its_share(upscaler):
    app = UpscaleApp(upscaler, model="tiny", backend="torch", limits=Limits(max_client_requests=2, body_timeout_s=5))

    async def scenario():
        stall = asyncio.Event()
        mine = [
            asyncio.create_task(app(asgi_request([b"x"], "scale=2", client="10.0.0.9", stall=stall))) for _ in range(2)
        ]
        await asyncio.sleep(0.1)
        third = await app(asgi_request([GOOD], "scale=2", client="10.0.0.9"))
        other = await app(asgi_request([GOOD], "scale=2", client="10.0.0.10"))
        stall.set()
        await asyncio.gather(*mine)
        return third, other

    third, other = asyncio.run(scenario())
    assert third.status_code == 429 and b"2 requests open" in third.body and other.status_code == 200


def test_draining_answers_what_is_in_flight_and_refuses_the_rest(upscaler, monkeypatch):
    app = UpscaleApp(upscaler, model="tiny", backend="torch")
    started, release, upscale = threading.Event(), threading.Event(), upscaler.upscale

    def held(*args, **kwargs):
        started.set()
        release.wait(30)
        return upscale(*args, **kwargs)

    monkeypatch.setattr(upscaler, "upscale", held)

    async def scenario():
        flying = asyncio.create_task(app(asgi_request([GOOD], "scale=2&seed=3")))
        while not started.is_set():
            await asyncio.sleep(0.01)
        drained = asyncio.create_task(app.drain(30))
        await asyncio.sleep(0.05)
        late = await app(asgi_request([GOOD], "scale=2"))
        health = await app(asgi_request([], "", path="/healthz", method="GET"))
        release.set()
        return await flying, await drained, late, health

    flying, left, late, health = asyncio.run(scenario())
    assert flying.status_code == 200 and left == 0
    assert late.status_code == 503 and b"shutting down" in late.body and health.status_code == 503
