"""Load on ``python -m idm_rt serve``: images per second and latency with 1, 4 and 16 concurrent clients,
Ray Serve batching on and off, 1 and 2 replicas, on local Ray.

Each client posts the same LR crop (of the bundled sample) with its own seeds, one request after the
other; latency is client-side (queueing included), images/s is requests over the wall time of a
round. The replicas share the machine's cores (1 replica: all of them; 2: half each). Rounds repeat
``--repeats`` times, interleaved over the client counts; images/s is the median round, p50/p95 are over
all requests. ``in_process`` is the same model and image in this process, one image after the other,
for scale. Writes ``serve_load.json``
in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``) and ``.md``.

    python -m benchmarks.serve_load                       # bundled model at its defaults, 64x64 at 2x
    python -m benchmarks.serve_load --size 32 --repeats 1 --clients 1,4
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

import idm_rt
from idm_rt.ray_session import free_port

from .common import add_replace_argument, write

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "idm_rt" / "samples" / "chelsea_128.png"


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def load(url: str, body: bytes, clients: int, per_client: int, seed0: int) -> tuple[list[float], float, list[int]]:
    """``clients`` threads each posting ``per_client`` requests in turn: (latencies, wall seconds, batch sizes)."""
    start = threading.Barrier(clients)

    def client(c: int) -> list[tuple[float, int]]:
        start.wait(timeout=120)
        out = []
        for k in range(per_client):
            req = urllib.request.Request(f"{url}&seed={seed0 + c * per_client + k}", data=body, method="POST")
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as r:
                r.read()
                out.append((time.perf_counter() - t0, int(r.headers["X-Batch-Size"])))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = [x for part in pool.map(client, range(clients)) for x in part]
    return [lat for lat, _ in done], time.perf_counter() - t0, [b for _, b in done]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the bundled model, at its recommended sampling)")
    ap.add_argument("--size", type=int, default=64, help="LR crop side (default 64)")
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per round, at least 2 per client (default 16)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds per setting (default 2)")
    ap.add_argument("--max-batch", type=int, default=8, help="batch size limit with batching on (default 8)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--replicas", default="1,2")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    import ray
    from ray import serve

    from idm_rt.serve import build_app

    cores = os.cpu_count() or 1
    clients_list = [int(c) for c in args.clients.split(",")]
    image = Image.open(SAMPLE).convert("RGB").crop((0, 0, args.size, args.size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    body = buffer.getvalue()

    up = idm_rt.Upscaler.from_pretrained(args.model)  # in-process reference, before Ray takes any core
    up.upscale(image, scale=args.scale, seed=0, progress=False)
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        up.upscale(image, scale=args.scale, seed=i, progress=False)
        times.append(time.perf_counter() - t0)
    in_process = {
        "images_per_s": 1 / statistics.median(times),
        "latency_median_s": statistics.median(times),
        "torch_threads": torch.get_num_threads(),
    }
    sampling = up.sampling.to_dict()
    del up

    ray.init(
        num_cpus=cores,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )  # replicas import this checkout
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1/upscale?scale={args.scale:g}"
    rows = []
    try:
        for replicas in [int(r) for r in args.replicas.split(",")]:
            for batching in (True, False):
                settings = {
                    "model": args.model,
                    "replicas": replicas,
                    "replica_cpus": cores / replicas,
                    "max_batch": args.max_batch if batching else 1,
                    "batch_wait_ms": args.batch_wait_ms,
                }
                serve.run(build_app(settings), name="bench", route_prefix="/", blocking=False)
                load(url, body, 2 * replicas, 1, 10**6)  # warm-up: every replica's first call
                rounds: dict[int, list] = {c: [] for c in clients_list}
                for rep in range(args.repeats):
                    for clients in clients_list:
                        per_client = max(2, args.requests // clients)
                        rounds[clients].append(load(url, body, clients, per_client, 10**5 * rep))
                for clients, results in rounds.items():
                    latencies = [lat for lats, _, _ in results for lat in lats]
                    batches = [b for _, _, bs in results for b in bs]
                    rows.append(
                        {
                            "replicas": replicas,
                            "batching": batching,
                            "clients": clients,
                            "images_per_s": statistics.median(len(lats) / wall for lats, wall, _ in results),
                            "p50_s": percentile(latencies, 0.5),
                            "p95_s": percentile(latencies, 0.95),
                            "mean_batch": sum(batches) / len(batches),
                            "requests": len(latencies),
                        }
                    )
                    print(rows[-1], flush=True)
                serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    result = {
        "model": args.model or "bundled default",
        "sampling": sampling,
        "input": f"{args.size}x{args.size}",
        "scale": args.scale,
        "cores": cores,
        "replica_cpus": {r: cores / r for r in {row["replicas"] for row in rows}},
        "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "repeats": args.repeats,
        "in_process": in_process,
        "rows": rows,
    }
    path = write("serve_load", result, "serve_load", args.replace)
    write_markdown(path.with_suffix(".md"), result)
    return result


def write_markdown(path: Path, result: dict) -> None:
    import json

    saved = json.loads(path.with_suffix(".json").read_text())
    m = saved["machine"]
    about = (
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, 1-minute load average at "
        f"the end {m['load_average'][0]:.2f} (other jobs share the machine). Model: {result['model']} "
        f"({result['sampling']}), {result['input']} at "
        f"{result['scale']:g}x. Replicas share the {result['cores']} cores; batching on = at most "
        f"{result['max_batch']} requests, waiting at most {result['batch_wait_ms']:g} ms. In process, one image "
        f"after the other: {result['in_process']['images_per_s']:.2f} images/s "
        f"({result['in_process']['latency_median_s']:.2f} s each)."
    )
    lines = [
        f"# `{saved['command']}`",
        "",
        about,
        "",
        "| replicas | batching | clients | images/s | p50 latency | p95 latency | mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['replicas']} | {'on' if r['batching'] else 'off'} | {r['clients']} | "
            f"{r['images_per_s']:.2f} | {r['p50_s']:.2f} s | {r['p95_s']:.2f} s | {r['mean_batch']:.1f} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
