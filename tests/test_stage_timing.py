"""The stage marks of idm_rt.stage_timing: a no-op unless recording, each stage's own time when recording, and the
pipeline's stages marked where they run (counts of calls, not timings)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import idm_rt
from idm_rt.arrays import Noise
from idm_rt.pipeline import super_resolve
from idm_rt.stage_timing import (
    BACK_PROJECTION,
    CONDITIONING,
    ENCODER_FEATURES,
    ENCODER_HR,
    ENGINE_ARRAYS,
    SAMPLER,
    TILES,
    UNET,
    StageClock,
    recording,
    stage,
)
from idm_rt.tiling import TilePlan


def test_marks_without_a_recording_are_one_shared_no_op():
    assert stage("a") is stage("b")
    with stage("a"):
        pass
    clock = StageClock()
    with recording(clock):
        pass
    with stage("after"):  # the recording is over
        pass
    assert not clock.seconds and not clock.calls


def test_nested_stages_each_keep_their_own_time():
    # the clock's reads: made, enter a, enter b, leave b, enter b, leave b, leave a
    ticks = iter([0.0, 1.0, 3.0, 6.0, 10.0, 15.0, 21.0])
    clock = StageClock(timer=lambda: next(ticks))
    with recording(clock):
        with stage("a"):  # 1.0
            with stage("b"):  # 3.0 .. 6.0
                pass
            with stage("b"):  # 10.0 .. 15.0
                pass
    assert clock.calls == {"a": 1, "b": 2}
    assert clock.seconds == {"a": 2.0 + 4.0 + 6.0, "b": 3.0 + 5.0}


def test_a_recording_sees_its_own_thread_only():
    clock = StageClock()
    other = threading.Thread(target=lambda: stage("elsewhere").__enter__())
    with recording(clock):
        other.start()
        other.join()
    assert "elsewhere" not in clock.calls


def test_super_resolve_marks_every_stage_and_its_output_is_unchanged(tiny_model):
    lr = torch.rand(1, 3, 12, 12) * 2 - 1
    settings = idm_rt.SamplingSettings(steps=2, init="bicubic", init_level=0.9, back_projection=1)
    size, tile = (24, 24), 16
    plan = TilePlan.for_image(size, tile, tiny_model.config.size_multiple)
    assert len(plan.tiles) > 1
    plain = super_resolve(tiny_model, lr, size, settings, scale=2.0, noise=Noise([0]), plan=plan)
    with recording() as clock:
        timed = super_resolve(tiny_model, lr, size, settings, scale=2.0, noise=Noise([0]), plan=plan)
    assert torch.equal(plain, timed)
    assert clock.calls[UNET] == settings.steps * len(plan.tiles)
    assert clock.calls[CONDITIONING] == len(plan.tiles)  # once per tile, cached between steps
    assert clock.calls[ENCODER_FEATURES] >= 1 and clock.calls[ENCODER_HR] >= 1
    assert clock.calls[BACK_PROJECTION] >= settings.steps and clock.calls[SAMPLER] == 1 and clock.calls[TILES] >= 1
    assert all(s >= 0 for s in clock.seconds.values())


def test_the_fast_path_records_no_u_net_call(tiny_model):
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    with recording() as clock:
        super_resolve(tiny_model, lr, (16, 16), idm_rt.SamplingSettings(steps=0, init="bicubic", back_projection=2))
    assert UNET not in clock.calls and CONDITIONING not in clock.calls
    assert clock.calls[BACK_PROJECTION] == 1 and clock.calls[ENCODER_FEATURES] == 1


def test_an_engine_runner_marks_its_array_copies_apart_from_its_graph_runs():
    pytest.importorskip("onnxruntime")
    from idm_rt.upscaler import DEFAULT_ENGINES

    if not (DEFAULT_ENGINES / "manifest.json").exists():
        pytest.skip(f"no bundled engines at {DEFAULT_ENGINES}")
    up = idm_rt.Upscaler.from_engines(DEFAULT_ENGINES, runner_options={"threads": 1})
    with recording() as clock:
        up.upscale(np.zeros((8, 8, 3), np.uint8), scale=2, steps=1, progress=False)
    assert clock.calls[UNET] == 1 and clock.calls[ENGINE_ARRAYS] >= 2
