"""``python -m idm_rt.training.train``: train an IDM model.

Examples:
  python -m idm_rt.training.train --recipe small --data my_photos/ --out runs/small   # any folder of HR photos
  python -m idm_rt.training.train --resume --out runs/small          # continue exactly where it stopped
  python -m idm_rt.training.train --resume --out runs/small --steps 20000   # ... and train longer
  python -m idm_rt.training.train --config my.json --set steps=20000 network.dropout=0.1
  torchrun --nproc_per_node 4 -m idm_rt.training.train --recipe official-scenes-4x --data DIV2K/HR
  python -m idm_rt.training.train --recipe default      # the bundled model's recipe (CPU, several hours)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from idm_rt.memory import configure_allocator
from idm_rt.threads import add_threads_argument

from .config import TrainConfig, recipes, resolve
from .trainer import Trainer

SAVED_CONFIG = "train_config.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m idm_rt.training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--recipe",
        "--preset",
        dest="recipe",
        choices=sorted(recipes()),
        help="training recipe (training/recipes/; --preset is its earlier name): default is the bundled model's, "
        "default-v1 the one "
        "before it, official-face-8x and official-scenes-4x the paper's; small (the default) a "
        "quick CPU-sized run",
    )
    ap.add_argument("--config", help="JSON file of training options, applied over the recipe")
    ap.add_argument("--data", help="folder of HR images (png, jpg, webp; recursive)")
    ap.add_argument("--val-data", help="held-out folder for validation (default: hold out a few of --data)")
    ap.add_argument("--out", help="run folder: checkpoints, log.csv, val/ grids")
    ap.add_argument("--steps", type=int, help="total optimizer steps")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out, with the run's saved options "
        "(OUT/train_config.json) and the changes given here (--steps, --set, --data), or "
        "with --recipe/--config in full; changed options are printed; an error when --out holds no "
        "checkpoint",
    )
    add_threads_argument(ap)  # the threads option
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override any option, e.g. batch=16 network.dropout=0.1",
    )
    args = ap.parse_args(argv)
    overrides = list(args.set)
    for key, value in (
        ("data", args.data),
        ("val_data", args.val_data),
        ("out", args.out),
        ("steps", args.steps),
        ("threads", args.threads),
    ):
        if value is not None:
            overrides.append(f"{key}={value}" if isinstance(value, int) else f'{key}="{value}"')
    configure_allocator()  # the training loop's activations reuse the memory the last step freed
    trainer = None
    try:
        cfg = resolved(args, overrides)
        trainer = Trainer(cfg)
        trainer.fit(resume=args.resume)  # Ctrl-C and SIGTERM stop after a step, with a checkpoint
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a damaged checkpoint (CheckpointError), a full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say_where(trainer)
        return 130
    say_where(trainer)
    return 0


def say_where(trainer: Trainer | None) -> None:
    """The closing line: where the run's last checkpoint is, and how to use its model (rank 0)."""
    if trainer is None or trainer.rank != 0 or not trainer.checkpoints():
        return
    last = trainer.checkpoints()[-1]
    print(
        f"step {trainer.step} of {trainer.cfg.steps}; last checkpoint: {last} (the model: {last / 'ema'}, e.g. "
        f"Upscaler.from_pretrained({str(last / 'ema')!r}) or python -m idm_rt.training.evaluate --model "
        f"{last / 'ema'})"
    )


def resolved(args: argparse.Namespace, overrides: list[str]) -> TrainConfig:
    """The run's options: recipe, --config and overrides. With --resume and no --recipe or --config,
    the options the run saved plus the overrides; either way the changes are printed."""
    given = resolve(args.recipe or "small", args.config, overrides) if args.recipe or args.config else None
    fresh = given or resolve("small", None, overrides)
    saved = Path(fresh.out) / SAVED_CONFIG  # --out, or out= in --set, --config or the recipe
    if not args.resume:
        return fresh
    if not saved.exists():
        raise FileNotFoundError(
            f"nothing to resume: {fresh.out} holds no run (no {SAVED_CONFIG}); check --out, or "
            "drop --resume to start a new run"
        )
    try:  # the saved options are checked with the changes applied: a change can mend an old value
        before = json.loads(saved.read_text())
        cfg = given or resolve(overrides=overrides, base=before)
    except ValueError as e:
        raise ValueError(f"{saved} with the changes given: {e}") from None
    try:  # as the run had them, with this version's defaults for options it did not know
        old = resolve(base=before).to_dict()
    except ValueError:  # an old value that the changes mend
        old = before
    changes = [f"{k} {old[k]!r} -> {v!r}" for k, v in cfg.to_dict().items() if k in old and old[k] != v]
    if changes:
        print("resuming with changed options: " + ", ".join(changes), file=sys.stderr)
    return cfg


if __name__ == "__main__":
    sys.exit(main())
