"""Data-parallel pretraining: a 2-process gloo step equals one step on the whole batch; torchrun end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.fitting.distributed import (
    DistContext,
    TrainingNet,
    context_from_env,
    local_batch_size,
    mean_over_ranks,
    shard_indices,
    train_step,
    wrap,
)
from napari_dropsembles.core.networks.checkpoint import load_prior
from napari_dropsembles.core.networks.ensemble import EnsembleDecoder
from napari_dropsembles.core.networks.model import VoxelEncoder
from tests.conftest import TINY

BATCH, POINTS, STEPS = 4, 64, 2


def make_net() -> TrainingNet:
    torch.manual_seed(0)
    return TrainingNet(VoxelEncoder(TINY), EnsembleDecoder(TINY, 1, torch.Generator().manual_seed(0)))


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    grids = (torch.rand(BATCH, 2, TINY.grid_size, TINY.grid_size, TINY.grid_size, generator=gen) > 0.5).float()
    points = torch.rand(BATCH, POINTS, 3 + TINY.point_features, generator=gen) - 0.5
    labels = (torch.rand(BATCH, POINTS, generator=gen) > 0.5).float()
    return grids, points, labels


def run_steps(net, ctx: DistContext) -> list[float]:
    """STEPS optimiser steps, each rank on its contiguous share of the same global batch (no dropout).

    SGD with momentum rather than Adam: Adam divides by the gradient's own size, which turns float
    rounding in near-zero gradients (dead ReLUs) into full-size steps and hides what is compared.
    """
    grids, points, labels = make_batch()
    share = local_batch_size(BATCH, ctx)
    rows = slice(ctx.rank * share, (ctx.rank + 1) * share)
    model = wrap(net, ctx, torch.device("cpu"))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(STEPS):
        loss, _ = train_step(model, optimiser, grids[rows], points[rows], labels[rows], dropout=0.0)
        losses.append(mean_over_ranks(float(loss.item()), ctx))
    return losses


def _rank_main(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = make_net()
        losses = run_steps(net, DistContext(rank=rank, world_size=world, local_rank=rank))
        if rank == 0:
            torch.save({"state": net.state_dict(), "losses": losses}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes join a gloo group: about 15 s
def test_two_process_gloo_step_equals_the_single_process_step(tmp_path):
    single = make_net()
    single_losses = run_steps(single, DistContext())
    out_file = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    ddp = torch.load(out_file)
    assert ddp["losses"] == pytest.approx(single_losses, rel=1e-6)
    changed = 0
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(value, make_net().state_dict()[name])
    assert changed > 0  # the step did train


def test_shards_are_disjoint_and_the_batch_splits_evenly():
    ranks = [DistContext(rank=r, world_size=3) for r in range(3)]
    shards = [list(shard_indices(10, ctx)) for ctx in ranks]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert local_batch_size(6, ranks[0]) == 2
    with pytest.raises(InputError, match="multiple of the number of processes"):
        local_batch_size(8, ranks[0])
    assert context_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == DistContext(1, 2, 1)
    assert context_from_env({}) == DistContext()
    with pytest.raises(InputError, match="RANK"):
        context_from_env({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.slow
def test_pretrain_under_torchrun_writes_one_ordinary_checkpoint(tmp_path):
    out = tmp_path / "prior.safetensors"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "napari_dropsembles.cli", "pretrain", "--out", str(out), "--steps", "2", "--samples", "4",
        "--batch-size", "2", "--grid", "16", "--hidden", "16", "--blocks", "1", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    prior = load_prior(out)
    assert prior.training["processes"] == 2
    assert prior.config.grid_size == 16 and len(prior.models) == 1
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["prior.safetensors"]  # no temp file left
