"""Data-parallel pretraining under ``torchrun``: rank and world size, the process group, data shards.

``torchrun --nproc-per-node N napari-dropsembles pretrain ...`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; each builds only its shard of the training samples, trains a
DistributedDataParallel copy of the network on ``batch_size / N`` samples a step (gradients are
averaged across processes, so a step equals one step on the whole batch), and rank 0 alone
writes the checkpoint, in the same format as a single process. gloo on CPU, nccl on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from ..config.errors import InputError, setting
from ..networks.device import resolve_device
from ..networks.model import sample_features


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(env: Mapping[str, str] = os.environ) -> DistContext:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (absent: a single process)."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} is not in [0, WORLD_SIZE={world})")
    return DistContext(rank=rank, world_size=world, local_rank=local)


def init_distributed(device: str = "auto", env: Mapping[str, str] = os.environ) -> tuple[DistContext, torch.device]:
    """Join the process group that torchrun describes (nccl on CUDA, else gloo); return the context and device."""
    ctx = context_from_env(env)
    if not ctx.enabled:
        return ctx, resolve_device(device)
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        resolve_device("cuda")  # the usual one-line error
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank % torch.cuda.device_count())
        target = torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    else:
        target = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=ctx.rank, world_size=ctx.world_size)
    return ctx, target


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(count: int, ctx: DistContext) -> range:
    """The sample indices this rank makes and trains on (round robin: disjoint, together all of them)."""
    if count < ctx.world_size:
        raise InputError(f"{setting('samples', count)} must be at least the number of processes ({ctx.world_size})")
    return range(ctx.rank, count, ctx.world_size)


def local_batch_size(batch_size: int, ctx: DistContext) -> int:
    """Samples per step on this rank: the global batch split evenly."""
    if batch_size % ctx.world_size:
        raise InputError(
            f"{setting('batch_size', batch_size)} must be a multiple of the number of processes ({ctx.world_size})"
        )
    return batch_size // ctx.world_size


class TrainingNet(nn.Module):
    """Encoder + decoder as one module (what DistributedDataParallel wraps): logits at query points."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, grids: torch.Tensor, points: torch.Tensor, dropout: float) -> torch.Tensor:
        features = sample_features(self.encoder(grids), points)  # [B, P, C]
        flat = self.decoder(
            points.reshape(-1, points.shape[-1]), features.reshape(-1, features.shape[-1]), random_dropout=dropout
        )
        return flat.view(points.shape[:2])


def wrap(net: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel over ``net`` in a multi-process run, ``net`` itself otherwise."""
    if not ctx.enabled:
        return net
    from torch.nn.parallel import DistributedDataParallel  # torch: loaded when first used

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def train_step(
    net: nn.Module,
    optimiser: torch.optim.Optimizer,
    grids: torch.Tensor,
    points: torch.Tensor,
    labels: torch.Tensor,
    dropout: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on BCE with logits; under DDP the gradients are averaged over the ranks."""
    logits = net(grids, points, dropout)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss, logits


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    """The average of a number over the ranks (for reporting the loss of the whole batch)."""
    if not ctx.enabled:
        return value
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / ctx.world_size
