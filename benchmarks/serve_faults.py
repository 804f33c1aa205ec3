"""A node lost under load: the service and a batch job on a Ray cluster of two nodes on this machine (a head and a
worker node, each its own raylet, started with Ray's own multi-node utility ``ray.cluster_utils.Cluster``), the
worker node killed halfway.

* Service: ``replicas`` workers spread over both nodes (one CPU each, one CPU per node), the frontend on the head;
  ``clients`` threads post small images without pause; after ``warmup`` answers the worker node is killed
  (SIGKILL of its raylet and everything on it). Counted: requests sent, answered (200), retried by the frontend on
  the surviving worker, failed (anything else), and the time from the kill to the first answer to a request sent
  after it.
* Batch job: ``python -m idm_rt upscale DIR -o OUT --ray --workers 2`` on the same cluster, the worker node killed
  once the first output exists; the job must finish with every output present once, within one 8-bit level of
  the in-process upscale with the same seed (computed at a worker's one thread), and no temporary file left.

    python -m benchmarks.serve_faults                    # benchmarks/scratch/serve_faults.json
    python -m benchmarks.serve_faults --replace          # benchmarks/results/serve_faults.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idm_rt.ray_session import free_port

from .common import TINY_CONFIG, add_replace_argument, write

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 300
WARMUP_LIMIT_S = 300


def picture(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def post(url: str, body: bytes, timeout: float) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1  # no answer at all


def service_under_node_loss(
    cluster, worker_node, model: str, clients: int, warmup: int, after_s: float, steps: int
) -> dict:
    """The service part (see the module's docstring)."""
    from ray import serve

    from idm_rt.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    serve.run(
        build_app(
            {
                "model": model,
                "replicas": 2,
                "replica_cpus": 1,
                "timeout_s": 60,
                "max_batch": 4,
                "max_client_requests": 64,
                "frontend_resources": {"head": 0.01},  # the frontend beside the proxy: the worker node is lost
            }
        ),
        name="faults",
        route_prefix="/",
        blocking=False,
    )
    url = f"http://127.0.0.1:{port}/v1/upscale?scale=2&steps={steps}"
    body = png(picture(32, 40, 0))
    log: list[tuple[float, float, int]] = []
    stop, lock = threading.Event(), threading.Lock()

    def client(c: int) -> None:
        k = 0
        while not stop.is_set():
            t0 = time.monotonic()
            status = post(f"{url}&seed={c * 100_000 + k}", body, timeout=120)
            with lock:
                log.append((t0, time.monotonic(), status))
            k += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        # the kill waits for ``warmup`` answers and for both workers to have answered (the frontend's router may
        # send the first requests of a busy machine to one of them), at most WARMUP_LIMIT_S
        deadline, before = time.monotonic() + WARMUP_LIMIT_S, {}
        while time.monotonic() < deadline:
            if sum(s == 200 for *_, s in log) >= warmup:
                before = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30).read())
                if before["batching"]["replicas_answering"] >= 2:
                    break
            time.sleep(0.2)
        killed = time.monotonic()
        cluster.remove_node(worker_node, allow_graceful=False)
        time.sleep(after_s)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
    described = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30).read())
    serve.delete("faults")
    after = [(t0, t1, s) for t0, t1, s in log if t0 > killed]
    in_flight = [(t0, t1, s) for t0, t1, s in log if t0 <= killed < t1]
    first_ok = min((t1 for t0, t1, s in after if s == 200), default=None)
    # (one CPU per node, one per worker: the two workers that answered before the kill ran on both nodes)
    return {
        "workers_answering_before_kill": before.get("batching", {}).get("replicas_answering", 0),
        "requests_sent": len(log),
        "answered": sum(s == 200 for *_, s in log),
        "failed": sum(s != 200 for *_, s in log),
        "failed_statuses": sorted({s for *_, s in log if s != 200}),
        "retried_by_frontend": described["requests"].get("retried", 0),
        "in_flight_at_kill": len(in_flight),
        "in_flight_answered": sum(s == 200 for *_, s in in_flight),
        "sent_after_kill": len(after),
        "answered_after_kill": sum(s == 200 for *_, s in after),
        "recovery_s": None if first_ok is None else round(first_ok - killed, 2),
        "slowest_request_s": round(max(t1 - t0 for t0, t1, _ in log), 2),
    }


def batch_job_under_node_loss(cluster, worker_node, model: str, images: int, steps: int, work: Path) -> dict:
    """The batch-job part (see the module's docstring)."""
    import idm_rt

    src, out = work / "in", work / "out"
    src.mkdir()
    for i in range(images):
        picture(48, 48, 1000 + i).save(src / f"im{i:02d}.png")
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "idm_rt",
        "upscale",
        str(src),
        "-o",
        str(out),
        "--scale",
        "2",
        "--steps",
        str(steps),
        "--seed",
        "7",
        "--model",
        model,
        "--ray",
        "--workers",
        "2",
    ]
    start = time.monotonic()
    with open(work / "job.log", "w") as log:
        job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while job.poll() is None and not list(out.glob("*.png")):
                time.sleep(0.05)
            killed_after = len(list(out.glob("*.png")))
            cluster.remove_node(worker_node, allow_graceful=False)
            returncode = job.wait(timeout=JOB_TIMEOUT_S)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    up = idm_rt.Upscaler.from_pretrained(model)
    names = sorted(p.name for p in out.iterdir())
    want = [f"im{i:02d}.png" for i in range(images)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker of one CPU computes (float sums can round otherwise at another count)
    try:
        levels = [
            _levels_apart(
                Image.open(out / n), up.upscale(Image.open(src / n), scale=2, steps=steps, seed=7, progress=False)
            )
            for n in want
            if (out / n).exists()
        ]
    finally:
        torch.set_num_threads(threads)
    return {
        "images": images,
        "outputs_when_node_killed": killed_after,
        "returncode": returncode,
        "outputs": len(names),
        "outputs_as_expected": names == want,
        "outputs_equal_in_process": sum(d == 0 for d in levels),
        "outputs_within_one_level_of_in_process": sum(d <= 1 for d in levels),
        "max_level_difference": max(levels, default=None),
        "seconds": round(time.monotonic() - start, 1),
        "log_tail": (work / "job.log").read_text()[-1500:],
    }


def _levels_apart(a: Image.Image, b: Image.Image) -> int:
    """The largest difference between two images' 8-bit values."""
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def tiny_model(path: Path) -> str:
    """A small random network: the faults are the subject, not the pictures."""
    import idm_rt

    torch.manual_seed(0)
    model = idm_rt.IDM(TINY_CONFIG, max_scale=4.0)
    model.recommended = idm_rt.SamplingSettings(sampler="dpmpp_2m", steps=2)
    idm_rt.save_model(model, path)
    return str(path)


def run(
    clients: int = 2, warmup: int = 10, after_s: float = 20.0, steps: int = 20, images: int = 10, batch_steps: int = 100
) -> dict:
    """Both parts, each on a fresh two-node cluster."""
    import ray
    from ray.cluster_utils import Cluster

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "model")
        for part in ("service", "batch_job"):
            head = {"num_cpus": 1, "include_dashboard": False, "resources": {"head": 1}}
            cluster = Cluster(initialize_head=True, head_node_args=head)
            worker = cluster.add_node(num_cpus=1)
            ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
            try:
                if part == "service":
                    results[part] = service_under_node_loss(cluster, worker, model, clients, warmup, after_s, steps)
                else:
                    work = Path(tmp) / "job"
                    work.mkdir()
                    results[part] = batch_job_under_node_loss(cluster, worker, model, images, batch_steps, work)
            finally:
                ray.shutdown()
                cluster.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--after-s", type=float, default=20.0, help="load kept up after the node is killed")
    ap.add_argument("--images", type=int, default=10, help="images of the batch job")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    results = run(clients=args.clients, after_s=args.after_s, images=args.images)
    print(json.dumps(results, indent=2))
    print(f"written to {write('serve_faults', results, 'serve_faults', args.replace)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
