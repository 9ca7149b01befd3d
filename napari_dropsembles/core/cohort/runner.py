"""Run a cohort's tasks on dask.distributed (a LocalCluster, or an existing scheduler), or in this process.

dask does the scheduling, the retries after a worker dies and the GPU bookkeeping (the ``GPU``
resource: a task that claims one waits for a worker that declares one free). This module only
plans (skipping finished tasks), submits, collects the rows and writes the summary.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Cancelled, InputError
from ..io import ensure_writable_dir
from ..progress import CancelFlag, Progress, check_cancel, drive
from .manifest import CohortTask
from .summary import cohort_rows, write_summary
from .task import base_row, read_done_row, remove_leftovers, run_task

WORKER_MEMORY_BYTES = 2 * 1024**3  # what one reconstruction worker may need at most on the CPU
POLL_S = 0.1


@dataclass
class CohortResult:
    """This run's rows (one per task it was given) and the summary of the whole manifest."""

    rows: list[dict]
    summary_csv: Path
    summary_parquet: Path
    dashboard: str | None = None
    skipped: list[str] = field(default_factory=list)  # finished before, inputs unchanged

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)


def default_workers(gpu: bool = False) -> int:
    """Workers for a LocalCluster sized to this machine: one per GPU, or one per core within memory."""
    if gpu:
        import torch

        return max(1, torch.cuda.device_count())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        by_memory = max(1, int(psutil.virtual_memory().total // WORKER_MEMORY_BYTES))
    except ImportError:
        by_memory = cores
    return max(1, min(cores, by_memory))


def start_local_cluster(workers: int, *, gpu: bool = False, dashboard_address: str = ":8787"):
    """A LocalCluster of single-threaded worker processes; with ``gpu``, each declares one GPU."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        resources={"GPU": 1} if gpu else None,
        dashboard_address=dashboard_address,
    )
    return Client(cluster), cluster


def _dashboard(client) -> str | None:
    link = getattr(client, "dashboard_link", None)
    if not link:
        return None
    try:
        import bokeh  # noqa: F401  (the dashboard is served only with bokeh installed)
    except ImportError:
        return f"{link} (install bokeh to serve the dashboard)"
    return link


def _killed_row(task: CohortTask, error: BaseException) -> dict:
    row = base_row(task)
    row.update(status="failed", error=f"the worker died every time it ran this case ({type(error).__name__}); "
                                      "it may need more memory than a worker has")
    return row


def run_cohort_steps(
    tasks: Sequence[CohortTask],
    out_dir: str | Path,
    *,
    manifest_tasks: Sequence[CohortTask] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    dashboard_address: str = ":8787",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, CohortResult]:
    """Run ``tasks`` (skipping those already done with unchanged inputs); yield one Progress per settled task.

    ``client``: an existing ``distributed.Client``; else ``scheduler`` (an address); else a
    LocalCluster of ``workers`` processes (default: sized to the machine); ``workers=0`` runs the
    tasks one by one in this process. ``manifest_tasks`` (default ``tasks``) are the rows of the
    summary: the whole manifest when ``tasks`` is one part of it.
    """
    out = ensure_writable_dir(out_dir)
    manifest_tasks = list(manifest_tasks if manifest_tasks is not None else tasks)
    rows: dict[str, dict] = {}
    skipped = []
    for task in tasks:
        done = read_done_row(out, task)
        if done is not None:
            rows[task.task_id] = done
            skipped.append(task.task_id)
    todo = [task for task in tasks if task.task_id not in rows]
    total = len(tasks)

    def progress(task_id: str, row: dict) -> Progress:
        note = f"{task_id} {row['status']}" + (f": {row['error']}" if row["status"] == "failed" else "")
        counts = {s: sum(r["status"] == s for r in rows.values()) for s in ("done", "failed")}
        return Progress("cohort", len(rows), total, message=note, extra={**counts, "row": row})

    dashboard = None
    yield Progress("cohort", len(rows), total, message=f"{len(skipped)} already done, {len(todo)} to run",
                   extra={"skipped": len(skipped)})
    try:
        if workers == 0 and client is None and scheduler is None:
            for task in todo:
                check_cancel(cancel)
                rows[task.task_id] = run_task(task, str(out), cancel=cancel)
                yield progress(task.task_id, rows[task.task_id])
        elif todo:
            own_client = own_cluster = None
            if client is None:
                if scheduler is not None:
                    from distributed import Client

                    try:
                        own_client = client = Client(scheduler, timeout="30s")
                    except OSError as error:
                        raise InputError(f"cannot reach the dask scheduler at {scheduler}: {error}") from None
                else:
                    gpu = any(task.gpu for task in todo)
                    count = workers if workers is not None else default_workers(gpu)
                    if gpu:  # one worker per GPU: a task never shares its GPU by accident
                        count = min(count, default_workers(gpu=True))
                    own_client, own_cluster = start_local_cluster(count, gpu=gpu, dashboard_address=dashboard_address)
                    client = own_client
            dashboard = _dashboard(client)
            yield Progress("cohort", len(rows), total, message="dashboard", extra={"dashboard": dashboard})
            try:
                yield from _run_on_dask(client, todo, out, rows, progress, cancel)
            finally:
                if own_client is not None:
                    own_client.close()
                if own_cluster is not None:
                    own_cluster.close()
    finally:
        remove_leftovers(out, [t for t, row in rows.items() if row["status"] in ("done", "failed")])
        summary_csv, summary_parquet = write_summary(cohort_rows(manifest_tasks, out), out)
    ordered = [rows.get(task.task_id, base_row(task)) for task in tasks]
    return CohortResult(ordered, summary_csv, summary_parquet, dashboard, skipped)


def _run_on_dask(client, todo, out: Path, rows: dict, progress, cancel: CancelFlag | None) -> Generator:
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = {}
    for task in todo:
        future = client.submit(
            run_task,
            task,
            str(out),
            key=f"dropsembles-{task.task_id}-{run}",
            resources={"GPU": 1} if task.gpu else None,
            pure=False,
        )
        futures[future.key] = (future, task)
    pending = as_completed([future for future, _ in futures.values()])
    while not pending.is_empty():
        if cancel is not None and cancel.is_set():
            client.cancel([future for future, _ in futures.values() if not future.done()])
            raise Cancelled("cancelled by the user")
        if not pending.has_ready():
            time.sleep(POLL_S)
            continue
        for future in pending.next_batch(block=False):
            task = futures[future.key][1]
            try:
                row = future.result()
            except Exception as error:  # noqa: BLE001 - KilledWorker after repeated worker deaths
                row = _killed_row(task, error)
            rows[task.task_id] = row
            yield progress(task.task_id, row)


def run_cohort(tasks: Sequence[CohortTask], out_dir: str | Path, **kwargs) -> CohortResult:
    """:func:`run_cohort_steps` to the end (scripts and notebooks)."""
    return drive(run_cohort_steps(tasks, out_dir, **kwargs))
