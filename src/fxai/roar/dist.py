"""The process group of a ``torchrun`` launch: rank and world size, started on demand (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting ``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` outside a launch; inside one, the default process group is
    initialised once (NCCL for CUDA devices, gloo otherwise) from torchrun's environment variables."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not launched():
        return 0, 1
    backend = "nccl" if device is not None and torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    """Whether this process is one rank of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (nothing outside a process group)."""
    if active():
        dist.barrier()


def broadcast(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (a picklable object; identity outside a group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def local_device(device: torch.device) -> torch.device:
    """One CUDA device per local rank under a launch (``cuda`` -> ``cuda:LOCAL_RANK``); others unchanged."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
