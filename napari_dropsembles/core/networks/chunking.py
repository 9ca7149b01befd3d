"""How a network call runs on a device: points per call, out-of-memory fallback, precision.

- :func:`choose_chunk` picks how many points one network call takes: on CUDA from the free memory
  (``torch.cuda.mem_get_info``), on the CPU a cache-friendly constant (measured with
  ``bench/speed.py``; figures in docs/PERFORMANCE.md, "Points per decoder call"). It is called
  once per query, by the outermost call that knows the budget (``core/predict``,
  ``core/finetune``'s held-out loss); nothing below it chunks again.
- :func:`run_chunked` runs ``fn(start, stop)`` over ``[0, n)`` chunk by chunk; on a CUDA
  out-of-memory error it empties the cache, halves the chunk and retries, down to ``min_chunk``.
- :func:`autocast` applies ``precision`` ("fp32", "tf32", "bf16") on CUDA only; the CPU always
  runs float32 (bf16 matmul is not faster on CPUs without AMX, and tf32 does not exist there).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from ..config.configs import PRECISIONS
from ..config.errors import DropsemblesError

__all__ = [
    "CPU_CHUNK",
    "OutOfMemory",
    "autocast",
    "choose_chunk",
    "is_out_of_memory",
    "run_chunked",
    "precision_note",
]


# CPU: points per network call, measured by bench/speed.py on the 2-core EPYC (M=4, hidden 64):
# the smallest size at full speed (see docs/PERFORMANCE.md, "Points per decoder call").
CPU_CHUNK = 8192
CPU_CHUNK_BUDGET = CPU_CHUNK * 4 * 64  # points x members x hidden units of one call
CUDA_MIN_CHUNK = 1024
CUDA_MAX_CHUNK = 1 << 21
CUDA_MEMORY_SHARE = 0.5  # of the free memory one call may take
CUDA_LIVE_TENSORS = 8  # [M, N, hidden] float32 tensors alive at once in a no-grad forward (measured upper bound)

T = TypeVar("T")


class OutOfMemory(DropsemblesError, MemoryError):
    """The device ran out of memory even with the smallest chunk."""


# --------------------------------------------------------------------------- chunk sizes


def choose_chunk(device: torch.device | str, members: int, hidden: int) -> int:
    """Points per network call for ``members`` decoders of width ``hidden`` on ``device``.

    CUDA: the largest power of two whose activations (``CUDA_LIVE_TENSORS`` float32 tensors of
    ``[members, points, hidden]``) fit in ``CUDA_MEMORY_SHARE`` of the free memory, clamped to
    [CUDA_MIN_CHUNK, CUDA_MAX_CHUNK]. CPU (and MPS): ``CPU_CHUNK`` scaled so that
    points x members x hidden stays at the measured cache-friendly budget.
    """
    device = torch.device(device)
    width = max(1, int(members) * int(hidden))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        per_point = 4 * width * CUDA_LIVE_TENSORS
        fit = int(free * CUDA_MEMORY_SHARE) // per_point
        if fit < CUDA_MIN_CHUNK:
            return CUDA_MIN_CHUNK
        return int(min(CUDA_MAX_CHUNK, 1 << int(math.log2(fit))))
    return int(max(1024, min(65536, 1 << round(math.log2(CPU_CHUNK_BUDGET / width)))))


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_chunked(
    fn: Callable[[int, int], T],
    n: int,
    chunk: int,
    *,
    min_chunk: int = 256,
    on_resize: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, int, T]]:
    """Yield ``(start, stop, fn(start, stop))`` over ``[0, n)`` in chunks of at most ``chunk``.

    On out-of-memory the cache is emptied and the chunk halved (and kept halved for the rest);
    ``on_resize(new_chunk)`` is told. Below ``min_chunk`` an :class:`OutOfMemory` error says so.
    Any other error propagates unchanged.
    """
    chunk = max(1, int(chunk))
    min_chunk = max(1, min(int(min_chunk), chunk))
    start = 0
    while start < n:
        stop = min(start + chunk, n)
        try:
            result = fn(start, stop)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            del error  # drop the traceback's references to the failed call's tensors
            _empty_cache()
            if chunk <= min_chunk:
                raise OutOfMemory(
                    f"the device ran out of memory even with {chunk} points per call; "
                    "close other programs using the GPU, use fewer members, or run on the CPU"
                ) from None
            chunk = max(min_chunk, chunk // 2)
            if on_resize is not None:
                on_resize(chunk)
            continue
        yield start, stop, result
        start = stop


# --------------------------------------------------------------------------- precision


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """Mixed precision on CUDA: "bf16" autocast, "tf32" tensor-core float32, "fp32" exact.

    Other devices ignore ``precision`` (float32 throughout).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def precision_note(device: torch.device | str, precision: str) -> str | None:
    """A note for reports when ``precision`` is ignored (non-CUDA devices)."""
    if torch.device(device).type != "cuda" and precision != "fp32":
        return f"precision {precision!r} applies on CUDA only; {torch.device(device).type} ran float32"
    return None
