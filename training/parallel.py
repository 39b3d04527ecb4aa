"""Training on several devices with torchrun (DistributedDataParallel): NCCL on GPUs, gloo on CPUs.

`torchrun --nproc_per_node N -m atlas.cli train ...` starts N processes with RANK, WORLD_SIZE and LOCAL_RANK set;
each joins the process group here, trains on its shard of every batch (the same seeded permutation on every
rank, sample i of a batch going to rank i mod N), and DDP averages the gradients, so a step is the step one process
takes on the whole batch. Only rank 0 writes (checkpoints, resume state, records, plots) and logs. The state a
`--resume` reads does not depend on the number of processes, so a run may resume with another world size.
No launcher of our own: torchrun is the engine.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def join(device: torch.device) -> torch.device:
    """Join torchrun's process group (once); a CUDA device becomes this rank's own GPU. Without torchrun: as is."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's part of a batch's sample indices (all of them in one process)."""
    n = world_size()
    return indices if n == 1 else indices[rank()::n]


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model DDP trains (gradients averaged across ranks), or the model itself in one process."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sum_across(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (an epoch's loss and hits, counted where each sample was trained)."""
    if world_size() == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tuple(float(v) for v in tensor)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
