"""Scale-out on Ray: the HTTP service (real requests to Ray Serve on 127.0.0.1) and batch jobs (Ray Data),
checked against the in-process Upscaler. Skipped without Ray (the serve extra)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import idm_rt
from idm_rt.cli import main
from idm_rt.image_files import encode_image
from idm_rt.ray_session import free_port

from .helpers import ROOT, TINY, perturbed

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")

TIMEOUT_S = 5  # the test service's per-request limit
SLOW_BODY_S = 3  # ... and its time to receive a body


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(h: int, w: int, seed: int, mode: str = "RGB") -> Image.Image:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = (np.random.default_rng(seed).random((h, w, channels)) * 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if mode == "L" else arr)


def post(url: str, body: bytes, timeout: float = 60):
    """(status, headers, body) of a POST; 4xx and 5xx included."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get(url: str, timeout: float = 30):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny random model, sampling with dpmpp_2m in 2 steps by default."""
    torch.manual_seed(0)
    model = perturbed(idm_rt.IDM(TINY, max_scale=4.0))
    model.recommended = idm_rt.SamplingSettings(sampler="dpmpp_2m", steps=2)
    path = tmp_path_factory.mktemp("serve") / "model"
    idm_rt.save_model(model, path)
    return path


@pytest.fixture(scope="module")
def cluster():
    """Local Ray on 127.0.0.1 for this module (its workers import this checkout); yields its address."""
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=150 * 2**20,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def service(cluster, model_dir):
    """The application on one replica, batches of up to 8 gathered for up to 200 ms; yields its URL."""
    from idm_rt.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build_app(
                {
                    "model": str(model_dir),
                    "max_batch": 8,
                    "batch_wait_ms": 200,
                    "timeout_s": TIMEOUT_S,
                    "max_body_mb": 0.1,
                    "max_client_requests": 16,
                    "body_timeout_s": SLOW_BODY_S,
                }
            ),
            name="idm_rt_test",
            route_prefix="/",
            blocking=False,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete("idm_rt_test")


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_equal_the_in_process_results(service, model_dir):
    cases = [(picture(16, 20, i), f"scale=2&seed={i}", {"scale": 2, "seed": i}) for i in range(8)]
    cases += [
        (picture(16, 20, 8, "L"), "scale=2&seed=80", {"scale": 2, "seed": 80}),  # joins the batch above
        (picture(12, 12, 9, "RGBA"), "size=30x30&seed=90", {"size": (30, 30), "seed": 90}),
        (
            picture(16, 20, 10),
            "scale=2.5&steps=3&sampler=ddim&seed=100&format=jpeg",
            {"scale": 2.5, "steps": 3, "sampler": "ddim", "seed": 100},
        ),
        (picture(10, 14, 11), "scale=3&seed=110&format=webp", {"scale": 3, "seed": 110}),
    ]
    start = threading.Barrier(len(cases))

    def send(case):
        start.wait(timeout=60)
        return post(f"{service}/v1/upscale?{case[1]}", png(case[0]))

    with ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(send, cases))
    up = idm_rt.Upscaler.from_pretrained(model_dir)
    for (image, query, kwargs), (status, headers, body) in zip(cases, responses):
        assert status == 200, (query, body)
        assert headers["X-Seed"] == str(kwargs["seed"])
        want = up.upscale(image, progress=False, **kwargs)
        fmt = {"jpeg": "JPEG", "webp": "WEBP"}.get(query.rsplit("format=", 1)[-1], "PNG")
        if fmt == "PNG":
            got = Image.open(io.BytesIO(body))
            assert got.mode == want.mode and np.array_equal(np.asarray(got), np.asarray(want)), query
        else:  # the bytes the same encoder makes of the in-process result
            buffer = io.BytesIO()
            encode_image(want, fmt, buffer)
            assert body == buffer.getvalue(), query
    batches = [int(headers["X-Batch-Size"]) for _, headers, _ in responses]
    assert max(batches) > 1, batches
    status, described = get(f"{service}/v1/model")
    stats = json.loads(described)["batching"]
    assert stats["largest_batch"] >= max(batches) and stats["images"] >= len(cases)
    assert stats["batches"] < stats["images"]


@pytest.mark.slow
def test_model_health_and_unknown_routes(service, model_dir):
    status, body = get(f"{service}/healthz")
    assert status == 200 and body == b"ok"
    status, body = get(f"{service}/v1/model")
    described = json.loads(body)
    assert status == 200 and described["model"] == str(model_dir) and described["backend"] == "torch"
    assert described["defaults"]["sampler"] == "dpmpp_2m" and described["defaults"]["steps"] == 2
    assert described["max_scale"] == 4.0 and described["buckets"] is None
    assert described["limits"]["timeout_s"] == TIMEOUT_S and described["limits"]["max_body_bytes"] == int(0.1 * 2**20)
    assert described["batching"]["max_batch"] == 8 and described["batching"]["batch_wait_ms"] == 200
    status, body = get(f"{service}/v1/upscale")
    assert status == 405 and b"takes POST" in body
    status, body = get(f"{service}/v2/upscale")
    assert status == 404 and b"/v1/upscale" in body


GOOD = png(picture(16, 20, 0))


BAD_REQUESTS = [
    (b"not an image", "scale=2", 400, "cannot read the body as an image: not a format PIL knows"),
    (GOOD[:60], "scale=2", 400, "cannot read the body as an image"),
    (b"", "scale=2", 400, "the body is empty"),
    (b"x" * 200_000, "scale=2", 413, "above the limit of 104857"),
    (GOOD, "size=100000x100000", 400, "has 10000000000 pixels, above the limit of 64000000"),
    (GOOD, "scale=1", 400, "scale must be a number > 1, got '1'"),
    (GOOD, "scale=0.5", 400, "scale must be a number > 1, got '0.5'"),
    (GOOD, "scale=inf", 400, "scale must be a number > 1, got 'inf'"),
    (GOOD, "scale=two", 400, "scale must be a number > 1, got 'two'"),
    (GOOD, "scale=2&size=40x40", 400, "give exactly one of scale or size"),
    (GOOD, "", 400, "give exactly one of scale or size"),
    (GOOD, "size=40", 400, "size must look like WIDTHxHEIGHT"),
    (GOOD, "size=10x10", 400, "must be larger than the input 20x16"),
    (GOOD, "scale=2&sampler=euler", 400, "unknown sampler 'euler'"),
    (GOOD, "scale=2&steps=-1", 400, "steps must be an integer in [0, 2000], got '-1'"),
    (GOOD, "scale=2&steps=5000", 400, "steps must be an integer in [0, 2000], got '5000'"),
    (GOOD, "scale=2&seed=-1", 400, "seed must be an integer in [0, 2**63), got '-1'"),
    (GOOD, "scale=2_0", 400, "scale must be a number > 1, got '2_0'"),
    (GOOD, "scale=2&seed=1_0", 400, "seed must be an integer in [0, 2**63), got '1_0'"),
    (GOOD, "scale=2&format=gif", 400, "format must be one of png, webp, jpeg, got 'gif'"),
    (GOOD, "scale=2&colour=red", 400, "unknown parameter(s) colour"),
    (GOOD, "scale=2&scale=3", 400, "given more than once: scale"),
    (GOOD, "size=17000x20&format=webp", 400, "WEBP images are at most 16383 pixels"),
]


@pytest.mark.slow
@pytest.mark.parametrize("body,query,status,message", BAD_REQUESTS, ids=[m[:40] for *_, m in BAD_REQUESTS])
def test_bad_requests_get_4xx_naming_the_problem_and_the_next_one_succeeds(service, body, query, status, message):
    code, _, answer = post(f"{service}/v1/upscale?{query}", body)
    assert code == status and json.loads(answer)["error"].find(message) >= 0, answer
    assert b"Traceback" not in answer
    code, _, answer = post(f"{service}/v1/upscale?scale=2&seed=5", GOOD)
    assert code == 200 and Image.open(io.BytesIO(answer)).size == (40, 32)


def black_png(width: int, height: int) -> bytes:
    """A cheap body that asks for much work: a black image compresses to almost nothing."""
    return png(Image.new("RGB", (width, height)))


@pytest.mark.slow
def test_a_request_that_would_outlast_the_time_limit_is_refused_at_once(service):
    """The reported attack: an 8.8 KB black 3000x3000 PNG at scale 1.1 (10.9 MP, under the pixel limit), whose
    encoder alone would hold a worker for minutes: refused before any computation, by its estimated work."""
    body = black_png(3000, 3000)
    assert len(body) < 50_000
    code, _, answer = post(f"{service}/v1/upscale?scale=1.1", body)
    message = json.loads(answer)["error"]
    assert code == 413 and "s of computation here (3000x3000 -> 3300x3300)" in message, message
    assert "limit of 5 s" in message
    code, _, answer = post(f"{service}/v1/upscale?scale=2&seed=1", GOOD)  # the worker was never taken
    assert code == 200, answer
    described = json.loads(get(f"{service}/v1/model")[1])
    assert described["requests"]["refused_work"] >= 1 and described["work"]["flops_per_s"] > 0


def answer_of(sock) -> bytes:
    """What the server sent on a raw socket, up to the end of a JSON body."""
    data = b""
    while not data.endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.slow
def test_slow_clients_cannot_stop_the_service(service):
    """The reported attack: connections that send their headers and 10 bytes of body, then stall (30 of them,
    more than a worker's 18 request slots): health and other requests are answered meanwhile, and each stalled
    upload gets a 408 at the body time limit. Connections that stall before their headers end hold only a socket
    of Ray's HTTP proxy (README: put a proxy with header timeouts in front of a public service)."""
    import socket

    port = int(service.rsplit(":", 1)[1])
    stalled = []
    for i in range(30):  # from 30 addresses (all of 127/8 is this machine), under the per-client cap
        s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(f"127.0.0.{i + 2}", 0))
        s.sendall(b"POST /v1/upscale?scale=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 10)
        stalled.append(s)
    half_open = socket.create_connection(("127.0.0.1", port), timeout=30)
    half_open.sendall(b"POST /v1/upscale?scale=2 HTTP/1.1\r\nHost: x\r\n")  # headers never end
    try:
        time.sleep(0.5)
        start = time.monotonic()
        assert get(f"{service}/healthz", timeout=10)[0] == 200
        code, _, answer = post(f"{service}/v1/upscale?scale=2&seed=5", GOOD, timeout=30)
        assert code == 200, answer
        assert time.monotonic() - start < SLOW_BODY_S + 20  # not held until the stalled uploads end
        answers = [answer_of(s) for s in stalled]
    finally:
        for s in [*stalled, half_open]:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 408") and b"did not arrive within 3 s" in a for a in answers), answers[0]


@pytest.mark.slow
def test_onnxruntime_engines_run_in_a_replica_under_a_route_prefix(service, model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from idm_rt.build import main as build
    from idm_rt.serve import build_app

    engines = tmp_path / "engines"
    assert (
        build(["--engine", "fp32", "--backend", "onnxruntime", "--model", str(model_dir), "--out", str(engines)]) == 0
    )
    serve.run(
        build_app({"model": str(engines), "backend": "onnxruntime"}),
        name="idm_rt_ort",
        route_prefix="/ort",
        blocking=False,
    )
    try:
        code, _, body = post(f"{service}/ort/v1/upscale?scale=2&seed=4", GOOD)
        described = json.loads(get(f"{service}/ort/v1/model")[1])
    finally:
        serve.delete("idm_rt_ort")
    want = idm_rt.Upscaler.from_pretrained(engines, backend="onnxruntime").upscale(
        Image.open(io.BytesIO(GOOD)), scale=2, seed=4, progress=False
    )
    assert code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(want))
    assert described["backend"] == "onnxruntime" and described["buckets"] and described["model"] == str(engines)


def test_serve_options_are_checked_before_anything_starts(capsys):
    for option, message in (
        (["--max-batch", "0"], "--max-batch: must be an integer in [1, 64], got '0'"),
        (["--replicas", "2000"], "--replicas: must be an integer in [1, 1024], got '2000'"),
    ):
        with pytest.raises(SystemExit) as exit_:  # argument errors, before Ray starts
            main(["serve", *option])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--model",
        "--backend",
        "--device",
        "--replicas",
        "--max-batch",
        "--batch-wait-ms",
        "--host",
        "--port",
        "--timeout-s",
        "--max-body-mb",
        "examples:",
    ):
        assert option in out


def test_serve_engines_must_be_an_engine_directory_run_by_an_engine_backend(tmp_path, capsys):
    """``serve --engines DIR`` (as ``upscale --engines``), refused in one line before Ray starts."""
    assert main(["serve", "--engines", str(tmp_path)]) == 1
    assert f"{tmp_path} is not an engine directory" in capsys.readouterr().err
    shipped = str(ROOT / "idm_rt" / "weights" / "default" / "onnxruntime")
    assert main(["serve", "--engines", shipped, "--backend", "torch"]) == 1
    assert "--engines runs engines; --backend torch is for --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--engines", shipped, "--model", shipped])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    picture(8, 10, 0).save(src / "a.png")
    picture(6, 6, 1, "L").save(src / "b.jpg")
    picture(7, 5, 2, "RGBA").save(src / "c.webp")
    picture(8, 10, 3).save(src / "c.png")  # same stem as c.webp: named c.png.png and c.webp.png
    picture(5, 7, 4).save(src / "sub" / "d.png")
    (src / "broken.png").write_bytes(b"\x89PNG but not really")
    return src


@pytest.mark.slow
def test_a_batch_job_writes_what_the_cli_writes(cluster, model_dir, folder, tmp_path, capsys):
    """A folder and a glob, as paths and as URIs (pyarrow's local filesystem stands in for object stores)."""
    common = ["--scale", "2.5", "--steps", "2", "--seed", "3", "--model", str(model_dir)]
    inputs = [str(folder), str(folder / "sub" / "*.png")]
    assert main(["upscale", *inputs, "-o", str(tmp_path / "cli"), *common]) == 1
    capsys.readouterr()
    assert main(["upscale", *inputs, "-o", str(tmp_path / "ray"), *common, "--ray", "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert "cannot read" in captured.err and "broken.png" in captured.err and "1 input(s) failed" in captured.err
    uris = [f"file://{item}" for item in inputs]
    assert main(["upscale", *uris, "-o", f"file://{tmp_path / 'uri'}", *common, "--ray", "--workers", "1"]) == 1
    assert "cannot read file://" in capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == ["a.png", "b.png", "c.png.png", "c.webp.png", "d.png"]
    for job in ("ray", "uri"):
        assert sorted(p.name for p in (tmp_path / job).iterdir()) == names, job  # no temporary file left either
        for name in names:
            assert (tmp_path / job / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), (job, name)


@pytest.mark.slow
def test_a_batch_job_never_writes_over_its_inputs_nor_follows_links_out(cluster, model_dir, tmp_path, capsys):
    """The reported commands: the input folder as the output folder with --overwrite, and a link to a file
    outside the input folder; the batch job plans as the command line does (idm_rt.file_jobs)."""
    same, outside = tmp_path / "same", tmp_path / "private.png"
    same.mkdir()
    picture(8, 10, 0).save(same / "a.png")
    picture(8, 10, 1).save(outside)
    os.symlink(outside, same / "link.png")
    before = {p: p.read_bytes() for p in (same / "a.png", outside)}
    common = ["--scale", "2", "--seed", "0", "--model", str(model_dir), "--ray", "--workers", "1"]
    assert main(["upscale", str(same), "-o", str(same), "--overwrite", *common]) == 1
    err = capsys.readouterr().err
    assert f"{same / 'a.png'} is an input" in err and "link.png" in err and "leads out of its folder" in err
    assert {p: p.read_bytes() for p in before} == before and sorted(p.name for p in same.iterdir()) == [
        "a.png",
        "link.png",
    ]
    assert main(["upscale", str(same), "-o", str(tmp_path / "out"), "--follow-links", *common]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "link.png"]  # named after the link


@pytest.mark.slow
def test_a_batch_job_killed_halfway_finishes_only_the_rest_when_rerun(cluster, model_dir, tmp_path, capsys):
    src, out, n = tmp_path / "in", tmp_path / "out", 6
    src.mkdir()
    for i in range(n):
        picture(40, 40, i).save(src / f"im{i}.png")
    args = [
        "upscale",
        str(src),
        "-o",
        str(out),
        "--scale",
        "2",
        "--steps",
        "16",
        "--seed",
        "0",
        "--model",
        str(model_dir),
        "--ray",
        "--workers",
        "1",
    ]
    cpus = ray.available_resources().get("CPU", 0)
    env = {**os.environ, "RAY_ADDRESS": cluster, "PYTHONPATH": str(ROOT)}  # joins this module's cluster
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "idm_rt", *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            deadline = time.monotonic() + 180
            while not list(out.glob("*.png")) and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            job.kill()
            job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, (tmp_path / "job.log").read_text()[-3000:]
    deadline = time.monotonic() + 60  # its worker dies with it: wait until its CPU is free again
    while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.2)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert 0 < len(before) < n, before
    assert main(args) == 0
    assert f"skipped {len(before)} input(s) whose output exists" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert sorted(after) == [f"im{i}.png" for i in range(n)]
    assert all(after[name] == mtime for name, mtime in before.items())  # the first run's outputs untouched
    assert Image.open(out / "im0.png").size == (80, 80)


@pytest.mark.slow
def test_a_killed_batch_job_leaves_no_ray_process_behind(model_dir, tmp_path):
    """kill -9 of a ``--ray`` command that started its own Ray: every process of that instance (GCS, raylet,
    agents, workers) stops and its files go (Ray's agents otherwise stay orphaned and listening for minutes)."""
    from idm_rt.ray_local import session_processes

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        picture(40, 40, i).save(src / f"im{i}.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    cmd = [
        sys.executable,
        "-m",
        "idm_rt",
        "upscale",
        str(src),
        "-o",
        str(tmp_path / "out"),
        "--scale",
        "2",
        "--steps",
        "200",
        "--model",
        str(model_dir),
        "--ray",
        "--workers",
        "1",
    ]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = ""
        while "local Ray instance" not in line and job.poll() is None:
            line = job.stderr.readline()
        temp = line.split("files in ", 1)[1].split(")", 1)[0]
        deadline = time.monotonic() + 120
        raylet = []
        while not raylet and time.monotonic() < deadline:  # the head's processes carry the instance's folder
            raylet = [p for p in os.listdir("/proc") if p.isdigit() and "raylet" in _cmdline(p) and temp in _cmdline(p)]
            time.sleep(0.2)
        session = int(open(f"/proc/{raylet[0]}/stat").read().rsplit(")", 1)[1].split()[3])
        while not any("ray::" in _cmdline(str(p)) for p in session_processes(session)):  # workers are up
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(2)
    finally:
        job.kill()
        job.wait(timeout=60)
    deadline = time.monotonic() + 60
    while (session_processes(session) or os.path.exists(temp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session_processes(session), [_cmdline(str(p))[:60] for p in session_processes(session)]
    assert not os.path.exists(temp)


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_the_serve_command_says_where_it_listens_and_stops_on_sigterm(model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray on 127.0.0.1
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "idm_rt",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--address",
        "local",
        "--replica-cpus",
        "0.5",
    ]
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if get(f"http://127.0.0.1:{port}/healthz", timeout=5)[0] == 200:
                        break
                except OSError:  # not listening yet
                    pass
                time.sleep(0.5)
            code = post(f"http://127.0.0.1:{port}/v1/upscale?scale=2&seed=0", GOOD)[0]
            get(f"http://127.0.0.1:{port}/nope")
            slow = {}
            flying = threading.Thread(
                target=lambda: slow.update(
                    r=post(f"http://127.0.0.1:{port}/v1/upscale?scale=2&seed=1&steps=2000", GOOD, timeout=120)
                )
            )
            flying.start()
            time.sleep(2)  # in flight
            proc.send_signal(signal.SIGTERM)
            time.sleep(2)  # the command notices within 0.5 s and tells the frontend
            late = post(f"http://127.0.0.1:{port}/v1/upscale?scale=2&seed=2", GOOD)[0]
            flying.join(timeout=120)
            returncode = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (tmp_path / "serve.log").read_text()
    assert code == 200, text[-3000:]
    assert slow["r"][0] == 200, (slow, text[-3000:])  # the request in flight at SIGTERM is answered
    assert late == 503, text[-3000:]  # while draining, new ones are refused
    assert returncode == 0, text[-3000:]
    assert "draining" in text and "graceful_shutdown failed" not in text, text[-3000:]
    assert '"GET /nope" 404' in text, text[-3000:]  # the access log names the path asked for
    assert f"serving {model_dir} on http://127.0.0.1:{port}" in text and "idm-rt: stopping" in text
