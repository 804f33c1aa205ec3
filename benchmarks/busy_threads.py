"""The README's main command on a machine other work keeps busy: torch's default thread count against one thread.

Each run is ``python -m idm_rt upscale idm_rt/samples/chelsea_128.png --scale 4`` (the bundled model at its
defaults) in a fresh process, timed from start to exit, while ``--loads`` busy-loop processes (started here, at
the benchmark's own priority, and stopped after) compete for the cores. Settings: ``--threads`` the machine's
CPU count, ``--threads 1``, the CPU count with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP's waiting threads sleep
instead of spinning; read when torch starts), and no ``--threads`` (the command's own default, which follows
the load: :func:`idm_rt.threads.spare_threads`). Settings alternate within each round, so that what else runs
on the machine hits them alike; medians of ``--repeats`` rounds, and each median's speed-up over all CPUs'.

    python -m benchmarks.busy_threads [--loads 0,1] [--repeats 3] [--replace]

Writes ``busy_threads.json`` in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import add_replace_argument, write

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "idm_rt" / "samples" / "chelsea_128.png"
CPUS = str(os.cpu_count() or 1)
SETTINGS = {
    f"--threads {CPUS}": (["--threads", CPUS], {}),
    "--threads 1": (["--threads", "1"], {}),
    f"--threads {CPUS}, OMP_WAIT_POLICY=PASSIVE": (["--threads", CPUS], {"OMP_WAIT_POLICY": "PASSIVE"}),
    "default": ([], {}),
}


def run_once(out: Path, args: list[str], env: dict[str, str]) -> float:
    """Seconds from start to exit of one upscale command."""
    cmd = [sys.executable, "-m", "idm_rt", "upscale", str(SAMPLE), "-o", str(out), "--scale", "4", "--overwrite", *args]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True)
    return time.perf_counter() - start


def busy_loops(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin on a core each until stopped."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(load: int, repeats: int, out: Path) -> dict:
    """Per setting: every run's seconds and their median, under ``load`` busy loops."""
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    loops = busy_loops(load)
    try:
        time.sleep(1)  # the loops running before the first run
        for _ in range(repeats):
            for name, (args, env) in SETTINGS.items():
                times[name].append(run_once(out, args, env))
                print(f"load {load}: {name}: {times[name][-1]:.1f} s", flush=True)
    finally:
        for p in loops:
            p.kill()
            p.wait()
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians[f"--threads {CPUS}"]
    return {
        "busy_loops": load,
        "load_average_after": os.getloadavg(),
        "seconds": times,
        "median_s": medians,
        "speedup_vs_all_cpus": {name: base / m for name, m in medians.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", default="0,1", help="numbers of competing busy-loop processes, one row each")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per load (medians reported)")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops the busy loops on the way out
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(int(n), args.repeats, Path(tmp) / "out.png") for n in args.loads.split(",")]
    result = {
        "command_timed": f"python -m idm_rt upscale {SAMPLE.relative_to(ROOT)} -o OUT --scale 4 --overwrite "
        "[--threads N]",
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "rows": rows,
    }
    for row in rows:
        print(
            f"{row['busy_loops']} busy loops: "
            + ", ".join(
                f"{name} {row['median_s'][name]:.1f} s (x{row['speedup_vs_all_cpus'][name]:.2f})" for name in SETTINGS
            )
        )
    print(f"wrote {write('busy_threads', result, 'busy_threads', args.replace)}")
    return result


if __name__ == "__main__":
    main()
