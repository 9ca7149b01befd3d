"""How many threads torch uses on the CPU, and how its idle threads wait: one policy for the command
line, napari and dask workers.

- Idle OpenMP threads spin only briefly before they sleep (``GOMP_SPINCOUNT=10000``, about 10 us,
  instead of GNU OpenMP's 300,000). A spinning thread that shares its core with another busy process
  burns the time its partner needs: the demo took 2.0-2.9x its quiet time against one
  ``while True: pass`` with torch's defaults. Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) cost the
  quiet demo's fine-tuning 50 % (wake-ups between its many small operations: 6.3-11.3 s against 7.5-7.7 s
  with the short spin and 6.3-6.4 s spinning forever; two runs each, docs/PERFORMANCE.md). Under load the
  thread count below already keeps threads off busy cores. Set before torch loads
  (:func:`prepare_threads`); a user's own ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` wins.
- numpy's and scipy's OpenBLAS run on one thread (``OPENBLAS_NUM_THREADS=1`` before numpy loads,
  threadpoolctl during a run where it loaded first). Their calls here are small coordinate
  transforms ((N, 3) x (3, 3)) that gain nothing from threads, and OpenBLAS threads spin too: on a
  loaded 2-core machine such a product took 33 ms with two threads and 4 ms with one, and a training
  sample of a real mask 1.8 s instead of 0.85 s.
- Threads, chosen at the start of each run (:func:`use_threads`): the cores that other processes
  leave free (sampled over at least 0.2 s), capped by where the run happens: every core on the
  command line, all but one in napari (its GUI thread needs one), ``cores // workers`` in a dask
  worker of our LocalCluster (one thread in a worker of an unknown cluster, dask's convention).
- ``DROPSEMBLES_THREADS=N`` fixes the count everywhere (``auto``: the policy above); on the command
  line and in napari ``OMP_NUM_THREADS`` is honoured too.

Results agree across thread counts to float32 rounding (about 1e-7), not bit for bit: fix the
count for bit-identical reruns. Imports torch only inside the functions that set threads.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass

from ..config.errors import InputError

THREADS_ENV = "DROPSEMBLES_THREADS"  # "auto" or a positive integer
WORKERS_ENV = "DROPSEMBLES_WORKERS"  # set by our LocalCluster in its workers: worker processes on this machine
WAIT_POLICY = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "0"}  # GNU OpenMP (torch's), Intel OpenMP
USER_WAIT_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
BLAS_THREADS = "OPENBLAS_NUM_THREADS"  # numpy's and scipy's OpenBLAS (torch's own BLAS is MKL, on OpenMP)
CONTEXTS = ("cli", "viewer", "worker")
SAMPLE_S = 0.2  # shortest window over which the other processes' CPU use is measured
SAMPLE_MAX_AGE_S = 10.0  # an older start of the window is not used (the load it saw may be gone)


def prepare_threads(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Before torch and numpy load: idle OpenMP threads sleep, OpenBLAS runs one thread (unless the user set
    these). False when torch is loaded already (too late for its threads' wait policy)."""
    if "numpy" not in sys.modules:
        environ.setdefault(BLAS_THREADS, "1")
    if "torch" in sys.modules:
        return False
    if not any(key in environ for key in USER_WAIT_KEYS):
        environ.update(WAIT_POLICY)
    return True


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """OpenBLAS (numpy, scipy) on one thread for the body, where threadpoolctl is installed and the user
    did not ask for more (``OPENBLAS_NUM_THREADS``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    if os.environ.get(BLAS_THREADS, "1") != "1":
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used by the whole machine and by this process, at a moment."""

    when: float
    machine_busy_s: float
    own_s: float


def cpu_sample() -> CpuSample | None:
    """Now, or None where the machine's CPU times cannot be read (no psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    own = psutil.Process().cpu_times()
    return CpuSample(time.monotonic(), sum(times) - idle, own.user + own.system)


_LAST: CpuSample | None = None
_LOCK = threading.Lock()


def mark_cpu() -> None:
    """Start a sampling window now (the command line does, so its imports are the window)."""
    global _LAST
    with _LOCK:
        _LAST = cpu_sample()


def busy_elsewhere(min_window_s: float = SAMPLE_S) -> float:
    """Cores kept busy by other processes, averaged since :func:`mark_cpu` (or over ``min_window_s``)."""
    global _LAST
    with _LOCK:
        start = _LAST
        now = cpu_sample()
        if now is None:
            return 0.0
        age = now.when - start.when if start is not None else math.inf
        if age > SAMPLE_MAX_AGE_S:
            start, age = now, 0.0
        if age < min_window_s:
            time.sleep(min_window_s - age)
            now = cpu_sample()
            age = now.when - start.when
        _LAST = now
    others = (now.machine_busy_s - start.machine_busy_s) - (now.own_s - start.own_s)
    return max(0.0, others / max(age, 1e-9))


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a run uses, and why."""

    threads: int
    cap: int
    busy_elsewhere: float | None  # None: a fixed count, the load was not measured
    source: str  # "DROPSEMBLES_THREADS", "OMP_NUM_THREADS" or "auto"

    def describe(self) -> str:
        if self.busy_elsewhere is None:
            return f"{self.threads} thread(s) ({self.source})"
        return (
            f"{self.threads} thread(s) (auto: {available_cores()} cores, {self.busy_elsewhere:.1f} busy elsewhere, "
            f"at most {self.cap} here)"
        )


def _fixed(value: str | None, name: str) -> int | None:
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise InputError(f"{name} must be 'auto' or a positive number of threads, got {value!r}")
    return count


def thread_cap(context: str, environ: Mapping[str, str] = os.environ, cores: int | None = None) -> int:
    """The most threads a run may use where it runs (``context``: cli, viewer or worker)."""
    if context not in CONTEXTS:
        raise ValueError(f"unknown context {context!r}; one of {CONTEXTS}")
    cores = cores or available_cores()
    if context == "viewer":
        return max(1, cores - 1)
    if context == "worker":
        workers = _fixed(environ.get(WORKERS_ENV), WORKERS_ENV)
        return max(1, cores // workers) if workers else 1
    return cores


def choose_threads(context: str = "cli", environ: Mapping[str, str] = os.environ) -> ThreadChoice:
    """The policy (module docstring) for a run starting now."""
    cap = thread_cap(context, environ)
    fixed = _fixed(environ.get(THREADS_ENV), THREADS_ENV)
    if fixed is not None:
        return ThreadChoice(fixed, cap, None, THREADS_ENV)
    if context != "worker":  # dask sets OMP_NUM_THREADS=1 in its workers: not a user's choice
        fixed = _fixed(environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")
        if fixed is not None:
            return ThreadChoice(fixed, cap, None, "OMP_NUM_THREADS")
    if cap == 1:
        return ThreadChoice(1, cap, None, "auto")
    busy = busy_elsewhere()
    return ThreadChoice(max(1, min(cap, round(available_cores() - busy))), cap, busy, "auto")


_ACTIVE = threading.local()  # the choice of the use_threads this thread is inside, if any


def active_choice() -> ThreadChoice | None:
    """The choice in force in this thread (inside :func:`use_threads`), else None."""
    return getattr(_ACTIVE, "choice", None)


def thread_summary() -> dict:
    """torch's thread count now and the policy's reason (for a run's report)."""
    import torch

    choice = active_choice()
    return {"threads": torch.get_num_threads(), "policy": choice.describe() if choice is not None else "not set"}


@contextlib.contextmanager
def use_threads(
    context: str = "cli", environ: Mapping[str, str] = os.environ, fixed: int | None = None
) -> Iterator[ThreadChoice]:
    """Run the body with the policy's torch threads (``fixed``: that many), set in the calling thread
    (the one that runs torch); the previous count is put back after. Inside another ``use_threads``
    of the same thread the outer choice stays (a cohort case run in the command line's process)."""
    outer = active_choice()
    if outer is not None and fixed is None:
        yield outer
        return
    import torch

    choice = ThreadChoice(fixed, fixed, None, "given") if fixed is not None else choose_threads(context, environ)
    before = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    _ACTIVE.choice = choice
    try:
        with one_blas_thread():
            yield choice
    finally:
        _ACTIVE.choice = outer
        torch.set_num_threads(before)
