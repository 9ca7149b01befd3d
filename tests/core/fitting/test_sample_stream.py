"""Training samples streamed while training runs: sized to the work, deterministic, cancellable."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from napari_dropsembles.core.config.configs import PretrainConfig
from napari_dropsembles.core.config.errors import Cancelled
from napari_dropsembles.core.config.progress import CancelToken, drive
from napari_dropsembles.core.fitting import pretrain as pretrain_module
from napari_dropsembles.core.fitting.pretrain import pretrain_steps, training_stream
from napari_dropsembles.core.fitting.sample_stream import POOL_MIN_SAMPLES, BatchSchedule, SampleStream
from tests.conftest import TINY, random_ellipsoids

TINY_RUN = dict(batch_size=4, points_per_sample=64, lr=3e-3, fisher_samples=2)


def fake_sample(position: int, delay: float = 0.0) -> tuple[np.ndarray, ...]:
    """A recognisable sample (module level: worker processes import it)."""
    time.sleep(delay)
    return np.full((2, 2), position, np.float16), np.full((3, 4), position, np.float32), np.zeros(3, np.uint8)


def test_a_short_run_makes_only_the_samples_its_steps_use(monkeypatch):
    made = []
    real = pretrain_module._pool_sample

    def counting(index, *args):
        made.append(index)
        return real(index, *args)

    monkeypatch.setattr(pretrain_module, "_pool_sample", counting)
    config = PretrainConfig(steps=1, samples=1024, **TINY_RUN)
    drive(pretrain_steps(TINY, config, shapes=random_ellipsoids(4)))
    assert 1 <= len(made) <= config.batch_size  # not the 1024 of the pool
    assert len(set(made)) == len(made)  # each made once


def test_the_schedule_is_fixed_by_the_seed_and_rows_follow_first_use():
    a, b = BatchSchedule(50, 4, 30, seed=[3, 0, 1]), BatchSchedule(50, 4, 30, seed=[3, 0, 1])
    b.draw_to(30)  # drawn all at once or step by step: the same batches
    rows = [a.rows(step) for step in range(1, 31)]
    assert all(np.array_equal(r, b.rows(step)) for step, r in enumerate(rows, 1))
    seen = -1
    for step, r in enumerate(rows, 1):
        assert r.max() < a.rows_needed(step) and a.rows_needed(step) <= step * 4
        assert r.max() <= seen + 4  # new samples get the next rows
        seen = max(seen, r.max())
    assert BatchSchedule(10, 8, 1000, seed=0).expected_samples() == 10
    assert BatchSchedule(1024, 8, 1, seed=0).expected_samples() == 8


def test_pretraining_is_deterministic_and_does_not_depend_on_who_makes_the_samples():
    """Made here or by two worker processes (which finish in any order), the same prior, bit for bit."""
    config = PretrainConfig(steps=24, samples=128, **TINY_RUN)  # about 68 distinct samples: worker processes
    schedule = BatchSchedule(config.samples, config.batch_size, config.steps, seed=0)
    assert schedule.expected_samples() >= POOL_MIN_SAMPLES
    shapes = random_ellipsoids(4)
    runs = [drive(pretrain_steps(TINY, config, shapes=shapes, workers=workers)) for workers in (1, 2)]
    for other in runs[1:]:
        for name, value in runs[0].models[0].decoder.items():
            assert torch.equal(value, other.models[0].decoder[name]), name
        assert torch.equal(runs[0].models[0].fisher["out_w"], other.models[0].fisher["out_w"])


def test_the_stream_hands_work_to_worker_processes_and_keeps_order():
    schedule = BatchSchedule(200, 8, 40, seed=1)
    with SampleStream(fake_sample, lambda p: (p,), schedule, workers=2) as stream:
        assert stream.parallel
        for step in (1, 2, 40):
            drive(stream.wait_for(step))
            grids, points, _ = stream.batch(step)
            positions = [schedule.order[row] for row in schedule.rows(step)]
            assert grids[:, 0, 0].tolist() == positions and points.shape == (8, 3, 4)


def test_cancel_stops_a_wait_for_samples_at_once():
    cancel = CancelToken()
    schedule = BatchSchedule(200, 8, 40, seed=1)
    with SampleStream(fake_sample, lambda p: (p, 5.0), schedule, workers=2) as stream:
        threading.Timer(0.5, cancel.set).start()
        started = time.perf_counter()
        with pytest.raises(Cancelled):
            drive(stream.wait_for(1, cancel))
        assert time.perf_counter() - started < 3.0


def test_cancel_stops_pretraining_while_it_makes_samples():
    cancel = CancelToken()
    config = PretrainConfig(steps=50, samples=16, **TINY_RUN)
    steps = pretrain_steps(TINY, config, shapes=random_ellipsoids(4), cancel=cancel)
    first = next(steps)
    assert first.phase == "data"  # the first batch is being made
    cancel.set()
    with pytest.raises(Cancelled):
        drive(steps)


def test_the_stream_of_a_ddp_rank_draws_from_its_shard_only():
    from napari_dropsembles.core.fitting.distributed import DistContext

    config = PretrainConfig(steps=5, samples=10, **{**TINY_RUN, "batch_size": 4})
    stream = training_stream(TINY, config, dist=DistContext(rank=1, world_size=2))
    indices = {stream.args_for(position)[0] for position in range(stream.schedule.pool_size)}
    assert indices == {1, 3, 5, 7, 9} and stream.schedule.batch_size == 2
