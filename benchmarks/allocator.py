"""The allocator setting (``idm_rt.configure_allocator``) against glibc's default, for our sampling and for
the release-style baseline alike: time, kernel time, page faults and peak memory per image.

Each setting runs in a fresh process (an allocator cannot be unset), which times whole images of the
bundled model's network shape (random weights; the weights change no cost), release-style and ours
interleaved, DDIM with ``--steps`` steps, at one thread by default. Per image it records the wall time,
user and kernel CPU time and minor page faults (getrusage deltas), and the process's peak resident
memory (VmHWM) at the end. Writes ``allocator.json``
in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``).

    python -m benchmarks.allocator --size 512 --steps 3 --repeats 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from .common import add_replace_argument, write


def child(size: int, steps: int, repeats: int, threads: int, allocator: bool) -> dict:
    """Both variants' images in this process, interleaved: medians per image, and the peak memory."""
    import torch

    import idm_rt
    from idm_rt.diffusion import sampler
    from idm_rt.pipeline import super_resolve

    from .release_style import ReleaseStyle
    from .size_scaling import peak_rss_mib

    torch.set_num_threads(threads)
    applied = idm_rt.configure_allocator() if allocator else False
    torch.manual_seed(0)
    model = idm_rt.IDM(idm_rt.preset("small")).eval()
    release = ReleaseStyle(model)
    lr = torch.rand(1, 3, size // 4, size // 4) * 2 - 1
    out = (size, size)
    p = model.scale_fraction(4.0)
    settings = idm_rt.SamplingSettings(sampler="ddim", steps=steps)

    def release_image():
        c = model.encode(lr, out)
        sampler("ddim").run(lambda x, g: release.denoise(x, c, p, g), torch.randn(1, 3, *out), steps)

    variants = {"release_style": release_image, "ours": lambda: super_resolve(model, lr, out, settings, scale=4.0)}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up: the first call of each pays one-time costs
            fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                fn()
                wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
                runs[name].append(
                    {
                        "wall_s": wall,
                        "user_s": after.ru_utime - before.ru_utime,
                        "sys_s": after.ru_stime - before.ru_stime,
                        "minor_faults": after.ru_minflt - before.ru_minflt,
                    }
                )
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    return {
        "allocator": "idm_rt.configure_allocator" if applied else "glibc default",
        "per_image": medians,
        "peak_rss_mib": peak_rss_mib(),
        "runs": repeats,
    }


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="HR output side (4x)")
    ap.add_argument("--steps", type=int, default=3, help="DDIM steps per image")
    ap.add_argument("--repeats", type=int, default=4, help="timed images per variant (medians reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=["glibc", "configured"], help=argparse.SUPPRESS)
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.size, args.steps, args.repeats, args.threads, args.child == "configured")))
        return None
    settings = {}
    for name in ("glibc", "configured"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.allocator",
            "--child",
            name,
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
        ]
        settings[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        for variant, m in settings[name]["per_image"].items():
            print(
                f"{settings[name]['allocator']:28s} {variant:14s} {m['wall_s']:.2f} s (user {m['user_s']:.2f}, "
                f"sys {m['sys_s']:.2f}), {m['minor_faults']:.0f} faults; peak {settings[name]['peak_rss_mib']:.0f}"
                f" MiB",
                flush=True,
            )
    wall = {name: {v: m["wall_s"] for v, m in s["per_image"].items()} for name, s in settings.items()}
    result = {
        "network": "small (the bundled model's shape), random weights",
        "output": f"{args.size}x{args.size}",
        "sampler": f"ddim, {args.steps} steps",
        "threads": args.threads,
        "settings": settings,
        "allocator_gain": {v: wall["glibc"][v] / wall["configured"][v] for v in wall["glibc"]},
        "ours_vs_release": {name: w["release_style"] / w["ours"] for name, w in wall.items()},
    }
    print(f"wrote {write('allocator', result, 'allocator', args.replace)}")
    return result


if __name__ == "__main__":
    main()
