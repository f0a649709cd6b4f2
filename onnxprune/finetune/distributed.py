"""Process-group helpers for training under ``torchrun`` (WORLD_SIZE > 1).

Kept apart so the loop reads the same with one process or many: every helper is a no-op
when not distributed.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when distributed.

    Safe to call repeatedly. gloo serves CPU training, nccl CUDA.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return is_distributed()


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return not is_distributed() or dist.get_rank() == 0


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks (float64), so every rank takes the same decisions."""
    if not is_distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()
