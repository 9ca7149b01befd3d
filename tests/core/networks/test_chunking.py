"""Chunk sizes per device, the out-of-memory fallback (simulated), and precision on CUDA only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dropsembles.core.config.configs import ReconstructionConfig
from napari_dropsembles.core.config.errors import DropsemblesError, InputError
from napari_dropsembles.core.networks import chunking
from napari_dropsembles.core.networks.chunking import (
    CPU_CHUNK,
    OutOfMemory,
    autocast,
    choose_chunk,
    is_out_of_memory,
    precision_note,
    run_chunked,
)
from napari_dropsembles.core.querying.dense import run_to_end
from napari_dropsembles.core.querying.predict import predict_grid_steps
from napari_dropsembles.core.volumes.frame import Frame


class _Oom(torch.cuda.OutOfMemoryError):
    pass


def _oom_above(limit: int, calls: list, error=None):
    def fn(start: int, stop: int):
        calls.append((start, stop))
        if stop - start > limit:
            raise error if error is not None else torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")
        return list(range(start, stop))

    return fn


def test_cpu_chunk_is_the_measured_constant_and_scales_with_width():
    assert choose_chunk("cpu", 4, 64) == CPU_CHUNK
    assert choose_chunk("cpu", 1, 64) == 4 * CPU_CHUNK
    assert choose_chunk("cpu", 16, 256) == 1024  # never below 1024 points
    for members, hidden in [(1, 16), (3, 48), (8, 128)]:
        chunk = choose_chunk("cpu", members, hidden)
        assert chunk & (chunk - 1) == 0 and 1024 <= chunk <= 65536


def test_cuda_chunk_comes_from_free_memory(monkeypatch):
    free = {"bytes": 8 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 << 30))
    per_point = 4 * 4 * 64 * chunking.CUDA_LIVE_TENSORS
    chunk = choose_chunk(torch.device("cuda"), 4, 64)
    assert chunk & (chunk - 1) == 0
    assert chunk * per_point <= chunking.CUDA_MEMORY_SHARE * free["bytes"] < 2 * chunk * per_point
    free["bytes"] = 1 << 20  # almost nothing free: the smallest chunk, OOM fallback does the rest
    assert choose_chunk(torch.device("cuda"), 4, 64) == chunking.CUDA_MIN_CHUNK
    free["bytes"] = 1 << 45
    assert choose_chunk(torch.device("cuda"), 4, 64) == chunking.CUDA_MAX_CHUNK


def test_out_of_memory_halves_the_chunk_and_covers_everything_once(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    calls, resized = [], []
    results = list(run_chunked(_oom_above(300, calls), 1000, 1024, on_resize=resized.append))
    assert resized == [512, 256]
    assert len(emptied) == 2
    covered = [i for _, _, chunk in results for i in chunk]
    assert covered == list(range(1000))  # in order, each index once
    assert all(stop - start <= 256 for start, stop, _ in results)


def test_runtime_error_saying_out_of_memory_is_handled_too():
    message = RuntimeError("CUDA error: out of memory")
    results = list(run_chunked(_oom_above(100, [], message), 250, 400, min_chunk=10))
    assert [(a, b) for a, b, _ in results] == [(0, 100), (100, 200), (200, 250)]
    assert is_out_of_memory(message) and is_out_of_memory(_Oom("x"))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("x"))


def test_other_errors_propagate_unchanged():
    def fn(start, stop):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        list(run_chunked(fn, 10, 5))


def test_out_of_memory_at_the_smallest_chunk_is_a_clear_error():
    with pytest.raises(OutOfMemory, match="out of memory even with 64 points") as info:
        list(run_chunked(_oom_above(10, []), 1000, 512, min_chunk=64))
    assert isinstance(info.value, DropsemblesError)


class _Sphere:
    """A stand-in for Fitted: 2 members, probabilities of two spheres; raises OOM above ``limit`` points."""

    def __init__(self, limit: int) -> None:
        self.limit, self.members, self.device = limit, 2, torch.device("cpu")
        self.frame = Frame(centre_mm=np.zeros(3), scale_mm=1.0, rotation=np.eye(3))
        self.decoder = type("D", (), {"config": type("C", (), {"hidden": 16})()})()

    def predict_normalised(self, points: torch.Tensor) -> torch.Tensor:
        if points.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        radius = points.norm(dim=1)
        return torch.stack([torch.sigmoid((0.3 - radius) * 40), torch.sigmoid((0.32 - radius) * 40)])


def test_grid_prediction_survives_out_of_memory_with_the_same_result():
    affine = np.eye(4)
    affine[:3, :3] *= 1 / 20
    affine[:3, 3] = -0.475
    plenty = run_to_end(predict_grid_steps(_Sphere(10**9), affine, (20, 20, 20), chunk=8000))
    squeezed = run_to_end(predict_grid_steps(_Sphere(1000), affine, (20, 20, 20), chunk=8000))
    for name in ("mean", "variance", "entropy", "mutual_information"):
        np.testing.assert_allclose(getattr(plenty, name).data, getattr(squeezed, name).data, rtol=1e-5, atol=1e-9)
    assert plenty.queries == squeezed.queries == 2 * 20**3


def test_precision_applies_on_cuda_only(monkeypatch):
    with autocast("cpu", "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    assert precision_note("cpu", "bf16") is not None and precision_note("cpu", "fp32") is None
    with pytest.raises(ValueError, match="precision"), autocast("cpu", "fp16"):
        pass
    entered = []

    class _Recorder:
        def __init__(self, device_type, dtype):
            entered.append((device_type, dtype))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch, "autocast", _Recorder)
    before = torch.backends.cuda.matmul.allow_tf32
    with autocast(torch.device("cuda"), "bf16"):
        pass
    assert entered == [("cuda", torch.bfloat16)]
    with autocast(torch.device("cuda"), "tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    with autocast(torch.device("cuda"), "fp32"):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert len(entered) == 1


def test_config_checks_precision_and_chunk():
    with pytest.raises(InputError, match="precision"):
        ReconstructionConfig(precision="fp16")
    with pytest.raises(InputError, match="chunk"):
        ReconstructionConfig(chunk=0)
    ReconstructionConfig(precision="bf16", chunk=4096)
