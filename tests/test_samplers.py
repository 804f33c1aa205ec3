"""Samplers against closed forms: the schedule, and Gaussian data whose optimal noise predictor
and probability-flow ODE solution are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from idm_rt.arrays import Noise
from idm_rt.diffusion import (
    LinearSchedule,
    ddim,
    ddim_timesteps,
    ddpm,
    ddpm_step,
    ddpm_timesteps,
    dpmpp_2m,
    dpmpp_levels,
)

SCHED = LinearSchedule()
MU, S = 0.3, 0.5  # data ~ N(MU, S^2) per pixel


def gaussian_eps(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """E[eps | x] for x = g y + sqrt(1 - g^2) eps, y ~ N(MU, S^2)."""
    g = g.double().view(-1, 1, 1, 1)
    return (torch.sqrt(1 - g**2) * (x - g * MU) / (g**2 * S**2 + 1 - g**2)).to(x.dtype)


def ode_solution(x_T: torch.Tensor, g_from: float, g_to: float) -> torch.Tensor:
    """The probability-flow ODE maps quantiles to quantiles: an affine map for Gaussian data."""
    return g_to * MU + math.sqrt(g_to**2 * S**2 + 1 - g_to**2) / math.sqrt(g_from**2 * S**2 + 1 - g_from**2) * (
        x_T - g_from * MU
    )


def test_schedule_matches_numpy_float64():
    betas = np.linspace(1e-6, 1e-2, 2000, dtype=np.float64)
    ac = np.cumprod(1 - betas)
    assert np.allclose(SCHED.alphas_cumprod, ac, rtol=1e-12)
    assert np.allclose(SCHED.sqrt_alphas_cumprod_prev, np.sqrt(np.append(1.0, ac)), rtol=1e-12)


def test_ddim_grid_is_the_release_rule():
    assert ddim_timesteps(SCHED, 200) == list(range(0, 2000, 10))
    assert ddim_timesteps(SCHED, 3) == [0, 666, 1332, 1998]
    with pytest.raises(ValueError):
        ddim_timesteps(SCHED, 1)


def test_dpmpp_grid_spans_the_schedule_uniformly_in_log_snr():
    acs = dpmpp_levels(SCHED, 10)
    assert len(acs) == 11
    assert math.isclose(acs[0], SCHED.ac(1999), rel_tol=1e-9) and math.isclose(acs[-1], SCHED.ac(0), rel_tol=1e-12)
    lams = [0.5 * math.log(a / (1 - a)) for a in acs]
    assert all(math.isclose(b - a, lams[1] - lams[0], rel_tol=1e-6) for a, b in zip(lams, lams[1:]))


def test_ddpm_step_formula():
    """x_{t-1} = posterior mean + sigma z, written here from Ho et al. (2020) Eq. 6-7 in float64."""
    gen = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    betas = np.linspace(1e-6, 1e-2, 2000)
    alphas = 1 - betas
    ac = np.cumprod(alphas)
    for t in (1500, 7):
        x0 = ((x - math.sqrt(1 - ac[t]) * eps) / math.sqrt(ac[t])).clamp(-1, 1)
        mean = (math.sqrt(ac[t - 1]) * betas[t] * x0 + math.sqrt(alphas[t]) * (1 - ac[t - 1]) * x) / (1 - ac[t])
        sigma = math.sqrt(betas[t] * (1 - ac[t - 1]) / (1 - ac[t]))
        assert torch.allclose(ddpm_step(x, t, eps, z, SCHED), mean + sigma * z, rtol=1e-10, atol=1e-12)


def test_deterministic_samplers_converge_to_the_ode_solution():
    gen = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    g0 = SCHED.noise_level(0)
    exact = ode_solution(x_T, SCHED.noise_level(1999), g0)
    err = lambda out, ref: ((out - ref).norm() / ref.norm()).item()
    dpm20 = dpmpp_2m(gaussian_eps, x_T, 20, schedule=SCHED)
    dpm200 = dpmpp_2m(gaussian_eps, x_T, 200, schedule=SCHED)
    ddim20 = ddim(gaussian_eps, x_T, 20, schedule=SCHED)
    ddim_ref = ode_solution(x_T, SCHED.noise_level(ddim_timesteps(SCHED, 20)[-1]), g0)
    assert err(dpm200, exact) < 1e-3
    assert err(dpm20, exact) < 3e-2
    assert err(dpm20, exact) < err(ddim20, ddim_ref)  # second order beats first order at 20 steps
    # with many steps, dpmpp_2m and ddim approach each other
    ddim_many = ddim(gaussian_eps, x_T, 2000, schedule=SCHED)
    assert err(dpm200, ddim_many) < 3e-3
    assert err(dpm200, ddim_many) < err(dpm20, ddim_many) / 5


def test_ddpm_reaches_the_data_distribution_and_is_seeded():
    x_T = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = ddpm(gaussian_eps, x_T, schedule=SCHED, noise=Noise([5]))
    b = ddpm(gaussian_eps, x_T, schedule=SCHED, noise=Noise([5]))
    c = ddpm(gaussian_eps, x_T, schedule=SCHED, noise=Noise([6]))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean().item() - MU) < 0.05 and abs(a.std().item() - S) < 0.05


def test_ddpm_honours_steps_by_respacing_and_all_steps_are_the_release_loop():
    assert ddpm_timesteps(SCHED) == list(reversed(range(2000)))
    assert ddpm_timesteps(SCHED, 2000) == ddpm_timesteps(SCHED)
    assert ddpm_timesteps(SCHED, 3) == [1999, 1000, 0] and ddpm_timesteps(SCHED, 1, t_start=500) == [500]
    with pytest.raises(ValueError, match="ddpm steps must be in 1..2000"):
        ddpm_timesteps(SCHED, 2001)
    calls = []

    def counting(x, g):
        calls.append(g[0].item())
        return gaussian_eps(x, g)

    x_T = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ddpm(counting, x_T, 250, schedule=SCHED, noise=Noise([5, 6, 7, 8]))
    assert len(calls) == 250 and calls == sorted(calls)  # noise levels rise as the noise falls
    # the data, N(MU, S) clipped to [-1, 1] as every step clips its x0 estimate: mean 0.282, std 0.463
    assert abs(out.mean().item() - 0.282) < 0.03 and abs(out.std().item() - 0.463) < 0.03
    # a respaced step is the release's step on beta = 1 - ac[t] / ac[t_prev] (Ho et al. Eq. 7, float64)
    gen = torch.Generator().manual_seed(1)
    x, eps, z = (torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    ac = SCHED.alphas_cumprod
    t, s = 1500, 1100
    beta = 1 - ac[t] / ac[s]
    x0 = ((x - math.sqrt(1 - ac[t]) * eps) / math.sqrt(ac[t])).clamp(-1, 1)
    mean = (math.sqrt(ac[s]) * beta * x0 + math.sqrt(1 - beta) * (1 - ac[s]) * x) / (1 - ac[t])
    sigma = math.sqrt(beta * (1 - ac[s]) / (1 - ac[t]))
    assert torch.allclose(ddpm_step(x, t, eps, z, SCHED, t_prev=s), mean + sigma * z, rtol=1e-10, atol=1e-12)


def test_ddim_eta_uses_the_noise_streams():
    x_T = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = ddim(gaussian_eps, x_T, 20, schedule=SCHED, eta=1.0, noise=Noise([3]))
    b = ddim(gaussian_eps, x_T, 20, schedule=SCHED, eta=1.0, noise=Noise([3]))
    c = ddim(gaussian_eps, x_T, 20, schedule=SCHED, eta=0.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_diffused_start_restricts_the_grids():
    assert ddim_timesteps(SCHED, 10, t_start=999) == list(range(0, 1000, 100))
    assert math.isclose(dpmpp_levels(SCHED, 5, t_start=700)[0], SCHED.ac(700), rel_tol=1e-9)
    with pytest.raises(ValueError, match="start timestep"):
        ddim_timesteps(SCHED, 10, t_start=2000)


def test_samplers_from_a_diffused_start_follow_the_ode_from_there():
    t0 = 600
    g = math.sqrt(SCHED.ac(t0))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_start = g * MU + math.sqrt(1 - g**2) * x  # a state at level g
    exact = ode_solution(x_start, g, SCHED.noise_level(0))
    err = lambda out: ((out - exact).norm() / exact.norm()).item()
    assert err(dpmpp_2m(gaussian_eps, x_start, 20, schedule=SCHED, t_start=t0)) < 1e-2
    assert err(ddim(gaussian_eps, x_start, 601, schedule=SCHED, t_start=t0)) < 1e-2
