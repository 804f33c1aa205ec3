"""Data-parallel training under torchrun: the process group, and the agreements the ranks need (the step
to stop after, every rank's random streams for a checkpoint)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # before NCCL picks a GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def default_device() -> torch.device:
    """This rank's GPU under torchrun (LOCAL_RANK), the CPU without CUDA."""
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """``flag`` on any rank (one scalar all-reduce): every rank stops after the same step."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_ranks(obj: object, world: int) -> list:
    """``obj`` of every rank, in rank order (one all-gather): each rank's random streams for a checkpoint."""
    if world == 1:
        return [obj]
    gathered = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered
