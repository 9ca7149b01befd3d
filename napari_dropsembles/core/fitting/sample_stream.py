"""Training samples made while training runs, in the order training first needs them.

Each step's batch (positions in a pool of ``pool_size`` samples) is drawn from its own seeded
generator, so what a step trains on never depends on how fast samples are made. A sample is made
once, when first needed, and kept: a run of S steps of B samples makes at most S x B of them, and the
first step starts as soon as its own B exist. Samples are made ahead of training in worker
processes started from a forkserver (spawn where there is none), never forked from this possibly
threaded process; a short run makes them here.
"""

from __future__ import annotations

import math
import multiprocessing
from collections import deque
from collections.abc import Callable, Generator, Sequence
from multiprocessing.pool import AsyncResult

import numpy as np
import torch

from ..config.progress import CancelFlag, Progress, check_cancel
from ..networks.threads import available_cores

Sample = tuple[np.ndarray, ...]  # e.g. encoder grid, decoder inputs at the points, labels
SCHEDULE_BLOCK = 256  # steps of the schedule drawn at a time
LOOKAHEAD_STEPS = 32  # samples of the next steps are handed to the workers before training needs them
POOL_MIN_SAMPLES = 64  # fewer samples are made in this process: starting worker processes would cost more
WAIT_S = 0.2  # how often a wait for a sample checks the cancel flag
MAX_WORKERS = 8  # default sample workers: one per core, at most this many


class BatchSchedule:
    """Pool positions of every step's batch, drawn in blocks from one seeded generator; each position
    gets a row: its sample's place in the order of first use."""

    def __init__(self, pool_size: int, batch_size: int, steps: int, seed: int | Sequence[int]) -> None:
        self.pool_size, self.batch_size, self.steps = pool_size, batch_size, steps
        self._rng = np.random.default_rng(seed)
        self._row = np.full(pool_size, -1, dtype=np.int64)
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # block -> (positions, samples needed by step)
        self.order: list[int] = []  # positions by row
        self.drawn = 0  # steps drawn so far

    def expected_samples(self) -> int:
        """How many distinct samples the whole run is expected to need."""
        draws = self.steps * self.batch_size
        if self.pool_size == 1:
            return 1
        return min(draws, math.ceil(-self.pool_size * math.expm1(draws * math.log1p(-1 / self.pool_size))))

    def draw_to(self, step: int) -> None:
        """Draw the batches of steps 1..``step`` (at most the run's steps) and give new positions rows."""
        while self.drawn < min(step, self.steps):
            count = min(SCHEDULE_BLOCK, self.steps - self.drawn)
            positions = self._rng.integers(self.pool_size, size=(count, self.batch_size), dtype=np.int64)
            needed = np.empty(count, dtype=np.int64)
            for i, batch in enumerate(positions):
                for position in batch:
                    if self._row[position] < 0:
                        self._row[position] = len(self.order)
                        self.order.append(int(position))
                needed[i] = len(self.order)
            self._blocks[self.drawn // SCHEDULE_BLOCK] = (positions, needed)
            self.drawn += count

    def _at(self, step: int) -> tuple[np.ndarray, int]:
        if not 1 <= step <= self.steps:
            raise IndexError(f"step {step} is not in 1..{self.steps}")
        self.draw_to(step)
        positions, needed = self._blocks[(step - 1) // SCHEDULE_BLOCK]
        return positions[(step - 1) % SCHEDULE_BLOCK], int(needed[(step - 1) % SCHEDULE_BLOCK])

    def rows(self, step: int) -> np.ndarray:
        """Rows of step ``step``'s batch (1-based); blocks before it are forgotten."""
        positions, _ = self._at(step)
        for block in [b for b in self._blocks if b < (step - 1) // SCHEDULE_BLOCK]:
            del self._blocks[block]
        return self._row[positions]

    def rows_needed(self, step: int) -> int:
        """Samples that must exist before step ``step`` runs (the distinct ones of steps 1..step)."""
        return self._at(step)[1]


class SampleStream:
    """Makes ``make(*args_for(position))`` for the schedule's positions in row order and keeps them.

    ``workers`` > 1 (0: one per core, at most ``MAX_WORKERS``) and a run expected to need at least
    ``POOL_MIN_SAMPLES``: worker processes (each started with ``initializer(*initargs)``) make samples
    ahead; else they are made here when needed.
    Use as a context manager (the workers end with it, also on cancel or error).
    """

    def __init__(
        self,
        make: Callable[..., Sample],
        args_for: Callable[[int], tuple],
        schedule: BatchSchedule,
        *,
        workers: int = 0,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
    ) -> None:
        self.make, self.args_for, self.schedule = make, args_for, schedule
        self.workers = workers or min(MAX_WORKERS, available_cores())
        self.initializer, self.initargs = initializer, initargs
        self.samples: list[Sample] = []
        self._pending: deque[AsyncResult] = deque()  # rows len(samples) ... in order
        self._pool = None

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def __enter__(self) -> SampleStream:
        if self.workers > 1 and self.schedule.expected_samples() >= POOL_MIN_SAMPLES:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._pool = context.Pool(self.workers, initializer=self.initializer, initargs=self.initargs)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def _submit_to(self, step: int) -> None:
        self.schedule.draw_to(step)
        order = self.schedule.order
        for row in range(len(self.samples) + len(self._pending), len(order)):
            self._pending.append(self._pool.apply_async(self.make, self.args_for(order[row])))

    def wait_for(self, step: int, cancel: CancelFlag | None = None) -> Generator[Progress, None, None]:
        """Make sure every sample of steps 1..``step`` exists; yields one Progress ("data") per sample
        it waited for."""
        needed = self.schedule.rows_needed(step)
        if self._pool is not None:
            self._submit_to(step + LOOKAHEAD_STEPS)
        while len(self.samples) < needed:
            check_cancel(cancel)
            if self._pool is None:
                self.samples.append(self.make(*self.args_for(self.schedule.order[len(self.samples)])))
            else:
                result = self._pending[0]
                result.wait(WAIT_S)
                if not result.ready():
                    continue
                self.samples.append(result.get())
                self._pending.popleft()
            yield Progress("data", len(self.samples), needed, message="making training samples")

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """Step ``step``'s samples stacked array by array; they must exist (:meth:`wait_for`)."""
        return self.stack(self.schedule.rows(step))

    def stack(self, rows: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The samples of ``rows`` stacked array by array (grids, decoder inputs, labels, ...)."""
        parts = zip(*(self.samples[int(row)] for row in rows), strict=True)
        return tuple(torch.from_numpy(np.stack(part)) for part in parts)
