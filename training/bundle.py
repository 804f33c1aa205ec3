"""``python -m idm_rt.training.bundle CHECKPOINT``: ship a trained model as the package's default.

Writes the EMA weights of a training checkpoint as float16 safetensors plus config (with the
recipe, step and training time as provenance) to ``idm_rt/weights/default``, where
``Upscaler.from_pretrained()`` finds it, and refuses anything above the 25 MB budget.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import torch

import idm_rt
from idm_rt import DEFAULT_MODEL, sampling

MAX_BYTES = 25 * 1024 * 1024


def training_time(run: Path, batch: int) -> float | None:
    """Seconds spent in optimizer steps, from the run's log (``batch / images_per_s`` per logged
    step, times the steps since the previous row); None without a log."""
    log = run / "log.csv"
    if not log.exists():
        return None
    total, prev = 0.0, 0
    try:
        with log.open() as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                total += (step - prev) * batch / max(float(row["images_per_s"]), 1e-9)
                prev = step
    except (ValueError, KeyError, TypeError, csv.Error, UnicodeDecodeError) as e:  # a damaged or foreign log
        print(f"note: {log} cannot be read ({e.__class__.__name__}: {e}); no training time recorded", file=sys.stderr)
        return None
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m idm_rt.training.bundle", description=__doc__)
    ap.add_argument("checkpoint", type=Path, help="a run's checkpoints/step_N folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--note", default="", help="free text added to the provenance (machine, data, ...)")
    sampling.add_arguments(ap, default="idm_rt.SamplingSettings' (the recommendation stored with the model)")
    args = ap.parse_args(argv)
    try:
        recommended = sampling.from_arguments(args, None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.out.name or (args.out.exists() and not args.out.is_dir()):  # "." or a file: nowhere to stage
        print(f"error: --out must name a folder to write the model into, got {str(args.out)!r}", file=sys.stderr)
        return 2
    ema = args.checkpoint / "ema"
    if not (ema / "model.safetensors").exists():
        print(f"error: {ema} has no model.safetensors (pass a checkpoints/step_N folder)", file=sys.stderr)
        return 2
    try:
        model = idm_rt.load_model(ema)
    except (ValueError, OSError) as e:  # CheckpointMismatch is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        prov = dict(model.provenance)
        batch, step = int(prov.get("recipe", {}).get("batch", 1)), int(prov.get("step", 0))
    except (TypeError, AttributeError, ValueError) as e:
        print(f"error: {ema / 'config.json'} has no usable provenance (recipe.batch, step): {e}", file=sys.stderr)
        return 2
    try:
        model.recommended = recommended.check_for(model.config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = args.checkpoint.parent.parent
    seconds = training_time(run, batch)
    prov.update(
        {
            "weights": "EMA",
            "source_checkpoint": args.checkpoint.name,
            "note": args.note,
            "training_seconds_estimate": seconds,
            "images_seen_per_process": batch * step,
        }
    )
    staging = args.out.with_name(f".{args.out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        idm_rt.save_model(model, staging, dtype=torch.float16, provenance=prov)  # (removed again if it fails)
    except OSError as e:
        print(f"error: cannot write {args.out}: {e}; it was left as it was", file=sys.stderr)
        return 1
    size = (staging / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        shutil.rmtree(staging)
        print(f"error: {size / 2**20:.1f} MB is above the 25 MB budget; {args.out} left as it was", file=sys.stderr)
        return 1
    try:
        for name in ("model.safetensors", "config.json"):  # the card and other files in the folder stay
            args.out.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, args.out / name)
    except OSError as e:
        print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {args.out} ({size / 2**20:.1f} MB, step {prov.get('step')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
