"""Where an upscale's time goes: the pipeline marks its stages with :func:`stage`, and a caller that wants their
times records them with :func:`recording` around the call (benchmarks.stage_profile does).

Off (no recording in this thread or task) a mark costs one context-variable read and returns a shared null context,
so the marks stay in the code that runs, and the profile times that code, not a copy of it. On, each stage keeps its
own time: a stage running inside another (a U-Net call inside the tiles' blending, inside back-projection's noise
conversion) stops the outer one's clock, so the stages add up to the time recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

# The stages idm_rt marks, in the order a profile lists them.
ENCODER_FEATURES = "encoder: LR features"
ENCODER_HR = "encoder: HR part"
ENCODER = "encoder: rest"  # the bicubic upscale added, the parts stitched
CONDITIONING = "conditioning"
UNET = "U-Net"
ENGINE_ARRAYS = "engine: input and output arrays"  # an engine runner's copies and casts around its graph runs
BACK_PROJECTION = "back-projection"
TILES = "tiles: plan and blending"
SAMPLER = "sampler state"  # the start image and the sampler's own arithmetic
STAGES = (ENCODER_FEATURES, ENCODER_HR, ENCODER, CONDITIONING, UNET, ENGINE_ARRAYS, BACK_PROJECTION, TILES, SAMPLER)

_CLOCK: ContextVar[StageClock | None] = ContextVar("idm_rt_stage_clock", default=None)
_OFF = contextlib.nullcontext()
F = TypeVar("F", bound=Callable)


class StageClock:
    """Seconds and entries of each stage, each stage's own time (nested stages stop their parent's clock).

    ``timer`` is the clock read (seconds; ``time.perf_counter`` by default; tests pass a fake one)."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._timer = timer
        self._stack: list[str] = []
        self._mark = timer()

    def _charge(self) -> None:
        now = self._timer()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (its nested stages excepted)."""
        self._charge()
        self._stack.append(name)
        self.calls[name] += 1
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()


def stage(name: str) -> contextlib.AbstractContextManager[None]:
    """The block timed as stage ``name`` by the clock recording in this context; a shared no-op when none is."""
    clock = _CLOCK.get()
    return _OFF if clock is None else clock.stage(name)


def timed(name: str, fn: F) -> F:
    """``fn`` whose every call is marked as stage ``name``."""

    def timed_fn(*args, **kwargs):
        with stage(name):
            return fn(*args, **kwargs)

    return timed_fn  # type: ignore[return-value]


@contextlib.contextmanager
def recording(clock: StageClock | None = None) -> Iterator[StageClock]:
    """Record the stages marked in this thread (or task) within the block into ``clock`` (a new one by default)."""
    clock = StageClock() if clock is None else clock
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)
