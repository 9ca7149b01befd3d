"""Run a cohort's tasks on dask.distributed (a LocalCluster, or an existing scheduler), or in this process.

dask does the scheduling, the retries after a worker dies and the GPU bookkeeping (the ``GPU``
resource: a task that claims one waits for a worker that declares one free). This module only
plans (skipping finished tasks), submits, collects the rows and writes the summary.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config.errors import Cancelled, InputError
from ..config.progress import CancelFlag, Progress, check_cancel, drive
from ..io.atomic import ensure_writable_dir
from ..networks.threads import WORKERS_ENV
from .manifest import CohortTask
from .summary import cohort_rows, write_summary
from .task import PROGRESS_TOPIC, base_row, read_done_row, remove_leftovers, run_task, tell_the_client

WORKER_MEMORY_BYTES = 2 * 1024**3  # what one reconstruction worker may need at most on the CPU
POLL_S = 0.1
REPORT_EVERY_S = 0.5  # how often the running cases' progress is reported


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
        import torch  # torch: loaded when first used

        return max(1, torch.cuda.device_count())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil  # psutil (optional): loaded when first used

        by_memory = max(1, int(psutil.virtual_memory().total // WORKER_MEMORY_BYTES))
    except ImportError:
        by_memory = cores
    return max(1, min(cores, by_memory))


def start_local_cluster(workers: int, *, gpu: bool = False, dashboard_address: str = ":8787"):
    """A LocalCluster of worker processes running one task each; with ``gpu``, each declares one GPU.
    A task's torch uses the worker's share of the cores (``cores // workers``, core/networks/threads)."""
    import dask  # dask.distributed: loaded for cohorts only
    from distributed import Client, LocalCluster

    # the workers' statistical profiler samples each task's stack every 10 ms: CPU and interpreter-lock time
    # taken from the reconstruction (Python between torch calls); only the dashboard's profile page loses it
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            resources={"GPU": 1} if gpu else None,
            dashboard_address=dashboard_address,
            env={WORKERS_ENV: str(workers)},  # idle OpenMP threads sleep there too: the env is inherited
        )
    return Client(cluster), cluster


def _dashboard_serves() -> bool:
    """True when the dask dashboard is served here (it needs bokeh)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _dashboard(client) -> str | None:
    link = getattr(client, "dashboard_link", None)
    if not link:
        return None
    if not _dashboard_serves():
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
            yield from _run_here(todo, out, rows, progress, cancel, total)
        elif todo:
            own_client = own_cluster = None
            if client is None:
                if scheduler is not None:
                    from distributed import Client  # dask.distributed: loaded for cohorts only

                    try:
                        own_client = client = Client(scheduler, timeout="30s")
                    except OSError as error:
                        raise InputError(f"cannot reach the dask scheduler at {scheduler}: {error}") from None
                else:
                    gpu = any(task.gpu for task in todo)
                    count = workers if workers is not None else default_workers(gpu)
                    if gpu:  # one worker per GPU: a task never shares its GPU by accident
                        count = min(count, default_workers(gpu=True))
                    yield Progress("cohort", len(rows), total, message=f"starting {count} worker(s)",
                                   extra={"starting": count})
                    own_client, own_cluster = start_local_cluster(count, gpu=gpu, dashboard_address=dashboard_address)
                    client = own_client
            dashboard = _dashboard(client)
            serves = dashboard is not None and _dashboard_serves()
            yield Progress("cohort", len(rows), total, message="dashboard",
                           extra={"dashboard": dashboard, "dashboard_serves": serves})
            try:
                yield from _run_on_dask(client, todo, out, rows, progress, cancel, total)
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


class _Heard:
    """The latest fraction of each running case, as told from workers or a helper thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fractions: dict[str, float] = {}
        self._sent: dict[str, float] = {}
        self._sent_s = 0.0

    def tell(self, task_id: str, fraction: float) -> None:
        with self._lock:
            self._fractions[task_id] = float(fraction)

    def event(self, event) -> None:  # a dask event: (time, {"task": ..., "fraction": ...})
        message = event[1] if isinstance(event, tuple) else event
        if isinstance(message, dict) and "task" in message:
            self.tell(str(message["task"]), float(message.get("fraction", 0.0)))

    def settled(self, task_id: str) -> None:
        with self._lock:
            self._fractions.pop(task_id, None)

    def report(self, settled: int, total: int) -> Progress | None:
        """A report of the running cases when they moved (at most every REPORT_EVERY_S), else None."""
        now = time.perf_counter()
        with self._lock:
            fractions = dict(self._fractions)
        if fractions == self._sent or now - self._sent_s < REPORT_EVERY_S:
            return None
        self._sent, self._sent_s = fractions, now
        return Progress("cohort", settled, total, extra={"case_progress": fractions})


def _run_here(todo, out: Path, rows: dict, progress, cancel: CancelFlag | None, total: int) -> Generator:
    """The tasks one by one in this process (a helper thread runs each, so that its progress is reported)."""
    for task in todo:
        check_cancel(cancel)
        heard, outcome = _Heard(), {}

        def work(task=task, heard=heard, outcome=outcome) -> None:
            try:
                outcome["row"] = run_task(task, str(out), cancel=cancel, tell=heard.tell)
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=work, name=f"dropsembles-{task.task_id}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            report = heard.report(len(rows), total)
            if report is not None:
                yield report
        if "error" in outcome:
            raise outcome["error"]
        rows[task.task_id] = outcome["row"]
        yield progress(task.task_id, rows[task.task_id])


def _run_on_dask(client, todo, out: Path, rows: dict, progress, cancel: CancelFlag | None, total: int) -> Generator:
    from distributed import as_completed  # dask.distributed: loaded for cohorts only

    run = uuid.uuid4().hex[:8]
    heard = _Heard()
    client.subscribe_topic(PROGRESS_TOPIC, heard.event)
    futures = {}
    for task in todo:
        future = client.submit(
            run_task,
            task,
            str(out),
            tell=tell_the_client,
            key=f"dropsembles-{task.task_id}-{run}",
            resources={"GPU": 1} if task.gpu else None,
            pure=False,
        )
        futures[future.key] = (future, task)
    pending = as_completed([future for future, _ in futures.values()])
    try:
        while not pending.is_empty():
            if cancel is not None and cancel.is_set():
                client.cancel([future for future, _ in futures.values() if not future.done()])
                raise Cancelled("cancelled by the user")
            if not pending.has_ready():
                report = heard.report(len(rows), total)
                if report is not None:
                    yield report
                time.sleep(POLL_S)
                continue
            for future in pending.next_batch(block=False):
                task = futures[future.key][1]
                try:
                    row = future.result()
                except Exception as error:  # noqa: BLE001 - KilledWorker after repeated worker deaths
                    row = _killed_row(task, error)
                rows[task.task_id] = row
                heard.settled(task.task_id)
                yield progress(task.task_id, row)
    finally:
        with contextlib.suppress(Exception):  # the client may be closing
            client.unsubscribe_topic(PROGRESS_TOPIC)


def run_cohort(tasks: Sequence[CohortTask], out_dir: str | Path, **kwargs) -> CohortResult:
    """:func:`run_cohort_steps` to the end (scripts and notebooks)."""
    return drive(run_cohort_steps(tasks, out_dir, **kwargs))
