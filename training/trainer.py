"""The training loop: two-stage scale schedule, Adam, EMA, clipping, checkpoints with exact resume,
CSV log, periodic validation images; DistributedDataParallel when launched by torchrun."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import pickle
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from idm_rt import IDM, load_model, preset, save_model
from idm_rt.pipeline import super_resolve
from idm_rt.resize import downscale, upscale
from idm_rt.threads import configure_threads

from .config import TrainConfig
from .data import PairSampler, center_crop, load_rgb, sample_scale, scan_folder
from .ema import EMA
from .loss import IDMLoss
from .metrics import psnr_y
from .visual import save_grid

STATE_NAME = "trainer_state.pt"
CHECKPOINT_NAME = re.compile(r"step_\d{8}")


class CheckpointError(OSError):
    """A checkpoint that cannot be resumed from or written; the message is one line naming it."""


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder as :meth:`Trainer.save_checkpoint` writes them:
    named ``step_NNNNNNNN`` and holding ``ema/``, ``raw/`` and the trainer state."""
    return (CHECKPOINT_NAME.fullmatch(path.name) is not None and (path / "ema").is_dir()
            and (path / "raw").is_dir() and (path / STATE_NAME).is_file())


def init_distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # before NCCL picks a GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class Trainer:
    """Owns the model, optimizer, EMA, RNGs and the run folder ``cfg.out``.

    Only rank 0 writes. Each rank trains on its own shard of the images; the effective batch
    is ``cfg.batch * world``.
    """

    def __init__(self, cfg: TrainConfig, device: str | None = None):
        self.cfg = cfg
        self.rank, self.world = init_distributed()
        configure_threads(cfg.threads or None)
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.out = Path(cfg.out)

        scan = scan_folder(cfg.data, min_size=cfg.crop)
        images = scan.images
        val_images = scan_folder(cfg.val_data, min_size=8).images if cfg.val_data else []
        if not cfg.val_data and cfg.val_holdout:
            if len(images) <= cfg.val_holdout:
                raise ValueError(f"{cfg.data} has {len(images)} usable images: too few to hold out {cfg.val_holdout}")
            images, val_images = images[:-cfg.val_holdout], images[-cfg.val_holdout:]
        self.skipped = scan.skipped
        self.val_images = val_images
        self.pairs = PairSampler(images[self.rank::self.world], cfg.crop)

        torch.manual_seed(cfg.seed)
        self.model = IDM(preset(cfg.preset, **cfg.network), max_scale=cfg.max_scale).to(self.device)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.net = (DistributedDataParallel(self.model, find_unused_parameters=cfg.regression_steps > 0) if self.world > 1
                    else self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(enabled=cfg.precision == "fp16" and self.device.type == "cuda")
        self.loss_fn = IDMLoss(max_t=cfg.max_timestep, snr_gamma=cfg.snr_gamma, aux_weight=cfg.aux_weight)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + self.rank)
        self.step = 0
        self.val_log: CsvLog | None = None

    # ----------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints (:func:`is_checkpoint`), oldest first; anything else in the folder is
        neither resumed from nor deleted."""
        return sorted(p for p in self.ckpt_dir.iterdir() if is_checkpoint(p)) if self.ckpt_dir.exists() else []

    def save_checkpoint(self) -> Path | None:
        """``checkpoints/step_N/{ema,raw}`` in the project format plus the optimizer/RNG state;
        written to a temp folder and renamed, then only the last ``keep_last`` are kept.

        Raises:
            CheckpointError: it cannot be written (a full disk: nothing is left behind), or
                ``step_N`` exists and is not a checkpoint (it is left alone).
        """
        rng = [self.rng_state()]
        if self.world > 1:  # every rank's generators, so that each rank resumes its own streams
            rng = [None] * self.world
            dist.all_gather_object(rng, self.rng_state())
        if self.rank != 0:
            return None
        final = self.ckpt_dir / f"step_{self.step:08d}"
        if final.exists() and not is_checkpoint(final):
            raise CheckpointError(f"{final} exists and is not a checkpoint: move it away (it was left alone)")
        tmp = self.ckpt_dir / f".tmp_step_{self.step:08d}"  # (a leftover of an interrupted save is replaced)
        shutil.rmtree(tmp, ignore_errors=True)
        prov = {"recipe": self.cfg.to_dict(), "step": self.step}
        state = {"step": self.step, "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng}
        try:
            save_model(self.ema.model, tmp / "ema", provenance=prov)
            save_model(self.model, tmp / "raw", provenance=prov)
            with open(tmp / STATE_NAME, "wb") as f:  # a file object: a full disk is an OSError, not a RuntimeError
                torch.save(state, f)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint {final}: {e}") from None
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.checkpoints()[:-self.cfg.keep_last]:
            shutil.rmtree(old)
        return final

    def rng_state(self) -> dict:
        """This process's random streams: data order, diffusion noise, dropout (CPU and CUDA)."""
        state = {"data_gen": self.data_gen.get_state(), "noise_gen": self.noise_gen.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def resume(self, path: Path | None = None) -> bool:
        """Continue from ``path`` or the newest checkpoint of the run; False when there is none.

        Raises:
            CheckpointError: the trainer state is damaged (truncated, empty, not a trainer state, or
                holding objects that safe loading refuses); the trainer is then not usable.
        """
        path = path or (self.checkpoints()[-1] if self.checkpoints() else None)
        if path is None:
            return False
        raw, ema = load_model(path / "raw"), load_model(path / "ema")
        ours = dataclasses.replace(self.model.config, dropout=raw.config.dropout)  # dropout may change
        if raw.config != ours:
            changed = {k: (v, getattr(ours, k)) for k, v in raw.config.to_dict().items()
                       if getattr(ours, k) != (tuple(v) if isinstance(v, list) else v)}
            raise ValueError(f"{path} holds another network than these options ask for "
                             f"({', '.join(f'{k}: {a} there, {b} here' for k, (a, b) in changed.items())}); a "
                             f"resumed run keeps its network's shape")
        self.model.load_state_dict(raw.state_dict())
        self.ema.model.load_state_dict(ema.state_dict())
        try:
            self._restore_state(path / STATE_NAME)
        except Exception as e:  # noqa: BLE001 (torch.load and the load_state_dicts raise many types)
            raise CheckpointError(f"{path / STATE_NAME} cannot be resumed from ({_why(e)}); it is damaged or not a "
                                  "trainer state") from None
        return True

    def _restore_state(self, file: Path) -> None:
        """Optimizer, grad scaler, random streams and step from a trainer state file (tensors only:
        ``weights_only`` loading runs no pickled code)."""
        state = torch.load(file, map_location=self.device, weights_only=True)
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.rank] if "rng" in state else state  # (first runs kept rank 0's at the top)
        self.data_gen.set_state(rng["data_gen"])
        self.noise_gen.set_state(rng["noise_gen"])
        torch.set_rng_state(rng["torch_rng"])
        if "cuda_rng" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda_rng"])
        if not isinstance(state["step"], int) or state["step"] < 0:
            raise ValueError(f"step {state['step']!r} is not a step number")
        self.step = state["step"]

    # ----------------------------------------------------------------- training
    def lr_at(self, step: int) -> float:
        return self.cfg.lr if step < self.cfg.fixed_scale_steps else self.cfg.lr_stage2

    def autocast(self):
        if self.cfg.precision == "fp32" or self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def train_step(self) -> tuple[dict[str, float], float]:
        """One optimizer step; returns (losses: the total and its parts, NaN where a part is off; scale)."""
        cfg = self.cfg
        scale = sample_scale(self.step, cfg.max_scale, cfg.fixed_scale_steps, self.data_gen)
        hr, lr, scale = self.pairs.batch(cfg.batch, scale, self.data_gen)
        hr, lr = hr.to(self.device), lr.to(self.device)
        p = self.model.scale_fraction(scale).expand(hr.shape[0]).to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.net.train()
        with self.autocast():
            loss, parts = self.loss_fn(self.net, hr, lr, p, self.noise_gen,
                                       denoise=self.step >= cfg.regression_steps)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        self.ema.update(self.model, self.step)
        return {"loss": loss.item(), "noise": float("nan"), "aux": float("nan"), **parts}, scale

    def fit(self, resume: bool = False) -> None:
        """Train to ``cfg.steps``. Ctrl-C (or SIGTERM) stops after the current step with a checkpoint
        there, so that ``--resume`` continues exactly; a second Ctrl-C stops at once, without one."""
        cfg = self.cfg
        if resume:
            if not self.resume():
                raise FileNotFoundError(f"nothing to resume: {self.ckpt_dir} holds no checkpoint; drop --resume to "
                                        "start the run again")
            tqdm.write(f"resumed at step {self.step}")
        log = CsvLog(self.out / "log.csv") if self.rank == 0 else None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            for path, why in self.skipped:
                tqdm.write(f"skipped {path}: {why}")
            self.val_log = CsvLog(self.out / "val.csv")
            for csv_log in (log, self.val_log):
                csv_log.truncate_after(self.step)  # rows written after the checkpoint we resumed from
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.rank != 0, desc="train", dynamic_ncols=True)
        checkpointed_stop = False
        try:
            with stop_requests() as stop:
                while self.step < cfg.steps:
                    t0 = time.perf_counter()
                    losses, scale = self.train_step()
                    ips = cfg.batch * self.world / (time.perf_counter() - t0)
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", img_s=f"{ips:.1f}", scale=f"{scale:.2f}")
                    if log and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        log.write(step=self.step, **losses, lr=self.lr_at(self.step - 1), scale=scale,
                                  images_per_s=ips)
                    saved = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
                    if saved:
                        self.save_checkpoint()
                    if cfg.val_every and self.step % cfg.val_every == 0 and self.rank == 0:
                        self.validate()
                    if self._agreed(bool(stop)) and self.step < cfg.steps:  # (a finished run just ends)
                        if not saved:
                            self.save_checkpoint()
                        if self.rank == 0:
                            tqdm.write(f"stopped at step {self.step}, checkpoint saved; --resume continues exactly")
                        checkpointed_stop = True
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if not checkpointed_stop:  # a second Ctrl-C, mid-step: a checkpoint now would not resume exactly
                last = self.checkpoints()[-1].name if self.checkpoints() else "none yet"
                tqdm.write(f"stopped without a checkpoint; --resume continues from the last one ({last})")
            raise
        finally:
            bar.close()

    def _agreed(self, flag: bool) -> bool:
        """``flag`` on any rank (one scalar all-reduce per step): every rank stops after the same step."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Few-step sampling with the EMA weights on held-out crops at scale M: PSNR(Y) of ours and
        of bicubic, and a grid LR-bicubic | ours | HR under ``val/``."""
        if not self.val_images:
            return None
        cfg, model = self.cfg, self.ema.model
        gen = torch.Generator().manual_seed(cfg.seed)
        rows, ours, bic = [], [], []
        for path in self.val_images:
            hr = center_crop(load_rgb(path), cfg.val_crop).float()[None].to(self.device) / 127.5 - 1
            s = max(1, round(hr.shape[-1] / cfg.max_scale))
            lr = downscale(hr, (s, s))
            size = tuple(hr.shape[-2:])
            sr = super_resolve(model, lr, size, cfg.sampling(), scale=cfg.max_scale, generator=gen)
            up = upscale(lr, size).clamp(-1, 1)
            to01 = lambda t: ((t[0] + 1) / 2).cpu()  # noqa: E731
            ours.append(psnr_y(to01(sr), to01(hr), border=int(cfg.max_scale)))
            bic.append(psnr_y(to01(up), to01(hr), border=int(cfg.max_scale)))
            rows.append([to01(up), to01(sr), to01(hr)])
        (self.out / "val").mkdir(parents=True, exist_ok=True)
        save_grid(rows, self.out / "val" / f"step_{self.step:08d}.png")
        result = {"step": self.step, "psnr_y": sum(ours) / len(ours), "psnr_y_bicubic": sum(bic) / len(bic)}
        if self.val_log is None:
            self.val_log = CsvLog(self.out / "val.csv")
        self.val_log.write(**result)
        tqdm.write(f"val step {self.step}: PSNR(Y) {result['psnr_y']:.2f} dB (bicubic {result['psnr_y_bicubic']:.2f})")
        return result


def _why(e: Exception) -> str:
    """One line on why a trainer state did not load."""
    if isinstance(e, pickle.UnpicklingError):  # torch's message is a page of advice, partly unsafe
        return "safe loading (weights_only=True) refused its contents"
    first = str(e).strip().split("\n")[0].split(". ")[0]
    return f"{e.__class__.__name__}: {first}" if first else e.__class__.__name__


@contextlib.contextmanager
def stop_requests():
    """A list that gets an entry on the first SIGINT or SIGTERM (the loop then stops after its
    current step); a second signal raises KeyboardInterrupt at once. Handlers are installed only in
    the main thread (elsewhere Python cannot), also over an ignored SIGINT of a background job."""
    requested: list[int] = []

    def handler(signum, _frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        tqdm.write("stopping after this step, with a checkpoint (Ctrl-C again: stop at once, without one)")

    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class CsvLog:
    """Appends rows to a CSV file, writing the header once; TensorBoard too when installed."""

    def __init__(self, path: Path):
        self.path = path
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step``, so a resumed run's log reads like an uninterrupted one."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if int(r["step"]) <= step]
        if len(kept) < len(rows):
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(kept)

    def write(self, **row: float) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"{self.path.stem}/{k}", v, row["step"])
