"""``python -m training.train``: train an IDM model.

Examples:
  python -m training.train --preset small --data ../shared/datasets/train --out runs/small
  python -m training.train --resume --out runs/small          # continue exactly where it stopped
  python -m training.train --config my.json --set steps=20000 network.dropout=0.1
  torchrun --nproc_per_node 4 -m training.train --preset official-scenes-4x --data DIV2K/HR
"""

from __future__ import annotations

import argparse
import signal
import sys

from .config import PRESETS, resolve
from .trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS), help="training recipe (default: small)")
    ap.add_argument("--config", help="JSON file of training options, applied over the preset")
    ap.add_argument("--data", help="folder of HR images (png, jpg, webp; recursive)")
    ap.add_argument("--val-data", help="held-out folder for validation (default: hold out a few of --data)")
    ap.add_argument("--out", help="run folder: checkpoints, log.csv, val/ grids")
    ap.add_argument("--steps", type=int, help="total optimizer steps")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override any option, e.g. batch=16 network.dropout=0.1")
    args = ap.parse_args(argv)
    overrides = list(args.set)
    for key, value in (("data", args.data), ("val_data", args.val_data), ("out", args.out), ("steps", args.steps)):
        if value is not None:
            overrides.append(f"{key}={value}" if key == "steps" else f'{key}="{value}"')
    try:
        cfg = resolve(args.preset, args.config, overrides)
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Ctrl-C, and SIGTERM from schedulers, save a checkpoint before exiting (also when started in the
    # background, where SIGINT would otherwise be ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
