"""``python -m idm_rt.build``: build ONNX Runtime or TensorRT engines. The project's command; the work is
the export package's (:mod:`idm_rt.export.cli`), imported only when it runs."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from .export.cli import main as build
    except ImportError as e:
        if e.name != f"{__package__}.export":  # not the export package's own check (torch, onnx)
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1

    return build(argv)


if __name__ == "__main__":
    sys.exit(main())
