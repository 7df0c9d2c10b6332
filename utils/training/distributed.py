"""The few lines of distributed-data-parallel plumbing the training loop needs (torchrun's environment).

A run started by ``torchrun --nproc_per_node=K train.py ...`` has RANK, WORLD_SIZE and LOCAL_RANK in its
environment; a plain ``python train.py`` has none and runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import UserError


@dataclass
class DistributedContext:
    """Where this process sits in the run; ``master`` does the logging and the checkpointing."""

    ddp: bool
    rank: int
    local_rank: int
    world_size: int

    @property
    def master(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistributedContext:
    """Read torchrun's environment (no process group is created yet)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext(ddp=False, rank=0, local_rank=0, world_size=1)
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set them with torchrun)") from None
    return DistributedContext(ddp=world_size > 1, rank=rank, local_rank=local_rank, world_size=world_size)


def init_process_group(ctx: DistributedContext, device: torch.device) -> None:
    """NCCL between GPUs, gloo between CPU processes."""
    if not ctx.ddp:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")


def destroy_process_group(ctx: DistributedContext) -> None:
    if ctx.ddp and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce(values: List[float], op, ctx: DistributedContext, device: torch.device) -> List[float]:
    if not ctx.ddp:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_reduce_max(values: List[float], ctx: DistributedContext, device: torch.device) -> List[float]:
    """Element-wise maximum over the ranks, e.g. "any rank wants to stop" flags that all must agree on."""
    return _all_reduce(values, dist.ReduceOp.MAX, ctx, device)


def all_reduce_sum(values: List[float], ctx: DistributedContext, device: torch.device) -> List[float]:
    """Element-wise sum over the ranks (test-set totals)."""
    return _all_reduce(values, dist.ReduceOp.SUM, ctx, device)


def all_gather_object(obj, ctx: DistributedContext) -> list:
    """Every rank's ``obj`` in rank order (every rank's generator states, for the checkpoint)."""
    if not ctx.ddp:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def unused_parameters(model: nn.Module, loss_fn, example: torch.Tensor) -> List[str]:
    """Names of trainable parameters that get no gradient from one training step's loss.

    Why: DistributedDataParallel must be told (``find_unused_parameters=True``, which costs a graph walk
    every step) if some parameters take no part in the loss, or it waits for their gradients forever. One
    forward/backward on ``example`` answers the question; the generators are forked so the probe does not
    change the run's random stream, and the gradients are cleared afterwards.
    """
    device = example.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        loss_fn(model(example), example)["loss"].backward()
    names = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return names


def parameters_in_sync(model: nn.Module, ctx: DistributedContext, device: torch.device) -> Dict[str, bool]:
    """Per parameter: does its fingerprint agree on all ranks? (a cheap check run at each epoch end).

    The fingerprint is the tensor's float64 sum and sum of squares, compared min against max over the ranks;
    a mismatch means the replicas have drifted apart (e.g. an optimizer stepped on unreduced gradients).
    """
    if not ctx.ddp:
        return {}
    names = [name for name, _ in model.named_parameters()]
    stats = torch.stack([
        torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for _, p in model.named_parameters()
    ]).to(device)
    low, high = stats.clone(), stats.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    same = (low == high).all(dim=1).tolist()
    return dict(zip(names, same))


def wrap_ddp(model: nn.Module, ctx: DistributedContext, device: torch.device, find_unused: bool) -> nn.Module:
    """DistributedDataParallel around ``model`` (which stays reachable as ``.module``)."""
    if not ctx.ddp:
        return model
    device_ids: Optional[list] = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)
