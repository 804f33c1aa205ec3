"""The training loop (EDM's shape: the loop here, its helpers beside it): the two-stage scale schedule,
Adam, EMA, clipping, the objective of :mod:`.loss`; checkpoints (:mod:`.checkpoints`), clean stops
(:mod:`.signals`), logs (:mod:`.logs`), validation (:mod:`.validation`) and DistributedDataParallel
under torchrun (:mod:`.distributed`) in their own modules."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from idm_rt import IDM, load_model, preset
from idm_rt.threads import configure_threads

from .checkpoints import (
    STATE_NAME,
    check_same_network,
    list_checkpoints,
    restoring,
    write_checkpoint,
)
from .config import TrainConfig
from .data import PairSampler, describe_split, sample_scale, scan_folder, split_holdout
from .distributed import all_ranks, any_rank, default_device, init_distributed
from .ema import EMA
from .logs import CsvLog
from .loss import IDMLoss
from .signals import stop_requests
from .validation import validate


class Trainer:
    """Owns the model, optimizer, EMA, RNGs and the run folder ``cfg.out``.

    Only rank 0 writes. Each rank trains on its own shard of the images; the effective batch
    is ``cfg.batch * world``.
    """

    def __init__(self, cfg: TrainConfig, device: str | None = None):
        self.cfg = cfg
        self.rank, self.world = init_distributed()
        configure_threads(cfg.threads or None)
        self.device = torch.device(device) if device is not None else default_device()
        self.out = Path(cfg.out)

        scan = scan_folder(cfg.data, min_size=cfg.crop)
        if cfg.val_data:
            images, val_images = scan.images, scan_folder(cfg.val_data, min_size=8).images
        else:
            images, val_images = split_holdout(scan.images, cfg.val_holdout, cfg.data)
        self.skipped = scan.skipped
        self.val_images = val_images
        self.split = describe_split(len(images), len(val_images), cfg.data, cfg.val_data)
        self.pairs = PairSampler(images[self.rank :: self.world], cfg.crop)

        torch.manual_seed(cfg.seed)
        self.model = IDM(preset(cfg.network_preset, **cfg.network), max_scale=cfg.max_scale)
        if cfg.init_from:
            self.initialise_from(Path(cfg.init_from))
        self.model.to(self.device).encoder.requires_grad_(not cfg.freeze_encoder)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.net = (
            DistributedDataParallel(self.model, find_unused_parameters=cfg.regression_steps > 0)
            if self.world > 1
            else self.model
        )
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(enabled=cfg.precision == "fp16" and self.device.type == "cuda")
        self.loss_fn = IDMLoss(max_t=cfg.max_timestep, snr_gamma=cfg.snr_gamma, aux_weight=cfg.aux_weight)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + self.rank)
        self.step = 0
        self.val_log: CsvLog | None = None

    def initialise_from(self, folder: Path) -> None:
        """The weights of the model folder ``folder`` (fine-tuning; ``init_from``), which must hold this network
        trained for the same largest scale. A resumed run then replaces them with its checkpoint's."""
        start = load_model(folder)
        check_same_network(folder, start.config, self.model.config)
        if start.max_scale != self.model.max_scale:
            raise ValueError(
                f"{folder} was trained up to {start.max_scale}x, these options to max_scale="
                f"{self.model.max_scale}: the scale conditioning would not match"
            )
        self.model.load_state_dict(start.float().state_dict())

    # ----------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints, oldest first (:func:`~.checkpoints.list_checkpoints`)."""
        return list_checkpoints(self.ckpt_dir)

    def save_checkpoint(self) -> Path | None:
        """``checkpoints/step_N`` (:func:`~.checkpoints.write_checkpoint`) with every rank's random streams;
        rank 0 writes it."""
        rng = all_ranks(self.rng_state(), self.world)  # each rank resumes its own streams
        if self.rank != 0:
            return None
        state = {"step": self.step, "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng}
        return write_checkpoint(
            self.ckpt_dir,
            self.step,
            self.ema.model,
            self.model,
            state,
            {"recipe": self.cfg.to_dict(), "step": self.step},
            self.cfg.keep_last,
        )

    def rng_state(self) -> dict:
        """This process's random streams: data order, diffusion noise, dropout (CPU and CUDA)."""
        state = {
            "data_gen": self.data_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
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
        check_same_network(path, raw.config, self.model.config)
        self.model.load_state_dict(raw.state_dict())
        self.ema.model.load_state_dict(ema.state_dict())
        with restoring(path / STATE_NAME):
            self._restore_state(torch.load(path / STATE_NAME, map_location=self.device, weights_only=True))
        return True

    def _restore_state(self, state: dict) -> None:
        """Optimizer, grad scaler, random streams and step from a trainer state (tensors only:
        ``weights_only`` loading runs no pickled code)."""
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
        """The learning rate of step ``step`` (0-based): ``lr`` in stage 1, ``lr_stage2`` after, times
        ``(steps - step) / lr_decay_steps`` over the last ``lr_decay_steps`` steps (full at the first of them,
        1 / lr_decay_steps of it at the last)."""
        cfg = self.cfg
        rate = cfg.lr if step < cfg.fixed_scale_steps else cfg.lr_stage2
        left = cfg.steps - step
        if cfg.lr_decay_steps and left < cfg.lr_decay_steps:
            return rate * max(left, 0) / cfg.lr_decay_steps
        return rate

    def autocast(self):
        """Mixed precision as ``precision`` asks: bf16 on GPUs and CPUs (about 2x faster on CPUs with
        AVX512-BF16 or AMX), fp16 on GPUs; weights, optimizer and EMA stay float32."""
        if self.cfg.precision == "fp32" or (self.device.type != "cuda" and self.cfg.precision != "bf16"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self) -> tuple[dict[str, float], float]:
        """One optimizer step; returns (losses: the total and its parts, NaN where a part is off; scale)."""
        cfg = self.cfg
        scale = sample_scale(self.step, cfg.max_scale, cfg.fixed_scale_steps, self.data_gen, cfg.scale_sampling)
        denoise = self.step >= cfg.regression_steps
        crop = self.pairs.crop_side(scale, 0 if denoise else cfg.lr_patch, cfg.max_crop)
        hr, lr, scale = self.pairs.batch(cfg.batch, scale, self.data_gen, crop)
        hr, lr = hr.to(self.device), lr.to(self.device)
        p = self.model.scale_fraction(scale).expand(hr.shape[0]).to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.net.train()
        with self.autocast():
            loss, parts = self.loss_fn(self.net, hr, lr, p, self.noise_gen, denoise=denoise)
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
                raise FileNotFoundError(
                    f"nothing to resume: {self.ckpt_dir} holds no checkpoint; drop --resume to start the run again"
                )
            if self.step > cfg.steps:  # before the saved options change
                raise ValueError(
                    f"the run in {self.out} is at step {self.step}, past steps={cfg.steps}; give --steps "
                    f"above {self.step} to train longer (nothing was changed)"
                )
            tqdm.write(f"resumed at step {self.step}")
        log = CsvLog(self.out / "log.csv") if self.rank == 0 else None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            for path, why in self.skipped:
                tqdm.write(f"skipped {path}: {why}")
            for line in self.split:
                tqdm.write(line)
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
                        log.write(step=self.step, **losses, lr=self.lr_at(self.step - 1), scale=scale, images_per_s=ips)
                    saved = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
                    if saved:
                        self.save_checkpoint()
                    if cfg.val_every and self.step % cfg.val_every == 0 and self.rank == 0:
                        self.validate()
                    if any_rank(bool(stop), self.world, self.device) and self.step < cfg.steps:  # (a finished run ends)
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

    # ----------------------------------------------------------------- validation
    def validate(self) -> dict[str, float] | None:
        """:func:`~.validation.validate` with the EMA weights; a row of ``val.csv`` and a grid under ``val/``."""
        if not self.val_images:
            return None
        cfg = self.cfg
        result = {
            "step": self.step,
            **validate(
                self.ema.model,
                self.val_images,
                cfg.val_crop,
                cfg.sampling(),
                cfg.seed,
                self.out / "val" / f"step_{self.step:08d}.png",
            ),
        }
        if self.val_log is None:
            self.val_log = CsvLog(self.out / "val.csv")
        self.val_log.write(**result)
        tqdm.write(
            f"val step {self.step}: PSNR(Y) {result['psnr_y']:.2f} dB "
            f"(estimate {result['psnr_y_estimate']:.2f}, bicubic {result['psnr_y_bicubic']:.2f})"
        )
        return result
