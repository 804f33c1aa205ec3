"""Every user-facing option, declared once: name, type, bounds, default and help.

The command lines' arguments (:func:`add_arguments`), the service's settings (:mod:`idm_rt.serve`) and the API's
checks (:func:`check`) are made from :data:`OPTIONS`, so that an option cannot be spelled, bounded or defaulted
differently in two places. The validators every check uses are here too (:func:`is_int`, :func:`is_real`).
"""

from __future__ import annotations

import argparse
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")  # no digit separators: '2_0' is not 20
INTEGER = re.compile(r"[+-]?\d+")


def is_int(value: Any) -> bool:
    """An integer (of any integral type), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number (of any real type), not a bool."""
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int or fraction too large for a float
        return False


def parse_number(text: str, kind: type = float) -> int | float:
    """``text`` as a number of ``kind`` the way a person writes one: no digit separators ('1_5' is not 15), no
    hexadecimal, integers without a fraction; ValueError otherwise."""
    if not (INTEGER if kind is int else NUMBER).fullmatch(text.strip()):
        raise ValueError(text)
    return kind(text)


UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,  # Kubernetes' spelling
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
}  # a bare K, M, G as free(1) and docker --memory mean it


def parse_bytes(text: str) -> int:
    """A memory size: a number of bytes, or with a unit (KB, MB, GB, KiB, MiB, GiB; K, M, G and Ki, Mi, Gi binary),
    e.g. 4GiB."""
    number = text.rstrip("BbKkMmGgIi")
    try:
        return int(parse_number(number) * UNITS[text[len(number) :].lower()])
    except (ValueError, KeyError, OverflowError):
        raise ValueError(text) from None


def parse_pixels(text: str) -> int:
    """A pixel count, also written as 64e6."""
    n = parse_number(text)
    if n != int(n):
        raise ValueError(text)
    return int(n)


@dataclass(frozen=True)
class Option:
    """One option: its Python name (the command line's is ``--`` and dashes), its type, bounds and default.

    ``low``/``high`` bound it inclusively, ``above``/``below`` exclusively; ``choices`` lists a string's values;
    ``optional`` allows None (which then means ``default_text``: a rule, not a value); ``rule`` says in words what it
    takes where the bounds alone would say it badly; ``parse`` reads the command line's text (default: a plain
    number of ``kind``)."""

    name: str
    kind: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] | None = None
    optional: bool = False
    default_text: str | None = None
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    rule: str | None = None

    def describe(self) -> str:
        """What a valid value is, in words."""
        if self.rule is not None:
            return self.rule
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a string"
        what = "an integer" if self.kind is int else "a number"
        lower = (
            (f"[{self.low:g}", f">= {self.low:g}")
            if self.low is not None
            else (f"({self.above:g}", f"> {self.above:g}")
            if self.above is not None
            else None
        )
        upper = (
            (f"{self.high:g}]", f"<= {self.high:g}")
            if self.high is not None
            else (f"{self.below:g})", f"< {self.below:g}")
            if self.below is not None
            else None
        )
        if lower and upper:
            return f"{what} in {lower[0]}, {upper[0]}"
        return f"{what} {(lower or upper)[1]}" if lower or upper else what

    def check(self, value: Any, required: bool = False) -> Any:
        """``value`` if it is one this option takes (an int as such, a float as a float), else ValueError naming the
        option, what it takes and what it got; None passes where the option is optional and not ``required``."""
        if value is None and self.optional and not required:
            return None
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is str:
            ok = isinstance(value, str) and (self.choices is None or value in self.choices)
        else:
            ok = is_int(value) if self.kind is int else is_real(value)
            ok = (
                ok
                and (self.low is None or value >= self.low)
                and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above)
                and (self.below is None or value < self.below)
            )
        if not ok:
            raise ValueError(f"{self.name} must be {self.describe()}, got {value!r}")
        return self.kind(value)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def from_text(self, text: str) -> Any:
        """The command line's text as a checked value; argparse's error (with the option's rule) otherwise."""
        try:
            if self.parse is not None:
                value = self.parse(text)
            elif self.kind in (int, float):
                value = parse_number(text, self.kind)
            else:
                value = text
            return self.check(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None

    def add_to(
        self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: Any = None, help: str | None = None
    ) -> None:
        """This option as a command-line argument (a flag for bools); ``default`` and ``help`` override the table's
        where one command differs (e.g. None: the model's own setting)."""
        text = help or self.help
        shown = self.default_text if self.default is None else f"{self.default}"
        if self.kind is bool:
            parser.add_argument(self.flag, action="store_true", help=text)
            return
        extra = {"choices": self.choices} if self.choices else {"type": self.from_text}
        parser.add_argument(
            self.flag,
            default=self.default if default is None else default,
            metavar=self.metavar,
            help=f"{text} (default: {shown})" if shown else text,
            **extra,
        )

    def field(self) -> tuple[Any, Any]:
        """(annotation, field) of this option in a pydantic model (the service's settings)."""
        from pydantic import Field

        bounds = {
            k: v
            for k, v in (("ge", self.low), ("le", self.high), ("gt", self.above), ("lt", self.below))
            if v is not None
        }
        choices = {"pattern": "^(" + "|".join(map(re.escape, self.choices)) + ")$"} if self.choices else {}
        return self.kind | None if self.optional else self.kind, Field(
            self.default, description=self.help, **bounds, **choices
        )


MAX_STEPS = 2000  # the release's own longest loop (DDPM over every timestep)

_OPTIONS = [
    # what an upscale does
    Option(
        "scale",
        float,
        None,
        "magnification, e.g. 4 or 3.3; the output is round(h*s) x round(w*s)",
        above=1,
        optional=True,
    ),
    Option(
        "seed",
        int,
        None,
        "random seed; the same seed gives the same output",
        low=0,
        high=2**63 - 1,
        optional=True,
        default_text="a random one",
        rule="an integer in [0, 2**63)",
    ),
    Option(
        "tile",
        int,
        None,
        "HR tile side for large outputs (0: off); rounded down to the model's size multiple",
        low=0,
        optional=True,
        default_text="the cheapest tiling whose tiles fit the memory; engines: their bucket rule",
    ),
    Option(
        "steps",
        int,
        None,
        f"U-Net calls, 0..{MAX_STEPS} (0: the start image itself, back-projected: the model's "
        "own estimate with init estimate)",
        low=0,
        high=MAX_STEPS,
        optional=True,
        default_text="the model's recommendation",
    ),
    Option(
        "init_level",
        float,
        None,
        "noise level in (0, 1) of a diffused start",
        above=0,
        below=1,
        optional=True,
        default_text="the model's recommendation",
        metavar="G",
    ),
    Option(
        "back_projection",
        int,
        None,
        "passes per step that back-project the estimate onto the input, so that "
        "the output's downscale is close to it (0: off, as in the paper)",
        low=0,
        high=100,
        optional=True,
        default_text="the model's recommendation",
        metavar="N",
    ),
    Option(
        "eta",
        float,
        None,
        "DDIM's stochasticity in [0, 1] (0: deterministic)",
        low=0,
        high=1,
        optional=True,
        default_text="the model's recommendation",
    ),
    # what a process may use
    Option(
        "max_pixels",
        int,
        64_000_000,
        "largest output (and input) accepted, in pixels, e.g. 64e6",
        low=1,
        parse=parse_pixels,
    ),
    Option(
        "max_memory",
        int,
        None,
        "memory a call may plan to use, e.g. 4GiB or 500MB; smaller means smaller tiles",
        low=2**20,
        high=2**50,
        optional=True,
        default_text="half of what the device has",
        parse=parse_bytes,
        metavar="SIZE",
        rule="a number of bytes from 1 MiB (2**20) up to 2**50, e.g. 4GiB",
    ),
    Option(
        "threads",
        int,
        None,
        "torch CPU threads",
        low=1,
        high=1024,
        optional=True,
        metavar="N",
        default_text="the CPUs this process may use, from its CPU affinity and cgroup CPU quota, or "
        "OMP_NUM_THREADS when set",
    ),
    # the service
    Option("replicas", int, 1, "worker replicas, each with its own model", low=1, high=1024),
    Option("replica_cpus", float, 1.0, "CPUs Ray reserves per worker replica (its threads)", above=0, high=1024),
    Option(
        "replica_gpus",
        float,
        None,
        "GPUs per worker replica, fractions too",
        low=0,
        high=64,
        optional=True,
        default_text="1 on a CUDA device, else 0",
    ),
    Option("max_batch", int, 8, "most requests in one network batch (1: no batching)", low=1, high=64),
    Option("batch_wait_ms", float, 10.0, "longest wait for more requests to batch, in ms", low=0, high=10_000),
    Option("max_body_mb", float, 32.0, "largest request body, in MiB", above=0, high=2048),
    Option("max_steps", int, MAX_STEPS, "most sampling steps a request may ask for", low=1, high=MAX_STEPS),
    Option(
        "timeout_s",
        float,
        300.0,
        "per-request time limit in seconds; a 504 after it, and the work stops",
        above=0,
        high=86_400,
    ),
    Option(
        "body_timeout_s",
        float,
        30.0,
        "time to receive a request's body, in seconds; a 408 after it",
        above=0,
        high=3600,
    ),
    Option("max_uploads", int, 64, "bodies received at once, all clients together; 503 beyond", low=1, high=100_000),
    Option(
        "max_client_requests",
        int,
        8,
        "requests one client address may have open at once; 429 beyond",
        low=1,
        high=100_000,
    ),
    Option("max_queued", int, 256, "requests waiting for a worker before 503s", low=1, high=1_000_000),
    Option("port", int, 8000, "port to listen on", low=1, high=65535),
    # batch jobs
    Option(
        "workers",
        int,
        None,
        "Upscaler workers",
        low=1,
        high=100_000,
        optional=True,
        default_text="one per CPU of the cluster, or per GPU with a cuda device",
    ),
    Option(
        "worker_cpus",
        float,
        None,
        "CPUs per worker, its torch threads",
        low=0.01,
        high=1024,
        optional=True,
        default_text="1",
    ),
    Option(
        "worker_gpus",
        float,
        None,
        "GPUs per worker, fractions too",
        low=0,
        high=64,
        optional=True,
        default_text="1 with a cuda device, else 0",
    ),
]
OPTIONS: dict[str, Option] = {o.name: o for o in _OPTIONS}


def check(name: str, value: Any, required: bool = False) -> Any:
    """``value`` checked by option ``name`` (:meth:`Option.check`)."""
    return OPTIONS[name].check(value, required)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, **overrides: dict) -> None:
    """The options ``names`` as arguments of ``parser``; ``overrides[name]`` holds a different ``default`` or
    ``help`` for one of them."""
    for name in names:
        OPTIONS[name].add_to(parser, **overrides.get(name, {}))


def per_image_seeds(seed: int | Sequence[int] | None, n: int) -> list[int] | None:
    """``seed`` (one int for all, or a list of one per image) as one checked int per image; None: unseeded."""
    if seed is None:
        return None
    many = isinstance(seed, (list, tuple))
    if many and len(seed) != n:
        raise ValueError(f"seed lists need one seed per image: got {len(seed)} seeds for {n} image(s)")
    for s in seed if many else [seed]:
        check("seed", s, required=True)
    return [int(s) for s in seed] if many else [int(seed)] * n
