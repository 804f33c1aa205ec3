"""Seeded fuzz test of ``Upscaler.upscale`` and the ``upscale`` command.

Hundreds of random, adversarial but small inputs go to a tiny random model: images of every kind
(PIL in every mode, numpy and torch of many dtypes, shapes, strides and values, lists, batches,
non-images), odd keyword values, and for the command line garbage files, odd options and odd
output paths. Each case must end in a correct output (kind, type, shape, dtype and mode as
``Upscaler.upscale`` documents them) or a ``ValueError``/``TypeError`` with a message, raised by
idm_rt itself; the command must exit 0 having written what it says, or exit non-zero (2 for
argparse) with ``error: ...`` lines, no traceback, and no file touched that it did not write.

The cases run in a child process (``python -m tests.test_fuzz``) whose address space is capped
(RLIMIT_AS: its size after start-up plus :data:`MEMORY_HEADROOM`) and whose every case is bounded
in time: a soft limit raises inside the case, a hard one (faulthandler) ends the process, and the
case it was on is reported. Reproduce a failure with the command the report prints, e.g.
``IDM_RT_FUZZ_SEED=7 IDM_RT_FUZZ_CASE=api:17 python -m tests.test_fuzz``, which runs that case alone
and shows its traceback. ``IDM_RT_FUZZ_SEED`` also picks the seed of the pytest run.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fractions
import hashlib
import io
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("IDM_RT_FUZZ_SEED", "1"))  # 1: on the code before its fixes it hit each defect
# this fuzzing found in upscale and the command (negative-bit views, scale 1e308, sampler arrays, broadcast views)
API_CASES, CLI_CASES = 250, 60
SOFT_TIMEOUT_S, HARD_TIMEOUT_S = 30, 60  # per case; generous, the machine may be busy
MEMORY_HEADROOM = 3 * 2**30  # bytes of address space the cases may add to the child's start-up size
MAX_PIXELS = 20_000  # the Upscaler's output limit: outputs stay small, larger asks must be refused
PACKAGE = ROOT / "idm_rt"


# ---------------------------------------------------------------------------------------------------------------
# the test (parent process)


def test_fuzz_upscale_and_cli(tmp_path: Path) -> None:
    """Every case of the seeded run gives a correct output or a clear error (see the module docstring)."""
    report = tmp_path / "report.jsonl"
    env = {
        **os.environ,
        "IDM_RT_FUZZ_SEED": str(SEED),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("IDM_RT_FUZZ_CASE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_fuzz", "--report", str(report), "--work", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20 * 60,
    )
    records = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    done = [r for r in records if "outcome" in r]
    failures = [r for r in done if r["outcome"] == "FAIL"]
    started = [r for r in records if "started" in r]
    if proc.returncode != 0 and not failures:
        last = started[-1]["started"] if started else "(none)"
        raise AssertionError(
            f"the fuzz process ended with status {proc.returncode} during case {last} "
            f"(seed {SEED}; {reproduce(last)}):\n{proc.stderr[-4000:]}"
        )
    assert not failures, f"{len(failures)} fuzz case(s) failed (seed {SEED}):\n\n" + "\n\n".join(
        f"{r['case']}: {r['description']}\n  -> {r['detail']}\n  reproduce: {reproduce(r['case'])}"
        for r in failures[:10]
    )
    assert len(done) == API_CASES + CLI_CASES, proc.stderr[-4000:]
    outcomes = [r["outcome"] for r in done]
    # the draw is not degenerate: both correct outputs and refusals are exercised
    assert outcomes.count("ok") >= 60 and sum(o.startswith("error") for o in outcomes) >= 60, outcomes


def reproduce(case: str) -> str:
    return f"IDM_RT_FUZZ_SEED={SEED} IDM_RT_FUZZ_CASE={case} python -m tests.test_fuzz"


# ---------------------------------------------------------------------------------------------------------------
# shared bits: validity flags, descriptions, outcome checks


def combine(*flags: bool | None) -> bool | None:
    """False if any part is invalid, else None if any is unsure, else True."""
    if any(f is False for f in flags):
        return False
    return None if any(f is None for f in flags) else True


class CaseFailed(Exception):
    """The case's outcome is wrong (a wrong output, an unclear or wrong kind of error)."""


class CaseTimeout(BaseException):
    """The soft per-case time limit passed (a BaseException: the command line's catch-alls let it through)."""


def describe(obj: Any, depth: int = 0) -> str:
    """A short, reproducible-enough description of an argument."""
    if isinstance(obj, np.ndarray):
        extra = (
            ""
            if obj.dtype.kind not in "fc" or obj.size == 0
            else f", finite={bool(np.isfinite(obj).all())}, range=[{np.nanmin(obj):.3g}, {np.nanmax(obj):.3g}]"
        )
        return (
            f"{type(obj).__name__}(shape={obj.shape}, dtype={obj.dtype.str}, strides={obj.strides}, "
            f"writeable={obj.flags.writeable}{extra})"
        )
    if isinstance(obj, torch.Tensor):
        flags = [
            f
            for f, on in (
                ("requires_grad", obj.requires_grad),
                ("neg", obj.is_neg()),
                ("contiguous", obj.layout == torch.strided and not obj.is_meta and obj.is_contiguous()),
            )
            if on
        ]
        return f"Tensor(shape={tuple(obj.shape)}, dtype={obj.dtype}, layout={obj.layout}, {'/'.join(flags)})"
    if isinstance(obj, Image.Image):
        info = {k: (v if not isinstance(v, bytes) else f"<{len(v)} bytes>") for k, v in obj.info.items()}
        return f"PIL({obj.mode}, size={obj.size}, info={info}, format={obj.format})"
    if isinstance(obj, (list, tuple)) and depth < 2:
        inner = ", ".join(describe(o, depth + 1) for o in obj[:6])
        return f"{type(obj).__name__}[{inner}{', ...' if len(obj) > 6 else ''}]"
    text = repr(obj)
    return text if len(text) < 80 else text[:77] + "..."


def raised_by_idm_rt(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is idm_rt's own code (not torch, PIL, numpy)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


def check_refusal(error: BaseException) -> str:
    """The outcome label of an exception that is a clear refusal; CaseFailed otherwise."""
    if not isinstance(error, (ValueError, TypeError)):
        raise CaseFailed(f"{error.__class__.__name__}: {error}") from error
    if not str(error).strip():
        raise CaseFailed(f"{error.__class__.__name__} without a message") from error
    if not raised_by_idm_rt(error):
        raise CaseFailed(f"{error.__class__.__name__} from outside idm_rt: {error}") from error
    return f"error:{error.__class__.__name__}"


# ---------------------------------------------------------------------------------------------------------------
# API cases: inputs


@dataclass
class Item:
    """One drawn image (or non-image): the object, whether it is a valid image, and what must come back."""

    obj: Any
    valid: bool | None
    hw: tuple[int, int] | None = None  # the upright size, for valid images
    expect: Callable[[Any, tuple[int, int]], None] | None = None  # checks one output of the given (H, W)


def fail(msg: str) -> None:
    raise CaseFailed(msg)


def expect_numpy(arr: np.ndarray) -> Callable[[Any, tuple[int, int]], None]:
    dtype, ndim, channels = arr.dtype, arr.ndim, arr.shape[2] if arr.ndim == 3 else None

    def check(out: Any, hw: tuple[int, int]) -> None:
        if type(out) is not np.ndarray:
            fail(f"expected a numpy array, got {describe(out)}")
        want = hw if ndim == 2 else (*hw, channels)
        if out.shape != want or out.dtype != dtype:
            fail(f"expected shape {want} dtype {dtype.str}, got {out.shape} {out.dtype.str}")
        if dtype.kind == "f" and (not np.isfinite(out).all() or out.min() < 0 or out.max() > 1):
            fail(f"float output outside [0, 1] or not finite: {describe(out)}")

    return check


def expect_tensor(t: torch.Tensor, batch: int | None = None) -> Callable[[Any, tuple[int, int]], None]:
    dtype, lead = t.dtype, tuple(t.shape[:-2])

    def check(out: Any, hw: tuple[int, int]) -> None:
        if not isinstance(out, torch.Tensor):
            fail(f"expected a tensor, got {describe(out)}")
        want = (*lead, *hw)
        if tuple(out.shape) != want or out.dtype != dtype or out.device != t.device:
            fail(f"expected shape {want} dtype {dtype} on {t.device}, got {describe(out)} on {out.device}")
        if out.requires_grad:
            fail("output requires grad")
        if dtype.is_floating_point:
            f = out.float()
            if not torch.isfinite(f).all() or f.min() < 0 or f.max() > 1:
                fail(f"float output outside [0, 1] or not finite: {describe(out)}")

    return check


# Documented: PIL images come back in their own mode, except "1" (as "L") and "P"/"PA" (RGB, or RGBA
# with transparency).
PIL_BACK = {"1": "L", "PA": "RGBA"}


def expect_pil(im: Image.Image) -> Callable[[Any, tuple[int, int]], None]:
    mode = PIL_BACK.get(im.mode, im.mode)
    if im.mode == "P":
        mode = "RGBA" if im.has_transparency_data else "RGB"

    def check(out: Any, hw: tuple[int, int]) -> None:
        if not isinstance(out, Image.Image):
            fail(f"expected a PIL image, got {describe(out)}")
        if out.mode != mode or out.size != (hw[1], hw[0]):
            fail(f"expected mode {mode} size {(hw[1], hw[0])}, got {out.mode} {out.size}")
        if mode == "F":
            a = np.asarray(out)
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                fail("F output outside [0, 1] or not finite")

    return check


def draw_hw(rng: random.Random, allow_empty: bool = True) -> tuple[int, int]:
    """A small image size, sometimes empty, one pixel, or a long thin strip."""
    r = rng.random()
    if r < 0.06 and allow_empty:
        return rng.choice([(0, 0), (0, 5), (7, 0), (1, 1)])
    if r < 0.12:
        return rng.choice([(1, rng.randint(2, 120)), (rng.randint(2, 120), 1), (2, rng.randint(30, 90))])
    if r < 0.3:
        return rng.randint(2, 40), rng.randint(2, 40)
    return rng.randint(2, 14), rng.randint(2, 14)


def size_ok(hw: tuple[int, int]) -> bool:
    return hw[0] * hw[1] >= 2


def values_ok(arr: np.ndarray) -> bool:
    """Whether pixel values are acceptable (documented: float images finite and in [0, 1], to 1e-3)."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return True
    a = arr.astype(np.float64)
    return bool(np.isfinite(a).all() and a.min() >= -1e-3 and a.max() <= 1 + 1e-3)


NP_DTYPES_OK = ["u1", "u2", ">u2", "<u2", "f2", ">f2", "f4", ">f4", "f8", ">f8"]
NP_DTYPES_BAD = ["i1", "i2", "i4", "i8", "u4", "u8", "?", "c8", "c16", "g", "O", "U2", "M8[s]", "V2", "S1"]


def draw_numpy(rng: random.Random, nrng: np.random.Generator) -> Item:
    hw = draw_hw(rng)
    dtype = np.dtype(rng.choice(NP_DTYPES_OK) if rng.random() < 0.88 else rng.choice(NP_DTYPES_BAD))
    shape_kind = rng.random()
    if shape_kind < 0.35:
        shape, shape_ok = hw, True
    elif shape_kind < 0.9:
        c = rng.choice([1, 2, 3, 3, 4, 4] if rng.random() < 0.9 else [0, 5, 8])
        shape, shape_ok = (*hw, c), 1 <= c <= 4
    else:
        shape = rng.choice([(), (5,), (1, *hw, 3), (2, 2, 2, 2, 2), (*hw, 3, 1)])
        shape_ok = False
    dtype_ok = dtype.str[1:] in {np.dtype(d).str[1:] for d in NP_DTYPES_OK}
    masked = False
    n = int(np.prod(shape))
    if dtype.kind == "u":
        arr = nrng.integers(0, np.iinfo(dtype).max, size=n, endpoint=True, dtype=dtype.newbyteorder("="))
        arr = arr.astype(dtype)
    elif dtype.kind == "f":
        arr = nrng.random(n).astype(dtype)
        if n and rng.random() < 0.15:
            arr[rng.randrange(n)] = rng.choice(
                [np.nan, np.inf, -np.inf, -0.5, 1.5, 255.0, 1 + 5e-4, -5e-4, 1e-40, -0.0]
            )
    else:
        try:
            arr = np.zeros(n, dtype)
        except (TypeError, ValueError):
            arr = np.zeros(n, "i4")
    arr = arr.reshape(shape)
    layout = rng.random()
    if arr.ndim >= 2 and layout < 0.1:
        arr = np.asfortranarray(arr)
    elif arr.ndim >= 2 and layout < 0.2:  # negative strides: the same pixels mirrored
        arr = arr[::-1, ::-1]
    elif arr.ndim >= 2 and layout < 0.3 and arr.shape[1] >= 4:  # every other column
        arr = arr[:, ::2]
    elif arr.ndim >= 2 and layout < 0.35:  # a zero-stride broadcast of one pixel
        arr = np.broadcast_to(arr.reshape(-1)[:1].reshape((1,) * arr.ndim) if arr.size else arr, arr.shape)
    elif layout < 0.42:  # unaligned and read-only
        buf = bytearray(arr.nbytes + 1)
        arr = (
            np.frombuffer(bytes(buf[:1]) + np.ascontiguousarray(arr).tobytes(), arr.dtype, offset=1).reshape(arr.shape)
            if arr.dtype.kind != "O"
            else arr
        )
    elif arr.ndim == 2 and layout < 0.45:
        arr = np.matrix(arr)
    elif layout < 0.48:
        arr, masked = np.ma.masked_array(arr), True  # documented: a TypeError (its mask would be ignored)
    hw = arr.shape[:2] if arr.ndim in (2, 3) else hw
    valid = shape_ok and size_ok(hw) and dtype_ok and not masked and values_ok(np.asarray(arr))
    if valid and arr.ndim in (2, 3):  # np.matrix comes back as a plain 2-D array
        return Item(arr, valid, (arr.shape[0], arr.shape[1]), expect_numpy(np.asarray(arr)))
    return Item(arr, valid)


PIL_MODES_OK = [
    "1",
    "L",
    "P",
    "PA",
    "LA",
    "La",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16B",
    "I;16L",
    "I;16N",
    "F",
]
HIGH_BIT = {"I": "<i4", "I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2", "F": "<f4"}


def draw_pil(rng: random.Random, nrng: np.random.Generator) -> Item:
    hw = draw_hw(rng)
    h, w = hw
    mode = rng.choice(PIL_MODES_OK)
    valid: bool | None = size_ok(hw)
    base = Image.fromarray((nrng.random((max(h, 1), max(w, 1), 4)) * 255).astype(np.uint8), "RGBA").crop((0, 0, w, h))
    if mode in HIGH_BIT:
        g = nrng.random((h, w))
        if mode == "F":
            values = g
            if g.size and rng.random() < 0.2:
                values.flat[rng.randrange(g.size)] = rng.choice([np.nan, 2.0, -1.0, np.inf])
                valid = False
        else:
            values = (g * 65535).astype(np.int64)
            if mode == "I" and g.size and rng.random() < 0.2:
                values.flat[rng.randrange(g.size)] = rng.choice([-1, 70000, -(2**31)])
                valid = False
        im = Image.frombytes(mode, (w, h), values.astype(HIGH_BIT[mode]).tobytes())
    elif mode == "P":
        im = base.convert("RGB").quantize(rng.randint(1, 16)) if h and w else Image.new("P", (w, h))
        if rng.random() < 0.4:
            im.info["transparency"] = rng.choice([0, 1, b"\x00\x80"])
    elif mode in ("PA", "La", "RGBa", "LA", "RGBA"):
        im = base.convert(mode)
    else:
        im = base.convert("RGB").convert(mode)
    orientation = rng.choice([None] * 6 + [1, 2, 3, 4, 5, 6, 7, 8, 0, 9])
    if orientation is not None:
        exif = im.getexif()
        exif[0x0112] = orientation
        im.info["exif"] = exif.tobytes()
        if orientation in (5, 6, 7, 8):
            hw = (w, h)
    if rng.random() < 0.1:  # a lazily read file: decoded inside upscale
        buf = io.BytesIO()
        writable = im.mode if im.mode in ("L", "LA", "RGB", "RGBA", "P", "I;16") else "RGB"
        if not (h and w):
            return Item(im, False)
        valid = size_ok((h, w))  # what the file holds: converted values, all in range
        (im.convert("LA") if im.mode == "La" else im).convert(writable).save(buf, format="PNG")
        data = buf.getvalue()
        if rng.random() < 0.5:  # truncated: Pillow may still read it when only the end is missing
            data, valid = data[: rng.randrange(8, len(data))], None
        try:
            im = Image.open(io.BytesIO(data))
        except Exception:  # noqa: BLE001 (not even a header: a file object, no image)
            return Item(io.BytesIO(data), False)
        hw = (h, w)
    return Item(im, valid, hw, expect_pil(im) if valid is not False else None)


TORCH_OK = [torch.uint8, torch.uint16, torch.float16, torch.bfloat16, torch.float32, torch.float32, torch.float64]
TORCH_BAD = [
    torch.bool,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint32,
    torch.complex64,
    torch.float8_e4m3fn,
]


def draw_tensor(rng: random.Random, nrng: np.random.Generator, batch: bool = False) -> Item:
    hw = draw_hw(rng)
    dtype = rng.choice(TORCH_OK) if rng.random() < 0.88 else rng.choice(TORCH_BAD)
    c = rng.choice([1, 2, 3, 3, 4] if rng.random() < 0.9 else [0, 5, 6])
    if batch:
        n = rng.choice([1, 2, 3] if rng.random() < 0.9 else [0])
        shape: tuple[int, ...] = (n, c, *hw)
        shape_ok = 1 <= c <= 4 and n >= 1
    else:
        r = rng.random()
        shape, shape_ok = (
            ((*hw,), True)
            if r < 0.3
            else ((c, *hw), 1 <= c <= 4)
            if r < 0.92
            else (rng.choice([(), (5,), (1, 1, 3, *hw), (hw[0] + 5, hw[1], 3)]), False)
        )
    x = torch.from_numpy(nrng.random(shape).astype(np.float32))
    if dtype.is_floating_point and x.numel() and rng.random() < 0.12:
        x.view(-1)[rng.randrange(x.numel())] = rng.choice([math.nan, math.inf, -0.5, 2.0, -1e-4])
    if dtype in (torch.uint8, torch.uint16):
        x = (x * (255 if dtype == torch.uint8 else 65535)).round().to(torch.int32)
    t = x.to(dtype) if dtype != torch.float8_e4m3fn else x.to(torch.float32).to(dtype)
    view = rng.random()
    if view < 0.1 and dtype.is_floating_point:
        t.requires_grad_(True)
    elif view < 0.2 and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, column-major
    elif view < 0.27 and t.dim() >= 2 and t.shape[-1] >= 4:
        t = t[..., ::2]
    elif view < 0.32 and batch:
        t = t.contiguous(memory_format=torch.channels_last)
    elif view < 0.4 and t.dtype == torch.float32 and t.numel():  # a view with the negative bit, same values
        t = torch.complex(torch.zeros_like(t), -t).conj().imag
    elif view < 0.45 and t.numel() and t.dim() >= 1:  # a zero-stride expansion of one pixel
        t = t.reshape(-1)[:1].reshape((1,) * t.dim()).expand(t.shape)
    hw = tuple(t.shape[-2:]) if t.dim() >= 2 else hw
    floats = t.detach().resolve_neg().double().numpy() if dtype in TORCH_OK and dtype.is_floating_point else None
    valid = shape_ok and size_ok(hw) and dtype in TORCH_OK and (floats is None or values_ok(floats))
    if valid and (t.dim() in (2, 3) or batch):
        return Item(t, valid, (t.shape[-2], t.shape[-1]), expect_tensor(t))
    return Item(t, valid)


NON_IMAGES = [
    None,
    5,
    2.5,
    "photo.png",
    b"\x89PNG\r\n",
    Path("photo.png"),
    {"image": 1},
    {1, 2},
    object(),
    Image,
    np,
    range(3),
    np.float32(0.5),
    torch.float32,
]


def draw_huge_view(rng: random.Random) -> Item:
    """A zero-stride view declaring far more pixels than it holds (one value): it must be refused, unread."""
    h, w = rng.choice([(30_000, 30_000), (1, 10**9), (10**6, 3)])
    if rng.random() < 0.5:
        return Item(np.broadcast_to(np.uint8(7), (h, w, 3)), False)
    return Item(torch.full((3, 1, 1), 0.5).expand(3, h, w), False)


def draw_item(rng: random.Random, nrng: np.random.Generator) -> Item:
    r = rng.random()
    if r < 0.02:
        return draw_huge_view(rng)
    if r < 0.36:
        return draw_numpy(rng, nrng)
    if r < 0.68:
        return draw_pil(rng, nrng)
    if r < 0.95:
        return draw_tensor(rng, nrng)
    return Item(rng.choice(NON_IMAGES), False)


@dataclass
class Drawn:
    """An ``upscale`` argument and how to check what comes back."""

    image: Any
    items: list[Item]
    pack: str  # "one" | "list" | "batch"
    valid: bool | None


def draw_image_argument(rng: random.Random, nrng: np.random.Generator) -> Drawn:
    r = rng.random()
    if r < 0.6:
        item = draw_item(rng, nrng)
        return Drawn(item.obj, [item], "one", item.valid)
    if r < 0.72:
        item = draw_tensor(rng, nrng, batch=True)
        if item.valid is False:
            return Drawn(item.obj, [item], "batch", item.valid)
        n = item.obj.shape[0]
        items = [Item(None, True, item.hw, expect_tensor(item.obj[0])) for _ in range(n)]
        return Drawn(item.obj, items, "batch", item.valid)
    if r < 0.97:
        items = [draw_item(rng, nrng) for _ in range(rng.choice([0, 1, 2, 2, 2, 3, 3, 4]))]
        if rng.random() < 0.05:
            items.append(Item([items[0].obj] if items else [], False))  # a nested list
        seq = [i.obj for i in items]
        return Drawn(
            tuple(seq) if rng.random() < 0.2 else seq,
            items,
            "list",
            combine(*(i.valid for i in items)) if items else False,
        )
    gen = (i for i in [np.zeros((4, 4), np.uint8)])
    return Drawn(gen, [Item(gen, False)], "one", False)


# ---------------------------------------------------------------------------------------------------------------
# API cases: keyword arguments


def pick(rng: random.Random, good: list, bad: list, p_bad: float = 0.1) -> tuple[Any, bool | None]:
    """A value from ``good`` (valid) or, with probability ``p_bad``, from ``bad`` (invalid)."""
    if rng.random() < p_bad:
        return rng.choice(bad), False
    return rng.choice(good), True


SCALES_OK = [1.5, 2, 2, 2.5, 3, 3.3, 4, np.float32(2.5), np.float64(1.7), fractions.Fraction(5, 2), 1.2]
SCALES_BAD = [
    1,
    1.0,
    0.5,
    0,
    -2,
    math.nan,
    math.inf,
    -math.inf,
    True,
    "2",
    1e308,
    1e20,
    2 + 0j,
    np.array(2.0),
    torch.tensor(2.0),
    [2],
    np.float64("nan"),
    None,
]


def draw_scale_size(rng: random.Random, items: list[Item]) -> tuple[dict, bool | None]:
    """``scale=`` or ``size=`` (or both or neither), and whether they are valid for every image."""
    sizes = [i.hw for i in items if i.hw is not None]
    r = rng.random()
    if r < 0.62:
        scale, ok = pick(rng, SCALES_OK, SCALES_BAD, 0.1)
        if scale is None:
            return {}, False
        if not ok:
            return {"scale": scale}, False
        outs = [(round(h * float(scale)), round(w * float(scale))) for h, w in sizes]
        fits = all(o != hw and o[0] * o[1] <= MAX_PIXELS for o, hw in zip(outs, sizes))
        return {"scale": scale}, fits
    if r < 0.92:
        h, w = sizes[0] if sizes else (8, 8)
        good = rng.random() < 0.85
        if good:
            size: Any = (w + rng.randint(0, 30), h + rng.randint(1, 30))
            if rng.random() < 0.2:
                size = [np.int64(size[0]), np.uint16(size[1])]
            outs_ok = (
                all(size[1] >= hh and size[0] >= ww and (int(size[1]), int(size[0])) != (hh, ww) for hh, ww in sizes)
                and int(size[0]) * int(size[1]) <= MAX_PIXELS
            )
            return {"size": size}, outs_ok
        size = rng.choice(
            [
                (w,),
                (0, 0),
                (-1, h + 1),
                (w + 1.5, h + 2),
                f"{w + 2}x{h + 2}",
                {w + 3, h + 4},
                (True, h + 3),
                (2**70, 2),
                (w, h),
                (w + 5, h - 1),
                np.array([w + 2, h + 2]),
                (10**6, 10**6),
            ]
        )
        return {"size": size}, False
    if r < 0.96:
        return {"scale": 2, "size": (40, 40)}, False
    return {}, False


STEPS_OK, STEPS_BAD = [None, 1, 1, 2, np.int64(1)], [0, -1, 2001, True, 1.5, "1", 10**18, np.float64(1.0)]
SAMPLERS_OK, SAMPLERS_BAD = (
    [None, None, "dpmpp_2m", "ddim", "ddpm"],
    ["euler", "", "DDIM", 5, ["ddim"], np.array(["ddim"]), b"ddim"],
)
# "estimate" needs an encoder trained as an HR estimate; the fuzz model's is a nearest one: refused
INITS_OK, INITS_BAD = [None, None, "noise", "bicubic"], ["zeros", 1, ["noise"], "Noise", "estimate"]
LEVELS_OK = [None, 0.5, 0.9, 0.01, 0.999, np.float32(0.3), fractions.Fraction(1, 3)]
LEVELS_BAD = [0, 1, 1.5, -0.1, math.nan, math.inf, "0.5", True]
CONSISTENCY_OK, CONSISTENCY_BAD = [None, None, 0, 1, 2], [-1, 101, 1.5, True, "1", 10**12]
ETA_OK, ETA_BAD = [None, 0.0, 0.5, 1, np.float64(0.3)], [-0.1, 1.5, math.nan, "0.5", True, 1j]
TILE_OK, TILE_BAD = [None, None, 0, 16, 24, 64, 512, 10**12, np.int64(32)], [-1, 5, 1.5, "16", True, [16]]
SEED_OK, SEED_BAD = [None, None, 0, 7, 2**63 - 1, np.int64(3), np.uint8(9)], [-1, 2**63, 1.5, "1", [None], math.nan]


def draw_kwargs(rng: random.Random, drawn: Drawn) -> tuple[dict, bool | None]:
    kwargs, flags, steps_ok = {}, [], True
    for name, good, bad in (
        ("steps", STEPS_OK, STEPS_BAD),
        ("sampler", SAMPLERS_OK, SAMPLERS_BAD),
        ("init", INITS_OK, INITS_BAD),
        ("init_level", LEVELS_OK, LEVELS_BAD),
        ("back_projection", CONSISTENCY_OK, CONSISTENCY_BAD),
        ("eta", ETA_OK, ETA_BAD),
        ("tile", TILE_OK, TILE_BAD),
    ):
        value, ok = pick(rng, good, bad, 0.04)
        if value is not None or rng.random() < 0.3:
            kwargs[name] = value
        flags.append(ok)
        steps_ok = ok if name == "steps" else steps_ok
    if kwargs.get("sampler") == "ddim" and steps_ok and kwargs.get("steps") in (None, 1):
        if rng.random() < 0.8:
            kwargs["steps"] = 2
        else:
            flags.append(False)  # ddim's grid needs two steps at least (the Upscaler's default is 1)
    r = rng.random()
    n = len(drawn.items) if drawn.pack != "one" else 1
    if r < 0.1:
        kwargs["seed"] = [rng.randrange(100) for _ in range(n)]
        flags.append(True)
    elif r < 0.13:
        kwargs["seed"] = [rng.randrange(100) for _ in range(n + rng.choice([-1, 1]))] if n else [1]
        flags.append(False if n != 1 or len(kwargs["seed"]) != 1 else True)
    else:
        value, ok = pick(rng, SEED_OK, SEED_BAD, 0.04)
        if value is not None:
            kwargs["seed"] = value
        flags.append(ok)
    scale_size, ok = draw_scale_size(rng, drawn.items)
    kwargs.update(scale_size)
    flags.append(ok)
    return kwargs, combine(*flags)


# ---------------------------------------------------------------------------------------------------------------
# API cases: running and checking


def fingerprint(obj: Any) -> Any:
    """What must not change when an input is upscaled (numpy/torch values, PIL pixels and info); views
    declaring millions of pixels are left out (reading them is what the upscaler must not do)."""
    if isinstance(obj, (np.ndarray, torch.Tensor)) and math.prod(obj.shape) > 10**6:
        return ("huge", tuple(obj.shape))
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "uif":
        return ("np", obj.shape, obj.dtype.str, np.asarray(obj).tobytes())
    plain = isinstance(obj, torch.Tensor) and obj.layout == torch.strided and not obj.is_meta
    if plain and obj.dtype.is_floating_point:
        return ("torch", tuple(obj.shape), obj.detach().resolve_neg().float().contiguous().numpy().tobytes())
    if plain and obj.dtype in (torch.uint8, torch.uint16):
        return ("torch", tuple(obj.shape), obj.detach().to(torch.int32).contiguous().numpy().tobytes())
    if isinstance(obj, Image.Image) and obj.format is not None:  # read from a file: loaded on first use
        return ("pil file", obj.mode, obj.size)
    if isinstance(obj, Image.Image):
        return ("pil", obj.mode, obj.size, obj.tobytes(), sorted(obj.info))
    if isinstance(obj, (list, tuple)):
        return [fingerprint(o) for o in obj]
    return None


def check_api_output(out: Any, drawn: Drawn, kwargs: dict) -> None:
    """The output is what ``upscale``'s docstring promises for this input."""

    def hw_out(hw: tuple[int, int]) -> tuple[int, int]:
        if "scale" in kwargs:
            s = float(kwargs["scale"])
            return round(hw[0] * s), round(hw[1] * s)
        return int(kwargs["size"][1]), int(kwargs["size"][0])

    if drawn.pack == "one":
        item = drawn.items[0]
        item.expect(out, hw_out(item.hw))
    elif drawn.pack == "list":
        if type(out) is not list or len(out) != len(drawn.items):
            fail(f"expected a list of {len(drawn.items)}, got {describe(out)}")
        for item, o in zip(drawn.items, out):
            item.expect(o, hw_out(item.hw))
    else:
        t = drawn.image
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            fail(f"expected a batch tensor, got {describe(out)}")
        hw = hw_out(drawn.items[0].hw)
        want = (t.shape[0], t.shape[1], *hw)
        if tuple(out.shape) != want or out.dtype != t.dtype or out.requires_grad:
            fail(f"expected a batch {want} of {t.dtype}, got {describe(out)}")
        for o in out:
            drawn.items[0].expect(o, hw)


def api_case(seed: int, index: int) -> tuple[str, Callable[[Any], str]]:
    """(description, run(upscaler) -> outcome label) of API case ``index``."""
    rng = random.Random(f"{seed}:api:{index}")
    nrng = np.random.default_rng(rng.randrange(2**32))
    drawn = draw_image_argument(rng, nrng)
    kwargs, args_valid = draw_kwargs(rng, drawn)
    valid = combine(drawn.valid, args_valid)
    text = (
        f"upscale({describe(drawn.image)}, {', '.join(f'{k}={describe(v)}' for k, v in kwargs.items())})"
        f" [expected: {({True: 'output', False: 'refusal', None: 'either'})[valid]}]"
    )

    def run(up: Any) -> str:
        before = fingerprint(drawn.image)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on experimental dtypes and layouts
                out = up.upscale(drawn.image, progress=False, **kwargs)
        except (CaseTimeout, MemoryError):
            raise
        except Exception as e:
            label = check_refusal(e)
            if valid:
                raise CaseFailed(f"a valid call was refused: {e.__class__.__name__}: {e}") from e
            return label
        if valid is False:
            fail(f"an invalid call was not refused; it returned {describe(out)}")
        check_api_output(out, drawn, kwargs)
        if fingerprint(drawn.image) != before:
            fail("the input was changed")
        return "ok"

    return text, run


# ---------------------------------------------------------------------------------------------------------------
# CLI cases


def png_bytes(h: int, w: int, mode: str = "RGB", fmt: str = "PNG", exif: int | None = None) -> bytes:
    """A real image file's bytes."""
    arr = (np.random.default_rng(h * 131 + w).random((h, w, 4)) * 255).astype(np.uint8)
    im = (
        Image.fromarray(arr, "RGBA").convert("RGB").convert(mode)
        if mode not in ("LA", "RGBA")
        else Image.fromarray(arr, "RGBA").convert(mode)
    )
    if mode == "I;16":
        im = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    if mode == "F":
        im = Image.fromarray(arr[..., 0].astype(np.float32) / 255, "F")
    buf = io.BytesIO()
    kw = {}
    if exif is not None:
        e = im.getexif()
        e[0x0112] = exif
        kw["exif"] = e
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header declaring ``width`` x ``height`` RGB pixels, with a few bytes of data: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@dataclass
class InputFile:
    name: str
    data: bytes | None  # None: a folder of that name
    valid: bool | None
    hw: tuple[int, int] | None = None  # upright size


def draw_input_file(rng: random.Random, index: int) -> InputFile:
    r = rng.random()
    h, w = rng.randint(2, 12), rng.randint(2, 12)
    if r < 0.75:
        fmt, suffix, mode = rng.choice(
            [
                ("PNG", ".png", "RGB"),
                ("PNG", ".png", "L"),
                ("PNG", ".png", "RGBA"),
                ("PNG", ".png", "LA"),
                ("PNG", ".png", "P"),
                ("PNG", ".png", "I;16"),
                ("PNG", ".png", "1"),
                ("JPEG", ".jpg", "RGB"),
                ("JPEG", ".jpeg", "L"),
                ("JPEG", ".jpg", "CMYK"),
                ("WEBP", ".webp", "RGBA"),
                ("BMP", ".bmp", "RGB"),
                ("TIFF", ".tif", "F"),
                ("TIFF", ".tiff", "I;16"),
                ("PNG", ".jpg", "RGB"),
            ]
        )
        orientation = rng.choice([None, None, None, 1, 6, 8, 3]) if fmt in ("JPEG", "PNG") else None
        hw = (w, h) if orientation in (6, 8) else (h, w)
        return InputFile(f"in{index}{suffix}", png_bytes(h, w, mode, fmt, orientation), True, hw)
    good = png_bytes(h, w)
    bad = rng.choice(
        [
            ("trunc.png", good[: rng.randrange(1, len(good))]),  # Pillow reads some (only the end chunk cut)
            ("trunc.jpg", png_bytes(h, w, fmt="JPEG")[: rng.randrange(1, 60)]),
            ("empty.png", b""),
            ("text.png", b"hello, world\n"),
            ("noise.jpg", bytes(rng.randrange(256) for _ in range(200))),
            ("bomb.png", bomb_png(9000, 9000)),
            ("bomb2.png", bomb_png(100_000, 100_000)),
            ("wide.png", bomb_png(2**31 - 1, 1)),
            ("zero.png", bomb_png(0, 0)),
            ("folder.png", None),
        ]
    )
    name = f"{index}-{bad[0]}"
    if bad[0] == "trunc.png":
        return InputFile(name, bad[1], None, (h, w))
    return InputFile(name, bad[1], False)


CLI_OPTIONS: list[tuple[str, list[str], list[str]]] = [
    # (option, valid values, invalid values); "" is the flag without a value
    ("--steps", ["1", "2"], ["0", "-1", "2001", "x", "1.5", ""]),
    ("--sampler", ["dpmpp_2m", "ddpm"], ["euler", ""]),
    ("--seed", ["0", "123", "9223372036854775807"], ["-1", "1e3", "9223372036854775808"]),
    ("--tile", ["0", "16", "64", "100000"], ["-8", "4", "x"]),
    ("--init", ["bicubic", "noise"], ["zeros", "estimate"]),  # estimate: not with the fuzz model's encoder
    ("--init-level", ["0.5", "0.9"], ["0", "1", "nan", "-inf", "x"]),
    ("--back-projection", ["0", "1"], ["-1", "101", "1.5"]),
    ("--threads", ["1"], ["0", "-2", "many"]),
    ("--max-pixels", ["20000", "2e4"], ["0", "-5", "inf", "nan", "1.5", "lots"]),
    ("--device", ["cpu"], ["cuda", "cuda:7", "gpu", "meta", ""]),
    ("--precision", ["fp32"], ["fp16", "bf16", "int8"]),
    ("--max-scale", ["4"], ["0.5", "nan", "inf", "-3", "x"]),
    ("--backend", ["torch"], ["onnxruntime-x"]),
]
CLI_SCALES_OK, CLI_SCALES_BAD = ["2", "1.5", "3.3", "2e0"], ["1", "0.5", "-2", "nan", "inf", "1e308", "x", "0x2", ""]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUTPUT_SUFFIXES = [".png", ".png", ".jpg", ".webp", ".bmp", ".tif", ".PNG", ".jpeg"]


@dataclass
class CliCase:
    argv: list[str]
    valid: bool | None
    files: list[InputFile]
    expect_hw: dict[str, tuple[int, int]] = field(default_factory=dict)  # input name -> output (H, W)
    pre_existing: dict[str, bytes | None] = field(default_factory=dict)  # paths made before the run


def draw_cli(rng: random.Random, index: int, model: str) -> CliCase:
    files = [draw_input_file(rng, k) for k in range(rng.choice([1, 1, 1, 2, 3]))]
    flags: list[bool | None] = []
    r = rng.random()
    if r < 0.08:  # a glob: the .png files
        inputs = ["*.png"]
        used = [f for f in files if f.name.endswith(".png") and f.data is not None]
    elif r < 0.14:  # the folder: its image files
        inputs = ["."]
        used = [f for f in files if f.name.endswith(IMAGE_SUFFIXES) and f.data is not None]
    else:
        inputs, used = [f.name for f in files], list(files)
        if rng.random() < 0.1:
            inputs.append("missing.png")
            flags.append(False)
    flags += [f.valid for f in used] if used else [False]
    several = len(inputs) > 1 or inputs[0] in ("*.png", ".")
    pre: dict[str, bytes | None] = {}
    o = rng.random()
    if several and inputs[0] in ("*.png", "."):  # nothing beside the inputs that they would pick up
        out = rng.choice(["outdir", "new/deeper"])
    elif o < 0.45:
        out = f"out{rng.choice(OUTPUT_SUFFIXES)}"
        flags.append(False if several else True)
    elif o < 0.55:
        out = "outdir"
        if rng.random() < 0.5:
            pre["outdir"] = None  # an existing folder
    elif o < 0.67:
        out = rng.choice(["exists.png", "exists.jpg"])
        pre[out] = b"keep me"
        if several:
            flags.append(False)
        elif rng.random() < 0.5:
            flags.append(False)  # never overwritten without --overwrite
        else:
            out += "\0overwrite"
    elif o < 0.75:
        out = rng.choice(["out.xyz", "out.gif", "out.png.tmp", "out."])
        flags.append(None if several or out == "out." else False)
    elif o < 0.82:
        out = "notadir.txt/out.png" if not several else "notadir.txt/sub"
        pre["notadir.txt"] = b"a file"
        flags.append(False)
    elif o < 0.88:
        out = "dir.png"
        pre["dir.png"] = None  # a folder with an image suffix
    elif o < 0.95:
        out = "new/deeper/out.png" if not several else "new/deeper"
    else:
        out = rng.choice(["out put \u00e9.png", "-o.png"])
        flags.append(None)
    out, _, overwrite = out.partition("\0")
    argv = ["upscale", *inputs, "-o", out, "--model", model] + (["--overwrite"] if overwrite else [])
    scale: float | None = None
    size: tuple[int, int] | None = None
    how = rng.random()
    if how < 0.7:
        value, ok = pick(rng, CLI_SCALES_OK, CLI_SCALES_BAD, 0.12)
        argv += ["--scale", value]
        flags.append(ok)
        scale = float(value) if ok else None
    elif how < 0.92:
        good = rng.random() < 0.8
        value = (
            f"{rng.randint(24, 40)}x{rng.randint(24, 40)}"
            if good
            else rng.choice(["0x0", "axb", "99999x99999", "-5x5", "1e3x5", "20", "20x20x20", ""])
        )
        argv += ["--size", value]
        flags.append(good)
        size = (int(value.split("x")[0]), int(value.split("x")[1])) if good else None
    else:
        argv += rng.choice([[], ["--scale", "2", "--size", "30x30"]])
        flags.append(False)
    for opt, good, bad in CLI_OPTIONS:
        if rng.random() < 0.15:
            value, ok = pick(rng, good, bad, 0.25)
            if value == "" and rng.random() < 0.5:
                argv.append(opt)  # no value at all
                ok = False
            else:
                argv += [opt, value]
            if (opt, value) in (("--device", ""), ("--device", "cuda"), ("--device", "cuda:7")):
                ok = None if value == "" or torch.cuda.is_available() else False
            flags.append(ok)
    if "--threads" not in argv:
        argv += ["--threads", "1"]
    if torch.cuda.is_available() and any(a.startswith("cuda") for a in argv):
        flags.append(None)  # half precision and CUDA devices work there
    expect: dict[str, tuple[int, int]] = {}
    for f in used:
        if f.valid and f.hw is not None and (scale or size):
            h, w = f.hw
            expect[f.name] = (round(h * scale), round(w * scale)) if scale else (size[1], size[0])
    return CliCase(argv, combine(*flags), files, expect, pre)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: (sha256, mtime_ns)."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli_case(seed: int, index: int, work: Path, model: Path) -> tuple[str, Callable[[Any], str]]:
    """(description, run(_) -> outcome label) of command-line case ``index``."""
    rng = random.Random(f"{seed}:cli:{index}")
    case = draw_cli(rng, index, str(model))
    folder = work / f"cli-{index}"
    files_text = ", ".join(f"{f.name}({'folder' if f.data is None else f'{len(f.data)} bytes'})" for f in case.files)
    text = (
        f"cli {case.argv} with files [{files_text}] and existing {sorted(case.pre_existing)}"
        f" [expected: {({True: 'success', False: 'failure', None: 'either'})[case.valid]}]"
    )

    def run(_: Any) -> str:
        import idm_rt.cli

        folder.mkdir(parents=True, exist_ok=True)
        for f in case.files:
            (folder / f.name).mkdir() if f.data is None else (folder / f.name).write_bytes(f.data)
        for name, data in case.pre_existing.items():
            (folder / name).mkdir() if data is None else (folder / name).write_bytes(data)
        before, model_before = snapshot(folder), snapshot(model)
        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = idm_rt.cli.main(case.argv)
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else 1
                    if rc != 2:
                        fail(f"SystemExit({e.code!r}) other than argparse's 2")
        except (CaseTimeout, MemoryError, CaseFailed):
            raise
        except BaseException as e:
            raise CaseFailed(f"main() raised {e.__class__.__name__}: {e}\n{traceback.format_exc()[-2000:]}") from e
        finally:
            os.chdir(cwd)
        stdout, stderr = out.getvalue(), err.getvalue()
        after = snapshot(folder)
        check_cli_outcome(case, rc, stdout, stderr, before, after, folder)
        if snapshot(model) != model_before:
            fail("the model folder was changed")
        return "ok" if rc == 0 else f"error:exit {rc}"

    return text, run


OS_ERRORS = (
    "OSError",
    "FileExistsError",
    "NotADirectoryError",
    "IsADirectoryError",
    "PermissionError",
    "FileNotFoundError",
)


def check_cli_outcome(
    case: CliCase, rc: int, stdout: str, stderr: str, before: dict, after: dict, folder: Path
) -> None:
    """Exit status, messages and files as the command line promises."""
    both = stdout + stderr
    if "Traceback" in both:
        fail(f"a traceback was printed:\n{both[-2000:]}")
    errors = [line for line in stderr.splitlines() if "error:" in line]
    for line in errors:
        message = line.split("error:", 1)[1].strip()
        if not message:
            fail(f"an empty error line: {line!r}")
        named = [w[:-1] for w in message.replace("(", " ").split() if w.endswith("Error:")]
        if any(n not in OS_ERRORS for n in named):
            fail(f"an internal error reached the user: {line!r}")
    written = {}
    for line in stdout.splitlines():
        if " -> " in line:
            src, rest = line.rsplit(" -> ", 1)
            target, dims = rest.rsplit(" (", 1)
            written[Path(src).name] = (target, tuple(int(v) for v in dims.rstrip(")").split("x")))
    if rc == 0:
        if errors:
            fail(f"exit status 0 with errors: {errors}")
        if case.valid is False:
            fail(f"an invalid command succeeded:\n{both[-2000:]}")
    else:
        if not errors:
            fail(f"exit status {rc} without an 'error:' line:\n{both[-2000:]}")
        if case.valid is True:
            fail(f"a valid command failed with status {rc}:\n{both[-2000:]}")
    for name, (target, (w, h)) in written.items():
        path = folder / target
        try:
            with Image.open(path) as im:
                im.load()
                size = im.size
        except Exception as e:  # noqa: BLE001 (whatever PIL raises: the written file is not an image)
            fail(f"{target} was reported written but cannot be read: {e}")
        if size != (w, h):
            fail(f"{target} is {size}, reported {(w, h)}")
        if name in case.expect_hw and case.expect_hw[name] != (h, w):
            fail(f"{name} came out {(h, w)} (HxW), expected {case.expect_hw[name]}")
    targets = {str((folder / t).resolve().relative_to(folder.resolve())) for t, _ in written.values()}
    for path, state in before.items():
        if after.get(path) != state and not (path in targets and "--overwrite" in case.argv):
            fail(f"{path}, which the command did not write, was {'removed' if path not in after else 'changed'}")
    for path in set(after) - set(before):
        if path not in targets:
            fail(f"{path} was left behind (not a reported output)")


# ---------------------------------------------------------------------------------------------------------------
# the child process


def tiny_upscaler() -> Any:
    """A tiny random model (tests/conftest.py's TINY and ``perturbed``) in an Upscaler with 1 step."""
    import idm_rt

    from .conftest import TINY, perturbed

    torch.manual_seed(0)
    model = perturbed(idm_rt.IDM(TINY, max_scale=4.0))
    model.recommended = idm_rt.SamplingSettings(steps=1)
    return idm_rt.Upscaler(model, sampling=model.recommended, max_pixels=MAX_PIXELS)


def cases(seed: int, work: Path, model: Path) -> list[tuple[str, Callable[[], tuple[str, Callable]]]]:
    """(name, lazy builder) of every case, API first."""
    out = [(f"api:{i}", lambda i=i: api_case(seed, i)) for i in range(API_CASES)]
    return out + [(f"cli:{i}", lambda i=i: cli_case(seed, i, work, model)) for i in range(CLI_CASES)]


def address_space() -> int:
    """This process's address space in bytes (Linux: /proc)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def cap_address_space(extra: int) -> tuple[int, int]:
    """Cap the address space at its present size plus ``extra`` (within the hard limit); the limits before."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = address_space() + extra
    resource.setrlimit(resource.RLIMIT_AS, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    return soft, hard


def limit_memory() -> None:
    """Cap the address space at its present size plus :data:`MEMORY_HEADROOM`."""
    cap_address_space(MEMORY_HEADROOM)


def on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout(f"the case ran past {SOFT_TIMEOUT_S} s")


def run_case(name: str, build: Callable[[], tuple[str, Callable]], up: Any) -> dict:
    """One case, bounded in time, as a report record."""
    try:
        text, run = build()
    except Exception:  # noqa: BLE001 (a bug in the fuzz test itself)
        return {
            "case": name,
            "description": "(could not be drawn)",
            "outcome": "FAIL",
            "detail": f"drawing the case failed: {traceback.format_exc()[-1500:]}",
        }
    faulthandler.dump_traceback_later(HARD_TIMEOUT_S, exit=True)
    signal.setitimer(signal.ITIMER_REAL, SOFT_TIMEOUT_S)
    try:
        outcome, detail = run(up), ""
    except CaseFailed as e:
        outcome, detail = "FAIL", str(e)
    except (CaseTimeout, MemoryError) as e:
        outcome, detail = "FAIL", f"{e.__class__.__name__}: {e}"
    except Exception:  # noqa: BLE001 (a bug in the checks: reported like a failure)
        outcome, detail = "FAIL", f"the check itself raised: {traceback.format_exc()[-1500:]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
    return {"case": name, "description": text, "outcome": outcome, "detail": detail}


def child_main(argv: list[str]) -> int:
    import argparse

    import idm_rt

    ap = argparse.ArgumentParser(description="run the fuzz cases (tests/test_fuzz.py)")
    ap.add_argument("--report", help="JSON lines file to append records to (default: print)")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    seed, only = SEED, os.environ.get("IDM_RT_FUZZ_CASE")
    torch.set_num_threads(1)
    up = tiny_upscaler()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp).resolve()
        model = work / "model"
        idm_rt.save_model(up.model, model)
        signal.signal(signal.SIGALRM, on_alarm)
        limit_memory()
        report = open(args.report, "a") if args.report else None
        failures = 0
        for name, build in cases(seed, work, model):
            if only and name != only:
                continue
            if report:
                report.write(json.dumps({"started": name}) + "\n")
                report.flush()
            if only:  # alone: the description and the whole traceback
                text, run = build()
                print(text)
                print(run(up))
                continue
            record = run_case(name, build, up)
            failures += record["outcome"] == "FAIL"
            if report:
                report.write(json.dumps(record, default=str) + "\n")
                report.flush()
            else:
                print(f"{name} {record['outcome']}: {record['description']} {record['detail']}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"seed {seed}: {failures} failure(s); peak RSS {peak:.0f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))


# ---------------------------------------------------------------------------------------------------------------
# regression tests of what the fuzzing found


def test_a_tensor_view_with_the_negative_bit_is_read_like_its_values() -> None:
    """``x.conj().imag`` of a complex tensor is a lazily negated view; numpy refused it inside upscale."""
    up = tiny_upscaler()
    values = torch.rand(3, 6, 5)
    view = torch.complex(torch.zeros_like(values), -values).conj().imag
    assert view.is_neg() and torch.equal(view, values)
    out = up.upscale(view, scale=2, seed=0, progress=False)
    assert torch.equal(out, up.upscale(values, scale=2, seed=0, progress=False))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 1e308}, "gives an output far above the limit of 20000 pixels"),
        ({"scale": 10**400}, "scale must be a finite number > 1"),
        ({"scale": fractions.Fraction(10**400, 3)}, "scale must be a finite number > 1"),
        ({"scale": 2, "eta": 10**400}, r"eta must be a number in \[0, 1\]"),
        ({"scale": 2, "init": "bicubic", "init_level": -(10**400)}, r"init_level must be a number in \(0, 1\)"),
    ],
)
def test_numbers_too_large_for_a_float_are_refused(kwargs: dict, message: str) -> None:
    """They raised OverflowError from round() or math.isfinite inside upscale."""
    with pytest.raises(ValueError, match=message):
        tiny_upscaler().upscale(np.zeros((4, 4), np.uint8), progress=False, **kwargs)


def test_a_max_scale_too_large_for_a_float_is_refused(tmp_path: Path) -> None:
    """A crafted config.json with "max_scale": 1000...0 (an integer) raised OverflowError while loading."""
    import idm_rt
    from idm_rt.config import check_max_scale

    with pytest.raises(ValueError, match="must be a finite number > 1"):
        check_max_scale(10**400)
    idm_rt.save_model(tiny_upscaler().model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "max_scale": 10**400}))
    with pytest.raises(ValueError, match="max_scale"):
        idm_rt.load_model(tmp_path / "m")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampler": np.array(["ddim"]), "steps": 2}, "unknown sampler"),
        ({"sampler": np.array(["ddim", "ddpm"])}, "unknown sampler"),
        ({"init": np.array(["bicubic"])}, "init must be one of"),
    ],
)
def test_sampler_and_init_must_be_strings(kwargs: dict, message: str) -> None:
    """A one-element numpy array passed the ``in SAMPLERS`` check (== element-wise) and was sampled with;
    a longer one raised numpy's 'truth value of an array is ambiguous'."""
    import idm_rt

    with pytest.raises(ValueError, match=message):
        tiny_upscaler().upscale(np.zeros((4, 4), np.uint8), scale=2, progress=False, **kwargs)
    settings = idm_rt.SamplingSettings(sampler=np.str_("ddim"), steps=2, init=np.str_("bicubic"))
    assert type(settings.sampler) is str and type(settings.init) is str and settings.to_dict()["sampler"] == "ddim"


def test_the_command_line_refuses_an_image_above_max_pixels_before_decoding_it(tmp_path: Path, capsys) -> None:
    """A 236 kB PNG of 9000 x 9000 zeros made ``upscale --max-pixels 1000`` decode 243 MB and convert it
    (4 GB resident) before refusing the output; a header-only one shows the refusal comes before decoding."""
    import idm_rt
    from idm_rt.batch_job import Place
    from idm_rt.cli import main

    (tmp_path / "bomb.png").write_bytes(bomb_png(9000, 9000))
    idm_rt.save_model(tiny_upscaler().model, tmp_path / "m")
    for limit in (["--max-pixels", "1000"], []):  # the default limit, 64e6, is below 81e6 too
        assert (
            main(
                [
                    "upscale",
                    str(tmp_path / "bomb.png"),
                    "-o",
                    str(tmp_path / "out.png"),
                    "--scale",
                    "2",
                    "--model",
                    str(tmp_path / "m"),
                    "--threads",
                    "1",
                    *limit,
                ]
            )
            == 1
        )
        err = capsys.readouterr().err
        assert "image 9000x9000 has more than" in err and "truncated" not in err, err
    with pytest.raises(ValueError, match="image 9000x9000 has more than 1000 pixels"):
        Place(tmp_path / "bomb.png").read(max_pixels=1000)  # the --ray batch job's reader


@contextlib.contextmanager
def address_space_headroom(extra: int = 2**30):
    """The process's address space capped at its present size plus ``extra`` inside the block, so that a
    regression to an allocation sized by a declared shape fails with MemoryError instead of exhausting the machine."""
    soft, hard = cap_address_space(extra)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.broadcast_to(np.uint8(0), (50_000, 50_000, 3)),  # 7.5 GB declared, 1 byte held
        lambda: torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, 50_000, 50_000),
    ],
)
def test_a_broadcast_image_above_max_pixels_is_refused_before_converting(make: Callable[[], Any]) -> None:
    """A zero-stride view declaring 50000 x 50000 pixels was converted to float (28 GB) before the output was
    refused: MemoryError, or the machine's memory exhausted."""
    image, up = make(), tiny_upscaler()
    with address_space_headroom(), pytest.raises(ValueError, match="image 50000x50000 has more pixels than"):
        up.upscale(image, scale=2, progress=False)


def test_a_lazily_opened_image_above_max_pixels_is_refused_before_decoding() -> None:
    """``upscale(Image.open(bomb))`` decoded (and converted) the whole image before refusing the output."""
    up = tiny_upscaler()
    with Image.open(io.BytesIO(bomb_png(9000, 9000))) as im:
        with pytest.raises(
            ValueError,
            match=r"image 9000x9000 has more pixels than the largest output allowed "
            r"\(20000; raise max_pixels",
        ):
            up.upscale(im, scale=2, progress=False)  # before: "cannot read the image (... truncated)", decoded
    assert up.upscale(Image.new("L", (100, 100)), size=(100, 200), progress=False).size == (100, 200)  # 20000


@pytest.mark.parametrize(
    "device, message",
    [
        ("meta", "device 'meta' holds no values"),
        ("foo", "unknown device 'foo'"),
        (None, "unknown device None"),
        ("xla", "device 'xla' cannot be used here"),
    ],
)
def test_an_unusable_device_is_refused_before_the_model_moves(device: Any, message: str) -> None:
    """``Upscaler(model, device="meta")`` moved the caller's model to meta (its weights gone for good) and then
    failed inside torch; unknown device strings raised torch's RuntimeError."""
    import idm_rt

    model = tiny_upscaler().model
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        idm_rt.Upscaler(model, device=device)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # still on the CPU, unchanged


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_pixels": float("nan")}, ValueError, "max_pixels must be an integer >= 1, got nan"),
        ({"max_pixels": "1e6"}, ValueError, "max_pixels must be an integer >= 1"),
        ({"max_pixels": 0}, ValueError, "max_pixels must be an integer >= 1"),
        ({"sampling": {"steps": 1}}, TypeError, "sampling must be a SamplingSettings, got dict"),
        ({"model": "models/face8x"}, TypeError, "model must be an idm_rt.IDM"),
    ],
)
def test_upscaler_arguments_are_checked_when_it_is_made(kwargs: dict, error: type, message: str) -> None:
    """max_pixels=NaN switched the output limit off (every comparison with NaN is false); a dict of sampling
    settings or a path as the model failed later with AttributeError."""
    import idm_rt

    kwargs = {"model": tiny_upscaler().model, **kwargs}
    with pytest.raises(error, match=message):
        idm_rt.Upscaler(**kwargs)


def test_a_config_whose_weight_shapes_overflow_int64_is_refused() -> None:
    """inner_channel 10**9 (a crafted config.json) raised torch's 'numel: integer multiplication overflow'
    from the parameter count meant to refuse it."""
    import dataclasses

    import idm_rt

    from .conftest import TINY

    with pytest.raises(ValueError, match="parameters, above the limit of"):
        idm_rt.IDM(dataclasses.replace(TINY, inner_channel=10**9))


@pytest.mark.parametrize("damage", ["nan", "inf", "int32", "bool", "complex64"])
def test_weights_that_are_not_finite_floats_are_refused_when_loading(tmp_path: Path, damage: str) -> None:
    """A model.safetensors with a NaN tensor loaded and gave all-black images (NaN cast to uint8, with numpy's
    'invalid value encountered in cast'); integer, bool and complex tensors were cast silently."""
    from safetensors.torch import load_file, save_file

    import idm_rt

    idm_rt.save_model(tiny_upscaler().model, tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    key = sorted(state)[3]
    if damage in ("nan", "inf"):
        state[key][0] = float(damage)
    else:
        state[key] = state[key].to(getattr(torch, damage))
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(idm_rt.CheckpointMismatch, match=f"not finite floating-point numbers: \\['{key}'\\]"):
        idm_rt.load_model(tmp_path / "m")


def test_a_network_output_that_is_not_finite_is_an_error_not_a_black_image() -> None:
    """Finite weights of 1e30 overflow to NaN inside the network: upscale returned an all-black image."""
    up = tiny_upscaler()
    with torch.no_grad():
        for p in up.model.parameters():
            p.fill_(1e30)
    with pytest.raises(RuntimeError, match="output holds NaN or infinite values"):
        up.upscale(np.full((6, 6, 3), 128, np.uint8), scale=2, progress=False)


def test_deeply_nested_json_in_a_model_folder_or_an_engine_manifest_is_a_clear_error(tmp_path: Path) -> None:
    """``[[[[...]]]]`` 100000 deep as config.json or manifest.json raised RecursionError from the JSON parser."""
    import idm_rt
    from idm_rt.backends.engine_dir import read_manifest

    idm_rt.save_model(tiny_upscaler().model, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(idm_rt.CheckpointMismatch, match="is not an idm-rt model config"):
        idm_rt.load_model(tmp_path / "m")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "manifest.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(ValueError, match="manifest.json is unreadable"):
        read_manifest(tmp_path / "e")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"denoise_fn.downs.0.weight": 5}, "not named tensors of values: 'denoise_fn.downs.0.weight'"),
        ({"denoise_fn.x.bias": [1.0, 2.0]}, "not named tensors of values: 'denoise_fn.x.bias'"),
        ({7: torch.zeros(1)}, "not named tensors of values: 7"),
        ({"denoise_fn.x.bias": torch.zeros(3).to_sparse()}, "not named tensors of values"),
        ({"denoise_fn.x.bias": torch.empty(3, device="meta")}, "not named tensors of values"),
        ({"denoise_fn.downs.0.weight": torch.zeros(8, 3, 3, 3)}, "cannot infer the network shape"),
        (
            {
                "denoise_fn.downs.0.weight": torch.zeros(0, 3, 3, 3),
                "denoise_fn.condition_scale1.0.weight": torch.zeros(8),
            },
            "cannot infer the network shape",
        ),
    ],
)
def test_crafted_released_checkpoints_are_clear_errors(tmp_path: Path, entry: dict, message: str) -> None:
    """A .pth that ``torch.load(weights_only=True)`` reads may hold ints, lists, int keys, sparse or meta tensors, or
    no levels: they raised AttributeError, NotImplementedError, RuntimeError or ZeroDivisionError."""
    import idm_rt

    torch.save(entry, tmp_path / "x.pth")
    with pytest.raises(idm_rt.CheckpointMismatch, match=message):
        idm_rt.load_model(tmp_path / "x.pth")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    """An ONNX Runtime engine directory of the tiny model (one 32x32 bucket; about 15 s to build)."""
    pytest.importorskip("onnxruntime")
    import idm_rt
    from idm_rt.build import main

    root = tmp_path_factory.mktemp("engines")
    idm_rt.save_model(tiny_upscaler().model, root / "model")
    assert (
        main(
            ["--backend", "onnxruntime", "--tile", "32", "--model", str(root / "model"), "--out", str(root / "engines")]
        )
        == 0
    )
    return root / "engines"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["swapped file", "other network"])
def test_engine_files_that_do_not_match_their_manifest_are_refused_when_loaded(
    engine_dir: Path, tmp_path: Path, damage: str
) -> None:
    """A graph file copied over from another graph (its size recorded), or a manifest whose network has other
    levels than its graphs, failed in the first upscale with KeyError('lr') or KeyError of a table name."""
    import shutil

    import idm_rt

    folder = tmp_path / "e"
    shutil.copytree(engine_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "swapped file":
        shutil.copy(folder / "onnxruntime" / "conditioner.onnx", folder / "onnxruntime" / "encoder.onnx")
        manifest["graphs"]["encoder"]["engine_bytes"] = (folder / "onnxruntime" / "encoder.onnx").stat().st_size
    else:
        manifest["network"]["channel_multiplier"] = [1, 2, 2, 2]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="the files do not match manifest.json"):
        idm_rt.Upscaler.from_engines(folder).upscale(np.zeros((6, 6, 3), np.uint8), scale=2, progress=False)


def fake_checkpoint(root: Path, provenance: Any = None, log: str | None = None) -> Path:
    """A run's ``checkpoints/step_N`` folder holding the tiny model as its EMA weights."""
    import idm_rt

    model = tiny_upscaler().model
    model.provenance = {"recipe": {"batch": 4}, "step": 10} if provenance is None else provenance
    checkpoint = root / "run" / "checkpoints" / "step_00000010"
    idm_rt.save_model(model, checkpoint / "ema")
    if log is not None:
        (root / "run" / "log.csv").write_text(log)
    return checkpoint


@pytest.mark.parametrize(
    "damage, status, message",
    [
        ("weights", 2, "model.safetensors cannot be read"),
        ("provenance", 2, "has no usable provenance"),
        ("log", 0, "log.csv cannot be read"),
    ],
)
def test_bundle_reports_a_damaged_checkpoint_or_log(
    tmp_path: Path, capsys, damage: str, status: int, message: str
) -> None:
    """training.bundle raised CheckpointMismatch for damaged EMA weights, AttributeError or ValueError for odd
    provenance, ValueError or KeyError for a damaged log.csv (which only feeds the training-time estimate)."""
    import idm_rt
    from idm_rt.training.bundle import main

    odd = {"recipe": "lost", "step": 10} if damage == "provenance" else None
    checkpoint = fake_checkpoint(tmp_path, odd, log="step,images_per_s\nx,y\n" if damage == "log" else None)
    if damage == "weights":
        weights = checkpoint / "ema" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    assert main([str(checkpoint), "--out", str(tmp_path / "out")]) == status
    assert message in capsys.readouterr().err
    if status == 0:
        assert idm_rt.load_model(tmp_path / "out").provenance["training_seconds_estimate"] is None


@pytest.mark.parametrize("out", ["file", ".", ""])
def test_bundle_refuses_an_out_that_is_no_folder_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch, capsys, out: str
) -> None:
    """``--out`` naming a file raised FileExistsError after writing the staging folder beside it (left behind);
    ``--out .`` or ``--out ''`` raised pathlib's ValueError ('has an empty name')."""
    from idm_rt.training.bundle import main

    checkpoint = fake_checkpoint(tmp_path / "ck")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    if out == "file":
        (tmp_path / "work" / "file").write_text("mine")
    assert main([str(checkpoint), "--out", out]) == 2
    assert "--out must name a folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == (["file"] if out == "file" else [])


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--json", "data", "--json .*data cannot be written"),
        ("--json", "afile/x.json", "--json .*x.json cannot be written"),
        ("--save-dir", "afile", "--save-dir .*afile is a file"),
        ("--seed", str(2**70), r"--seed must be an integer in \[0, 2\*\*63\)"),
    ],
)
def test_evaluate_refuses_unusable_outputs_and_seeds_before_evaluating(
    tmp_path: Path, capsys, option: str, value: str, message: str
) -> None:
    """These raised IsADirectoryError, FileExistsError, NotADirectoryError or torch's 'Overflow when unpacking
    long long' with a traceback, after (or during) the whole evaluation."""
    import re

    import idm_rt
    from idm_rt.training.evaluate import main

    idm_rt.save_model(tiny_upscaler().model, tmp_path / "m")
    (tmp_path / "data").mkdir()
    Image.fromarray(np.zeros((40, 44, 3), np.uint8)).save(tmp_path / "data" / "a.png")
    (tmp_path / "afile").write_text("mine")
    value = value if option == "--seed" else str(tmp_path / value)
    assert (
        main(
            [
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(tmp_path / "data"),
                "--scales",
                "2",
                "--steps",
                "1",
                "--threads",
                "1",
                option,
                value,
            ]
        )
        == 2
    )
    assert re.search(message, capsys.readouterr().err)
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("threads", ["20000", "10000000000"])
def test_a_thread_count_beyond_any_machine_is_refused(threads: str, capsys, monkeypatch) -> None:
    """--threads 10000000000 raised torch's 'Overflow when unpacking long' with a traceback; --threads 20000
    had torch start 20000 threads at the first parallel op (MemoryError under a 6 GB address-space limit)."""
    from idm_rt import threads as threads_module
    from idm_rt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["upscale", "x.png", "-o", "y.png", "--scale", "2", "--threads", threads])
    assert exit_.value.code == 2 and "--threads: must be an integer in [1, 1024]" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"threads must be an integer in \[1, 1024\]"):
        threads_module.configure_threads(int(threads))
    monkeypatch.setenv("OMP_NUM_THREADS", threads)  # not taken as the default either
    assert threads_module._env_threads() is None


@pytest.mark.slow
@pytest.mark.parametrize("call", ["from_engines", "from_pretrained"])
def test_an_unknown_device_for_engines_is_a_value_error(call: str, engine_dir: Path, tmp_path: Path) -> None:
    """Upscaler.from_engines(folder, device="foo") and from_pretrained(model, backend="onnxruntime", device="foo")
    raised torch's RuntimeError ('Expected one of cpu, cuda, ...') from torch.device."""
    import idm_rt

    with pytest.raises(ValueError, match="unknown device 'foo'"):
        if call == "from_engines":
            idm_rt.Upscaler.from_engines(engine_dir, device="foo")
        else:
            idm_rt.save_model(tiny_upscaler().model, tmp_path / "m")
            idm_rt.Upscaler.from_pretrained(tmp_path / "m", backend="onnxruntime", device="foo")


@pytest.mark.slow
@pytest.mark.parametrize(
    "options,message",
    [
        ({"threads": 10**10}, "runner option threads must be None or an integer"),
        ({"threads": "2"}, "runner option threads must be None or an integer"),
        (
            {"sampling_torch_threads": 0},
            "unknown runner option.s. sampling_torch_threads for onnxruntime; it takes threads",
        ),
    ],
)
def test_onnxruntime_runner_options_are_checked(engine_dir: Path, options: dict, message: str) -> None:
    """threads=10**10 or '2' raised ONNX Runtime's TypeError 'incompatible function arguments'; an option the
    runner does not take (sampling_torch_threads, gone with the torch-free loop) raised a TypeError from its
    constructor."""
    import idm_rt

    with pytest.raises(ValueError, match=message):
        idm_rt.Upscaler.from_engines(engine_dir, runner_options=options).upscale(
            np.zeros((5, 5), np.uint8), scale=2, progress=False
        )


def test_torch_default_dtype_float64_changes_nothing() -> None:
    """With torch.set_default_dtype(torch.float64) (common in scientific code) an upscale at a size not seen
    before raised 'expected scalar type Float but found Double' from grid_sample in the implicit layers."""
    from idm_rt.model.tables import nearest_query

    up, image = tiny_upscaler(), (np.random.default_rng(0).random((7, 9, 3)) * 255).astype(np.uint8)
    want = up.upscale(image, scale=2.3, seed=0, tile=16, progress=False)
    nearest_query.cache_clear()  # the tables of these sizes are computed again, under the float64 default
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = up.upscale(image, scale=2.3, seed=0, tile=16, progress=False)
    finally:
        torch.set_default_dtype(before)
        nearest_query.cache_clear()
    assert np.array_equal(got, want)
