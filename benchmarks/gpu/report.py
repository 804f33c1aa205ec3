"""gpu_check's results as JSON and Markdown tables."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


def markdown(results: dict) -> str:
    """The results as Markdown tables."""
    lines = [f"# gpu_check on {results['device']}", "",
             f"torch {results['torch']}, triton {results['triton']}, preset `{results['preset']}`, "
             f"all checks passed: **{all(c['ok'] for c in results['checks'])}**", "",
             "## Correctness", "", "| check | rel. error | tol | ok |", "| --- | --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['rel_err']:.2e} | {c['tol']:g} | {c['ok']} |" for c in results["checks"]]
    lines += ["", "## Implicit levels (fp32, batch 1, ms)", "",
              "| size | level | C | src -> dst | literal torch | refactored torch | fused mlp | fused folded "
              "| fused auto | vs literal | vs refactored |", "|" + " --- |" * 11]
    for r in results["levels"]:
        lines.append(f"| {r['size']} | {r['level']} | {r['channels']} | {r['src']} -> {r['dst']} | "
                     f"{r['literal_torch_ms']:.4f} | {r['refactored_torch_ms']:.4f} | {r['fused_mlp_ms']:.4f} | "
                     f"{r.get('fused_folded_ms', math.nan):.4f} | {r['fused_auto_ms']:.4f} | "
                     f"{r['speedup_vs_literal']:.2f}x | {r['speedup_vs_refactored']:.2f}x |")
    lines += ["", "## One U-Net call (batch 1)", "", "| size | variant | ms | speedup |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['size']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x |" for r in results["unet"]]
    lines += ["", "## One image, DDIM loop", "", "| size | steps | variant | ms | speedup |", "|" + " --- |" * 5]
    lines += [f"| {r['size']} | {r['steps']} | {r['variant']} | {r['ms']:.1f} | {r['speedup']:.2f}x |"
              for r in results["image"]]
    backends = ", ".join(results.get("engine_backends", [])) or "none installed"
    lines += ["", f"## Engines ({backends}), one U-Net call (batch 1, vs ours eager fp32 without TF32)", "",
              "| size | variant | ms | speedup |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['size']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x |" for r in results["engines"]]
    return "\n".join(lines) + "\n"


def save(results: dict, out_dir: Path) -> None:
    stem = "gpu_check_" + re.sub(r"[^A-Za-z0-9]+", "_", results["device"]).strip("_").lower()
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown(results))


