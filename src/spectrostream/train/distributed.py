"""Processes and devices: one process, or torchrun (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..errors import TrainingError
from . import checkpoint as ckpt


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> DistInfo:
    """Single process, or torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise TrainingError("run.device = 'cuda' but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", device_id=device if use_cuda else None
        )
    return DistInfo(rank, world, local_rank, device)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, DDP) else m


def gather_rng(dinfo: DistInfo) -> list[dict[str, Any]]:
    mine = ckpt.rng_state()
    if dinfo.world == 1:
        return [mine]
    out: list[Any] = [None] * dinfo.world
    dist.all_gather_object(out, mine)
    return [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.items()} for r in out]


def seed_all(seed: int, rank: int, step: int) -> None:
    ss = np.random.SeedSequence([seed, rank, step])
    s = int(ss.generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def out_of_time(deadline: float | None, dinfo: DistInfo) -> bool:
    """Rank 0's clock decides, so that every process stops at the same step."""
    if deadline is None:
        return False
    flag = torch.tensor([time.monotonic() > deadline], dtype=torch.int32)
    if dinfo.world > 1:
        flag = flag.to(dinfo.device)
        dist.broadcast(flag, 0)
    return bool(flag.item())
