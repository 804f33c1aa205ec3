"""The install without torch against one with it: install size, cold start and per-image time.

Two virtual environments are made from this environment's installed distributions (:mod:`benchmarks.installs`:
links, nothing downloaded), with the checkout on PYTHONPATH: ``base``, what ``pip install idm-rt`` installs (no torch:
``import torch`` fails there), and ``torch``, what ``pip install 'idm-rt[torch]'`` installs (this environment's torch,
a CPU build). Install size: the bytes each one's distributions installed into site-packages (MB = 10^6 bytes; the
serve extra's too), their largest, and what idm-rt itself ships of the bundled model.

Three contestants, each at ``--threads 1``:

* ``torch-free``: the base install, the bundled model's shipped ONNX graphs on ONNX Runtime (what the README's
  main command runs without torch);
* ``engine runner, torch imported``: the same graphs with ``--engines`` in the install with torch (the command
  line imports torch there, to set its threads);
* ``torch backend``: the install with torch, the bundled model in torch (its default there).

Cold start: ``python -m idm_rt upscale IN -o OUT --scale 4 --seed 0 --threads 1`` timed from process start to exit.
Per-image time: one process per contestant loads its Upscaler once (``ready_s``: process start to ready), upscales
one untimed image, then the timed ones. Runs alternate between the contestants within each round, so that what else
runs on the machine hits them alike; medians of ``--repeats`` rounds (0: sizes only). Jobs: the README's main job
(the 128x128 sample at 4x, 512x512) and a 1-megapixel output (the sample resized to 256x256, at 4x: 1024x1024). Each
contestant's default tiling: engines by their bucket rule (idm_rt.buckets), the torch backend by memory.

    python -m benchmarks.torch_free [--repeats 3] [--replace]

Writes ``torch_free.json`` in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from .common import add_replace_argument, summary, write
from .installs import clean_env, closure, closure_bytes, linked_venv, requirements

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "idm_rt" / "samples" / "chelsea_128.png"
WEIGHTS = ROOT / "idm_rt" / "weights" / "default"
ENGINES = WEIGHTS / "onnxruntime"  # the shipped graphs
# contestant -> (venv, upscale options besides the common ones, the Upscaler its worker loads)
CONTESTANTS = {
    "torch-free": ("base", [], "idm_rt.Upscaler.from_pretrained()"),
    "engine runner, torch imported": ("torch", ["--engines", "{engines}"], "idm_rt.Upscaler.from_engines({engines!r})"),
    "torch backend": ("torch", [], "idm_rt.Upscaler.from_pretrained()"),
}
JOBS = {"main job: 128x128 sample at 4x (512x512)": "sample.png", "1 MP: 256x256 at 4x (1024x1024)": "sample_256.png"}

# A contestant's worker: loads its Upscaler, says "ready", then upscales the image of every line it reads at 4x and
# answers the seconds (the first answer also says whether torch is imported, and the tile chosen).
WORKER = """
import json, sys, time
import idm_rt
idm_rt.configure_threads(1)
idm_rt.configure_allocator()
from PIL import Image
up = {load}
print("ready", flush=True)
for line in sys.stdin:
    image = Image.open(line.strip())
    size = (4 * image.height, 4 * image.width)
    start = time.perf_counter()
    up.upscale(image, scale=4, seed=0, progress=False)
    print(json.dumps({{"s": time.perf_counter() - start, "torch": "torch" in sys.modules,
                      "tile": up.choose_tile(size)}}), flush=True)
"""


def install_sizes() -> dict:
    """MB each install's distributions put into site-packages, the largest of them, and the bundled model's files."""
    mb = lambda n: round(n / 1e6, 1)
    out = {}
    for name, extras in (("base", ()), ("base + serve", ("serve",)), ("torch", ("torch",))):
        sizes = closure_bytes(closure(requirements(*extras)))
        out[name] = {
            "site_packages_mb": mb(sum(sizes.values())),
            "distributions": len(sizes),
            "largest_mb": {k: mb(v) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]) if v >= 5e6},
        }
    folder_mb = lambda d: mb(sum(f.stat().st_size for f in d.rglob("*") if f.is_file()))
    out["idm_rt ships"] = {
        "bundled weights (model.safetensors)": mb((WEIGHTS / "model.safetensors").stat().st_size),
        "bundled ONNX graphs (weights/default/onnxruntime)": folder_mb(ENGINES),
    }
    return out


def make_venvs(folder: Path) -> dict[str, Path]:
    """The pythons of the base install and the install with torch, made in ``folder``."""
    return {
        name: linked_venv(folder / name, closure(requirements(*extras)))
        for name, extras in (("base", ()), ("torch", ("torch",)))
    }


def cold_starts(
    venvs: dict[str, Path], engines: str, inputs: dict[str, Path], out: Path, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds from start to exit of the upscale command, per job and contestant, alternating."""
    times = {job: {name: [] for name in CONTESTANTS} for job in JOBS}
    for _ in range(repeats):
        for job in JOBS:
            for name, (venv, extra, _) in CONTESTANTS.items():
                cmd = [
                    str(venvs[venv]),
                    "-m",
                    "idm_rt",
                    "upscale",
                    str(inputs[job]),
                    "-o",
                    str(out / "cold.png"),
                    "--scale",
                    "4",
                    "--seed",
                    "0",
                    "--threads",
                    "1",
                    "--overwrite",
                    *[a.format(engines=engines) for a in extra],
                ]
                start = time.perf_counter()
                subprocess.run(cmd, cwd=out, env=clean_env(), check=True, capture_output=True)
                times[job][name].append(time.perf_counter() - start)
    return times


def per_image(venvs: dict[str, Path], engines: str, inputs: dict[str, Path], out: Path, repeats: int) -> dict:
    """Per contestant: seconds to ready, and per job the timed upscales (after an untimed one), alternating."""
    workers, ready = {}, {}
    for name, (venv, _, load) in CONTESTANTS.items():  # one at a time: each start-up alone on the machine
        start = time.perf_counter()
        workers[name] = subprocess.Popen(
            [str(venvs[venv]), "-c", WORKER.format(load=load.format(engines=engines))],
            cwd=out,
            env=clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if workers[name].stdout.readline().strip() != "ready":
            raise RuntimeError(f"{name}: its worker did not start")
        ready[name] = time.perf_counter() - start

    def ask(name: str, image: Path) -> dict:
        workers[name].stdin.write(f"{image}\n")
        workers[name].stdin.flush()
        return json.loads(workers[name].stdout.readline())

    try:
        first = {job: {name: ask(name, inputs[job]) for name in CONTESTANTS} for job in JOBS}  # untimed
        times = {job: {name: [] for name in CONTESTANTS} for job in JOBS}
        for _ in range(repeats):
            for job in JOBS:
                for name in CONTESTANTS:
                    times[job][name].append(ask(name, inputs[job])["s"])
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()
    return {"ready_s": ready, "first": first, "times": times}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.torch_free", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        choices=range(0, 21),
        metavar="N",
        help="timed rounds, 0 to 20 (0: install sizes only; default 3)",
    )
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    sizes = install_sizes()
    print(json.dumps(sizes, indent=2), flush=True)
    result = {"install_mb": sizes}
    if args.repeats:
        result = {
            "note": "a 2-core VM busy with other work (a training run and other developers' tests): medians "
            "of interleaved runs, each at --threads 1; the contestants ran side by side in one run",
            "contestants": {
                name: f"{venv} install: python -m idm_rt upscale IN -o OUT --scale 4 --seed 0 "
                f"--threads 1 {' '.join(extra)}".rstrip()
                for name, (venv, extra, _) in CONTESTANTS.items()
            },
            **result,
            **timings(args.repeats),
        }
    path = write("torch_free", result, "torch_free", args.replace)
    print(f"wrote {path}")
    return 0


def timings(repeats: int) -> dict:
    """Cold starts and per-image times of the contestants, per job."""
    engines = str(ENGINES)
    with tempfile.TemporaryDirectory(prefix="torch_free_") as tmp:
        venvs = make_venvs(Path(tmp) / "venvs")
        work = Path(tmp) / "work"
        work.mkdir()
        inputs = {job: work / name for job, name in JOBS.items()}
        sample = Image.open(SAMPLE).convert("RGB")
        sample.save(inputs[next(iter(JOBS))])
        sample.resize((256, 256), Image.BICUBIC).save(inputs[list(JOBS)[1]])
        cold = cold_starts(venvs, engines, inputs, work, repeats)
        warm = per_image(venvs, engines, inputs, work, repeats)
    jobs = {}
    for job in JOBS:
        jobs[job] = {}
        for name in CONTESTANTS:
            c, w = summary(cold[job][name]), summary(warm["times"][job][name])
            jobs[job][name] = {
                "cold_start": {**c, "all_s": [round(t, 2) for t in cold[job][name]]},
                "per_image": {**w, "all_s": [round(t, 2) for t in warm["times"][job][name]]},
                "start_up_s (cold start median - per-image median)": round(c["median_s"] - w["median_s"], 2),
                "tile": warm["first"][job][name]["tile"],
                "torch_imported": warm["first"][job][name]["torch"],
            }
    print(json.dumps(jobs, indent=2))
    return {"ready_s": {k: round(v, 2) for k, v in warm["ready_s"].items()}, "jobs": jobs}


if __name__ == "__main__":
    sys.exit(main())
