"""Samplers as small functions of (eps model, x_T, steps), each loop reading like its paper, and one table of them.

``eps_fn(x, g)`` predicts the noise in x at noise level g = sqrt(gamma), g of shape (B,). Every sampler has the one
signature ``sample(eps_fn, x_T, steps, *, schedule, t_start, eta, noise, progress)`` and runs on any array library
(:mod:`idm_rt.arrays`); randomness comes only from ``noise`` (:class:`~idm_rt.arrays.Noise`). :data:`SAMPLERS` says,
for each name, its function, its grid (which raises for a step count it cannot take) and the U-Net calls it makes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..arrays import Array, Noise, full_batch, namespace
from .schedule import LinearSchedule

EpsFn = Callable[[Array, Array], Array]
SCHEDULE = LinearSchedule()


def _progress(it: Iterable, total: int, progress: bool, desc: str) -> Iterable:
    return tqdm(it, total=total, desc=desc, leave=False) if progress else it


def _start(sched: LinearSchedule, t_start: int | None) -> int:
    """The timestep x_T sits at: T-1 (pure noise) unless a diffused start says otherwise."""
    t = sched.timesteps - 1 if t_start is None else t_start
    if not 1 <= t < sched.timesteps:
        raise ValueError(f"start timestep must be in 1..{sched.timesteps - 1}, got {t}")
    return t


def ddpm_step(
    x_t: Array, t: int, eps: Array, z: Array | None, sched: LinearSchedule, t_prev: int | None = None
) -> Array:
    """One ancestral step of the release (Ho et al. 2020, Eq. 7 with the clipped x0 prediction) from
    timestep t to ``t_prev`` (default t - 1, the release's; -1: to the data, ac = 1, no noise added). A longer jump
    is the same step on the respaced schedule ``beta = 1 - ac[t] / ac[t_prev]`` (Nichol & Dhariwal 2021)."""
    xp = namespace(x_t)
    t_prev = t - 1 if t_prev is None else t_prev
    ac = sched.ac(t)
    if t_prev == t - 1:  # the release's own tables
        ac_prev, beta = float(sched.alphas_cumprod_prev[t]), float(sched.betas[t])
    else:
        ac_prev = 1.0 if t_prev < 0 else sched.ac(t_prev)
        beta = 1.0 - ac / ac_prev
    x0 = xp.clip(math.sqrt(1.0 / ac) * x_t - math.sqrt(1.0 / ac - 1.0) * eps, -1.0, 1.0)
    coef1 = beta * math.sqrt(ac_prev) / (1.0 - ac)  # posterior mean coefficients
    coef2 = (1.0 - ac_prev) * math.sqrt(1.0 - beta) / (1.0 - ac)
    var = beta * (1.0 - ac_prev) / (1.0 - ac)
    mean = coef1 * x0 + coef2 * x_t
    if t_prev < 0:
        return mean
    return mean + z * math.exp(0.5 * math.log(max(var, 1e-20)))


def ddpm_timesteps(sched: LinearSchedule, steps: int | None = None, t_start: int | None = None) -> list[int]:
    """``steps`` timesteps from t0 = T-1 (or t_start) down to 0, evenly spaced: every one of them, the
    release's loop, for ``steps`` = t0 + 1 (the default)."""
    t0 = _start(sched, t_start)
    steps = t0 + 1 if steps is None else steps
    if not 1 <= steps <= t0 + 1:
        raise ValueError(f"ddpm steps must be in 1..{t0 + 1}, got {steps}")
    if steps == 1:
        return [t0]
    return [round(t0 - k * t0 / (steps - 1)) for k in range(steps)]


def ddpm(
    eps_fn: EpsFn,
    x_T: Array,
    steps: int | None = None,
    *,
    schedule: LinearSchedule = SCHEDULE,
    t_start: int | None = None,
    eta: float = 1.0,
    noise: Noise | None = None,
    progress: bool = False,
) -> Array:
    """Ancestral sampling, one network call per timestep of :func:`ddpm_timesteps`: by default every
    timestep t = T-1 (or t_start) .. 0, the release's default sampler; fewer steps respace it (``eta`` unused: it
    is always stochastic)."""
    seq = ddpm_timesteps(schedule, steps, t_start)
    noise = noise or Noise([None] * x_T.shape[0])
    x = x_T
    for k in _progress(range(len(seq)), len(seq), progress, "ddpm"):
        t, t_prev = seq[k], seq[k + 1] if k + 1 < len(seq) else -1
        eps = eps_fn(x, full_batch(x, schedule.noise_level(t)))
        x = ddpm_step(x, t, eps, noise.like(x) if t_prev >= 0 else None, schedule, t_prev)
    return x


def ddim_timesteps(sched: LinearSchedule, steps: int, t_start: int | None = None) -> list[int]:
    """The release's subsequence ``range(0, n, n // steps)`` with n = t_start + 1 (n = T by default);
    the loop makes len - 1 network calls."""
    n = _start(sched, t_start) + 1
    if not 2 <= steps <= n:
        raise ValueError(
            f"ddim steps must be in 2..{n}, got {steps} (ddim's steps are the points of its grid: it makes steps - 1 "
            "U-Net calls, so one call is steps=2)"
        )
    return list(range(0, n, n // steps))


def ddim(
    eps_fn: EpsFn,
    x_T: Array,
    steps: int = 200,
    *,
    schedule: LinearSchedule = SCHEDULE,
    t_start: int | None = None,
    eta: float = 0.0,
    noise: Noise | None = None,
    progress: bool = False,
) -> Array:
    """DDIM (Song et al. 2021, Eq. 12) on the release's grid; eta = 0 is deterministic.

    The loop starts at the grid's last timestep (1990 for 200 steps, like the release) and its
    last update lands on ac[0] (the release stops before t = 0), hence steps - 1 calls.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")
    seq = ddim_timesteps(schedule, steps, t_start)
    noise = noise or Noise([None] * x_T.shape[0])
    x = x_T
    pairs = list(zip(reversed(seq[1:]), reversed(seq[:-1])))
    for i, j in _progress(pairs, len(pairs), progress, "ddim"):
        at, an = schedule.ac(i), schedule.ac(j)
        eps = eps_fn(x, full_batch(x, schedule.noise_level(i)))
        x0 = (x - math.sqrt(1.0 - at) * eps) / math.sqrt(at)
        sigma = eta * math.sqrt((1.0 - an) / (1.0 - at) * (1.0 - at / an))
        x = math.sqrt(an) * x0 + math.sqrt(1.0 - an - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * noise.like(x)
    return x


def dpmpp_levels(sched: LinearSchedule, steps: int, t_start: int | None = None) -> list[float]:
    """steps + 1 values of ac spaced uniformly in log-SNR, lambda = log(sqrt(ac / (1 - ac))), from
    ac[T-1] (or ac[t_start]) down to ac[0]. The network was trained on continuous noise levels, so the grid needs no
    integer timesteps; uniform log-SNR steps measured 2-5x lower error than uniform-t steps at
    10-50 steps on Gaussian data (tests/test_samplers.py)."""
    if steps < 1:
        raise ValueError(f"dpmpp_2m steps must be >= 1, got {steps}")
    lo, hi = (0.5 * math.log(a / (1 - a)) for a in (sched.ac(_start(sched, t_start)), sched.ac(0)))
    lams = [lo + (hi - lo) * k / steps for k in range(steps + 1)]
    return [1.0 / (1.0 + math.exp(-2.0 * lam)) for lam in lams]


def dpmpp_2m(
    eps_fn: EpsFn,
    x_T: Array,
    steps: int = 20,
    *,
    schedule: LinearSchedule = SCHEDULE,
    t_start: int | None = None,
    eta: float = 0.0,
    noise: Noise | None = None,
    progress: bool = False,
) -> Array:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in data-prediction form, for few-step sampling (deterministic:
    ``eta`` and ``noise`` unused).

    With alpha = sqrt(ac), sigma = sqrt(1 - ac), lambda = log(alpha / sigma):
    x_next = (sigma_next / sigma) x - alpha_next (e^{-h} - 1) D, with D the second-order
    combination of the last two x0 predictions; first order on the first step and on the last,
    whose log-SNR jump to ac[0] is the largest (second order there extrapolates too far).
    """
    acs = dpmpp_levels(schedule, steps, t_start)
    alpha = [math.sqrt(a) for a in acs]
    sigma = [math.sqrt(1.0 - a) for a in acs]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    x, x0_prev, h_prev = x_T, None, None
    for k in _progress(range(steps), steps, progress, "dpmpp_2m"):
        eps = eps_fn(x, full_batch(x, alpha[k]))
        x0 = (x - sigma[k] * eps) / alpha[k]
        h = lam[k + 1] - lam[k]
        if x0_prev is None or k == steps - 1:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sigma[k + 1] / sigma[k]) * x - alpha[k + 1] * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


@dataclass(frozen=True)
class Sampler:
    """One sampler: its function, its grid (raising ValueError for a step count it cannot take from a start) and
    the U-Net calls a grid makes."""

    run: Callable[..., Array]
    grid: Callable[[LinearSchedule, int, int | None], Sequence]
    calls: Callable[[Sequence], int]


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ddpm, ddpm_timesteps, len),
    "ddim": Sampler(ddim, ddim_timesteps, lambda grid: len(grid) - 1),
    "dpmpp_2m": Sampler(dpmpp_2m, dpmpp_levels, lambda grid: len(grid) - 1),
}


def sampler(name: str) -> Sampler:
    """The sampler ``name``; ValueError naming the choices."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {tuple(SAMPLERS)}")
    return SAMPLERS[name]


def calls_for(name: str, steps: int, t_start: int | None = None, schedule: LinearSchedule = SCHEDULE) -> int:
    """U-Net calls sampler ``name`` makes for ``steps`` from ``t_start`` (none for 0 steps: no sampling)."""
    s = sampler(name)
    return s.calls(s.grid(schedule, steps, t_start)) if steps else 0
