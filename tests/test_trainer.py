"""The trainer (idm_rt.training.trainer and the idm_rt.training.train command) as a user runs it: loss going
down, checkpoints and their rotation, exact resume (also after Ctrl-C), options checked up front, damaged
state and full disks, two DDP ranks."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from idm_rt.ray_session import free_port
from idm_rt.training.config import resolve
from idm_rt.training.trainer import Trainer

from .helpers import ROOT, TINY_SET, make_folder, safetensors_no_space, train_config


def losses(run) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_cli_reports_bad_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "idm_rt.training.train",
            "--data",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2 and "no usable training image" in r.stderr


def held_out_loss(trainer: Trainer) -> float:
    """The objective on one fixed batch (fixed crops, noise levels and noise): comparable across steps."""
    gen = torch.Generator().manual_seed(123)
    hr, lr, scale = trainer.pairs.batch(16, 4.0, gen)
    p = trainer.model.scale_fraction(scale).expand(16)
    trainer.model.eval()
    with torch.no_grad():
        return trainer.loss_fn(trainer.model, hr, lr, p, gen)[0].item()


def test_loss_goes_down_and_checkpoints_rotate(tmp_path):
    make_folder(tmp_path / "data")
    trainer = Trainer(train_config(tmp_path, steps=40, ckpt_every=10, lr=0.005))
    before = held_out_loss(trainer)
    trainer.fit()
    assert held_out_loss(trainer) < 0.9 * before
    assert len(losses(tmp_path / "run")) == 40
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_00000030", "step_00000040"]
    for part in ("ema/model.safetensors", "raw/config.json", "trainer_state.pt"):
        assert (tmp_path / "run" / "checkpoints" / "step_00000040" / part).exists()


def test_resume_is_exact(tmp_path):
    make_folder(tmp_path / "data")
    straight = tmp_path / "a"
    cfg = train_config(tmp_path, steps=6)
    cfg.out = str(straight)
    a = Trainer(cfg)
    a.fit()
    half = tmp_path / "b"
    cfg = train_config(tmp_path, steps=4, ckpt_every=3)
    cfg.out = str(half)
    Trainer(cfg).fit()  # checkpoints at 3 and 4; drop the one at 4 as if killed after logging step 4
    shutil.rmtree(half / "checkpoints" / "step_00000004")
    cfg.steps = 6
    b = Trainer(cfg)
    b.fit(resume=True)
    assert b.step == 6
    assert losses(half) == losses(straight)  # the stage switch at step 3 is crossed on resume too
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    for (k, x), (_, y) in zip(a.ema.model.state_dict().items(), b.ema.model.state_dict().items()):
        assert torch.equal(x, y), k


def _interrupt_during_step(trainer: Trainer, step: int, times: int = 1) -> None:
    """Send this process SIGINT ``times`` times from inside optimizer step ``step`` (1-based), after
    that step drew its scale, crops and noise: what a Ctrl-C mid-step does."""
    loss_fn = trainer.loss_fn

    def loss_with_signal(*args, **kwargs):
        if trainer.step == step - 1:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return loss_fn(*args, **kwargs)

    trainer.loss_fn = loss_with_signal


def test_ctrl_c_mid_step_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN where the suite runs in the background
    make_folder(tmp_path / "data")
    cfg = train_config(tmp_path, steps=6, ckpt_every=100)
    cfg.out = str(tmp_path / "a")
    straight = Trainer(cfg)
    straight.fit()
    cfg.out = str(tmp_path / "b")
    stopped = Trainer(cfg)
    _interrupt_during_step(stopped, 4)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    assert [p.name for p in stopped.checkpoints()] == ["step_00000004"]  # after the step it was in
    resumed = Trainer(cfg)
    resumed.fit(resume=True)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    for (k, x), (_, y) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(x, y), k
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, capsys):
    make_folder(tmp_path / "data")
    trainer = Trainer(train_config(tmp_path, steps=6, ckpt_every=2))
    _interrupt_during_step(trainer, 3, times=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert [p.name for p in trainer.checkpoints()] == ["step_00000002"]
    assert "continues from the last one (step_00000002)" in capsys.readouterr().out


@pytest.mark.slow
def test_the_run_says_what_it_trains_and_validates_on_and_where_its_checkpoint_is(tmp_path, capsys):
    from idm_rt.training.train import main

    make_folder(tmp_path / "data")  # 5 usable images (and 2 skipped)
    out = tmp_path / "run"
    options = [s for s in TINY_SET if not s.startswith("val_holdout=")]  # the default: 4 held out
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--set", *options]) == 0
    said = capsys.readouterr().out
    assert "warning: 4 of the 5 images are held out for validation, not trained on" in said
    assert (
        f"data: training on 1 of the 5 usable images in {tmp_path / 'data'}; validation on the last 4 "
        "(val_holdout=4; --set val_holdout=N changes it"
    ) in said and "--val-data DIR" in said
    last = out / "checkpoints" / "step_00000002"
    assert (last / "ema").is_dir() and f"step 2 of 2; last checkpoint: {last} (the model: {last / 'ema'}" in said
    for name in ("img0.png", "img1.png"):
        (tmp_path / "data" / name).unlink()
    assert (
        main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run2"), "--steps", "2", "--set", *options])
        == 2
    )
    err = capsys.readouterr().err
    assert "has 3 usable images: too few to hold out 4" in err and "--set val_holdout=2" in err
    assert "--val-data DIR" in err


def test_resume_cli_uses_the_runs_saved_options(tmp_path, capsys):
    from idm_rt.training.train import main

    make_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--set", *TINY_SET]) == 0
    assert main(["--resume", "--out", str(out), "--steps", "4"]) == 0  # no --data, --set: the saved ones
    err = capsys.readouterr().err
    assert "resuming with changed options: steps 2 -> 4" in err
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["crop"] == 16 and saved["steps"] == 4 and saved["network"]["channel_multiplier"] == [1, 2, 4]
    assert [int(r["step"]) for r in csv.DictReader(open(out / "log.csv"))] == [1, 2, 3, 4]
    saved = json.loads((out / "train_config.json").read_text())
    saved["val_every"] = -1  # accepted before options were checked: a change given on resume mends it
    (out / "train_config.json").write_text(json.dumps(saved))
    assert main(["--resume", "--set", f'out="{out}"', "val_every=0", "network.dropout=0.05", "--steps", "5"]) == 0
    assert "steps 4 -> 5" in capsys.readouterr().err  # found through out= in --set; dropout may change
    assert main(["--resume", "--out", str(out), "--steps", "6", "--set", "network.res_blocks=2"]) == 2
    assert "holds another network than these options ask for (res_blocks: 1 there, 2 here)" in capsys.readouterr().err
    assert json.loads((out / "train_config.json").read_text())["network"].get("res_blocks") is None  # untouched
    # with --recipe the options are given in full: the small preset's network
    assert (
        main(
            [
                "--resume",
                "--out",
                str(out),
                "--recipe",
                "small",
                "--data",
                str(tmp_path / "data"),
                "--set",
                "crop=16",
                "val_holdout=1",
            ]
        )
        == 2
    )
    assert "holds another network" in capsys.readouterr().err
    saved = json.loads((out / "train_config.json").read_text())
    del saved["lr_decay_steps"]  # a run saved before the option existed: a change to it is printed too
    (out / "train_config.json").write_text(json.dumps(saved))
    assert main(["--resume", "--out", str(out), "--steps", "6", "--set", "lr_decay_steps=2"]) == 0
    assert "resuming with changed options: steps 5 -> 6, lr_decay_steps 0 -> 2" in capsys.readouterr().err
    before = (out / "train_config.json").read_text()
    assert main(["--resume", "--out", str(out), "--steps", "4"]) == 2  # fewer steps than the run has made
    assert "is at step 6, past steps=4; give --steps above 6" in capsys.readouterr().err
    assert (out / "train_config.json").read_text() == before


@pytest.mark.parametrize(
    "override,message",
    [
        ('val_sampling={"sampler":"bogus"}', r"val_sampling: unknown sampler 'bogus'"),
        ("ckpt_every=0", "ckpt_every must be > 0"),
        ("lr=abc", "lr must be a finite number"),
        ("network.foo=1", "network options"),
        ("ema_decay=2", "ema_decay"),
        ("steps=-5", "steps must be >= 0"),
        ("precision=fp8", "torch runs in 'fp32', 'fp16' or 'bf16', not 'fp8'"),
        ("crop=20", "multiple of 8"),
        ("lr=NaN", "lr must be a finite number"),
        ("lr_decay_steps=-1", "lr_decay_steps must be >= 0"),
        ('val_sampling={"sampler":"ddim","steps":1}', r"ddim steps must be in 2\.\.2000, got 1"),
    ],
)
def test_bad_options_fail_before_training(override, message):
    with pytest.raises(ValueError, match=message):
        resolve("small", overrides=override.split())


def test_the_learning_rate_decays_linearly_over_the_last_steps_and_follows_more_steps(tmp_path):
    make_folder(tmp_path / "data")
    cfg = train_config(tmp_path, steps=10, fixed_scale_steps=2, lr=0.4, lr_stage2=0.2, lr_decay_steps=4)
    trainer = Trainer(cfg)
    assert [trainer.lr_at(s) for s in range(10)] == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.2, 0.2, 0.2, 0.15, 0.1, 0.05])
    trainer.cfg.steps = 20  # a resumed run given more steps decays over its new end
    assert trainer.lr_at(9) == 0.2 and trainer.lr_at(18) == pytest.approx(0.1)
    trainer.cfg.lr_decay_steps = 0
    assert trainer.lr_at(19) == 0.2 and trainer.lr_at(25) == 0.2


# Run with python -c in the checkout (cwd=ROOT): that puts the checkout first on sys.path, so tests.helpers imports.
DDP_SCRIPT = """
import sys
from pathlib import Path

import torch

from idm_rt.training.trainer import Trainer
from tests.helpers import train_config

tmp = Path(sys.argv[1])
t = Trainer(train_config(tmp, steps=2, ckpt_every=100))
t.fit()
torch.save(t.model.state_dict(), tmp / f"rank{t.rank}.pt")
"""


@pytest.mark.slow
def test_two_process_gloo_ranks_stay_identical(tmp_path):
    make_folder(tmp_path / "data", n=6)
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", DDP_SCRIPT, str(tmp_path)],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    init = Trainer(train_config(tmp_path)).model.state_dict()  # the same seeded init both ranks started from
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert any(not torch.equal(w0[k], init[k]) for k in w0)
    assert (tmp_path / "run" / "checkpoints" / "step_00000002").exists()  # rank 0 wrote the final checkpoint


def test_a_stop_asked_in_the_last_step_ends_the_run_normally(tmp_path):
    make_folder(tmp_path / "data")
    trainer = Trainer(train_config(tmp_path, steps=3, ckpt_every=100))
    _interrupt_during_step(trainer, 3)
    trainer.fit()  # no KeyboardInterrupt: the run is complete
    assert [p.name for p in trainer.checkpoints()] == ["step_00000003"]


def test_resuming_nothing_is_an_error_naming_the_folder(tmp_path, capsys):
    from idm_rt.training.train import main

    assert main(["--resume", "--out", str(tmp_path / "TYPO")]) == 2
    assert f"nothing to resume: {tmp_path / 'TYPO'} holds no run" in capsys.readouterr().err
    assert not (tmp_path / "TYPO").exists()
    make_folder(tmp_path / "data")
    trainer = Trainer(train_config(tmp_path))
    (tmp_path / "run").mkdir()  # a run stopped before its first checkpoint
    with pytest.raises(FileNotFoundError, match=f"nothing to resume: {tmp_path / 'run' / 'checkpoints'} holds no"):
        trainer.fit(resume=True)
    assert trainer.step == 0 and not (tmp_path / "run" / "log.csv").exists()


class _Mkdir:
    """Unpickles by creating a folder: a stand-in for a malicious pickle (loading must not run it)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _damage(kind: str, state, tmp_path):
    if kind == "truncated":
        state.write_bytes(state.read_bytes()[:200])
    elif kind == "empty":
        state.write_bytes(b"")
    elif kind == "random":
        state.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "a list":
        torch.save([1, 2, 3], state)
    elif kind == "missing keys":
        torch.save({"step": 2}, state)
    elif kind == "a bad step":
        saved = torch.load(state, weights_only=True)
        torch.save({**saved, "step": "two"}, state)
    elif kind == "a malicious pickle":
        torch.save({"step": _Mkdir(tmp_path / "PWNED")}, state)


@pytest.mark.parametrize(
    "kind", ["truncated", "empty", "random", "a list", "missing keys", "a bad step", "a malicious pickle"]
)
def test_a_damaged_trainer_state_is_one_line_naming_the_file(tmp_path, capsys, kind):
    from idm_rt.training.train import main

    make_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--set", *TINY_SET]) == 0
    state = out / "checkpoints" / "step_00000002" / "trainer_state.pt"
    _damage(kind, state, tmp_path)
    capsys.readouterr()
    assert main(["--resume", "--out", str(out), "--steps", "4"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"error: {state} cannot be resumed from (") and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()  # no pickled code ran


def test_rotation_and_resume_leave_what_is_not_a_checkpoint_alone(tmp_path):
    make_folder(tmp_path / "data")
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step_00000000_notes.txt").write_text("mine")
    (ckpts / "step_00000001").mkdir()  # named like a checkpoint, but not one
    (ckpts / "step_00000001" / "keep.txt").write_text("mine too")
    (ckpts / "step_99999999").mkdir()
    trainer = Trainer(train_config(tmp_path, steps=6, ckpt_every=2, keep_last=1))
    trainer.fit()
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "step_00000000_notes.txt",
        "step_00000001",
        "step_00000006",
        "step_99999999",
    ]
    assert (ckpts / "step_00000001" / "keep.txt").read_text() == "mine too"
    resumed = Trainer(train_config(tmp_path, steps=6, ckpt_every=2, keep_last=1))
    assert resumed.resume() and resumed.step == 6


def test_a_folder_in_the_way_of_a_checkpoint_is_not_replaced(tmp_path, capsys):
    from idm_rt.training.train import main

    make_folder(tmp_path / "data")
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000002").mkdir(parents=True)
    (out / "checkpoints" / "step_00000002" / "mine.txt").write_text("mine")
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--set", *TINY_SET]) == 1
    assert "step_00000002 exists and is not a checkpoint" in capsys.readouterr().err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    assert (out / "checkpoints" / "step_00000002" / "mine.txt").read_text() == "mine"


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["weights", "trainer state"])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch, where):
    from idm_rt import checkpoints
    from idm_rt.training.train import main

    make_folder(tmp_path / "data")
    if where == "weights":
        monkeypatch.setattr(checkpoints, "save_file", safetensors_no_space)
    else:
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: f.write(b"partly") and _no_space())
    out = tmp_path / "run"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--set", *TINY_SET]) == 1
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # (after the progress bar)
    assert last.startswith(f"error: cannot write checkpoint {out / 'checkpoints' / 'step_00000002'}: ")
    assert "No space left on device" in last and "Traceback" not in err
    assert not list((out / "checkpoints").glob("*"))  # (the folder itself may have gone with what the save made)
