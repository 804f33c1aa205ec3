"""gpu_check's results as Markdown: the verdict, each section's outcome and time, the checks, and one table of
speedups per U-Net call and per image against the release's eager form."""

from __future__ import annotations

import math


def _num(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not math.isnan(v) else "-"


def speedups(rows: list[dict], group: tuple[str, ...], base_prefix: str = "") -> list[dict]:
    """``rows`` with ``speedup`` against the row of their group whose variant is ``release eager fp32``
    (prefixed), NaN where the group has none."""
    out = []
    for r in rows:
        base = next(
            (b["ms"] for b in rows if all(b[k] == r[k] for k in group) and b["variant"].endswith("release eager fp32")),
            math.nan,
        )
        out.append(r | {"speedup": base / r["ms"] if r.get("ms") else math.nan})
    return out


def markdown(results: dict) -> str:
    """The results as Markdown."""
    checks = results.get("checks", [])
    sections = results.get("sections", {})
    lines = [
        f"# gpu_check on {results.get('device', '?')}",
        "",
        f"`{results.get('command', '')}`",
        "",
        ", ".join(f"{k} {results[k]}" for k in ("torch", "cuda", "triton") if results.get(k)) + ", "
        f"preset `{results.get('preset')}` (engines: `{results.get('engine_preset')}`), {results.get('size')} px; "
        f"TF32: cuDNN {results.get('tf32', {}).get('cudnn_allow_tf32')}, "
        f"matmul {results.get('tf32', {}).get('matmul_allow_tf32')}",
        "",
        f"**Verdict: {results.get('verdict', 'incomplete')}** ({sum(c['ok'] for c in checks)} of {len(checks)} "
        "checks passed)",
        "",
        "## Sections",
        "",
        "| section | status | wall s | expected s |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {s.get('status')} | {_num(s.get('wall_s'), '.1f')} | {_num(s.get('expected_s'), '.0f')} |"
        for name, s in sections.items()
    ]
    failed = [v for v in results.get("variants", []) if v.get("status") != "ok"]
    if failed:
        lines += [
            "",
            "## Variants not completed",
            "",
            "| section | variant | status | why |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {v['section']} | {v['variant']} | {v['status']} | {v.get('error') or v.get('reason', '')} |"
            for v in failed
        ]
    lines += ["", "## Checks", "", "| check | rel. error | tolerance | ok |", "| --- | --- | --- | --- |"]
    for c in checks:
        tol = f"{c['tol']:.2e}" + (" (TF32 budget)" if "budget" in c else "")
        lines.append(f"| {c['name']} | {_num(c['rel_err'], '.2e')} | {tol} | {c['ok']} |")
    lines += [
        "",
        "## One U-Net call (batch 1), speedup over the release's eager fp32 call",
        "",
        "| size | variant | ms | speedup |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['size']} | {r['variant']} | {_num(r['ms'], '.3f')} | {_num(r['speedup'], '.2f')}x |"
        for r in speedups(results.get("unet", []), ("size",))
    ]
    lines += [
        "",
        "## One image, speedup over the release's eager fp32 form",
        "",
        "| size | steps | variant | ms | speedup |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['size']} | {r['steps']} | {r['variant']} | {_num(r['ms'], '.1f')} | {_num(r['speedup'], '.2f')}x |"
        for r in speedups(results.get("image", []), ("size", "steps"))
    ]
    lines += [
        "",
        "## Implicit levels (fp32, batch 1, ms)",
        "",
        "| size | level | C | src -> dst | literal torch | refactored torch | fused mlp | fused folded "
        "| fused auto | vs literal | vs refactored |",
        "|" + " --- |" * 11,
    ]
    for r in results.get("levels", []):
        lines.append(
            f"| {r['size']} | {r['level']} | {r['channels']} | {r['src']} -> {r['dst']} | "
            f"{r['literal_torch_ms']:.4f} | {r['refactored_torch_ms']:.4f} | {r['fused_mlp_ms']:.4f} | "
            f"{_num(r.get('fused_folded_ms'), '.4f')} | {r['fused_auto_ms']:.4f} | "
            f"{r['speedup_vs_literal']:.2f}x | {r['speedup_vs_refactored']:.2f}x |"
        )
    backends = results.get("engine_backends", {})
    lines += [
        "",
        f"## Engines (run: {', '.join(backends.get('run', [])) or 'none'}; missing: "
        f"{'; '.join(backends.get('missing', [])) or 'nothing'}), one U-Net call vs ours eager fp32 without TF32",
        "",
        "| size | variant | ms | speedup |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['size']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x |" for r in results.get("engines", [])
    ]
    return "\n".join(lines) + "\n"
