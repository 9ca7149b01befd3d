"""One cohort task on a worker: reconstruct a (scan, structure), write its folder atomically, return its row.

Layout of a cohort's output folder::

    cases/<task>/        mean/variance/entropy/mutual_information .nii.gz, mesh.ply, report.json, case.json
    failed/<task>.json   the row of a task that failed, with its one-line error
    .cohort/attempts.log one line per attempt started (task, pid, worker)

A task is one call of the reconstruct job (core/jobs/reconstruct_api). Its folder appears only when
complete (written beside it and swapped in whole by core/io/atomic), and ``case.json`` holds the input
hash that a rerun compares to skip it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..config.errors import Cancelled
from ..config.progress import CancelFlag, Progress
from ..io.atomic import TEMPORARY_TAG, atomic_folder, atomic_write_bytes, ensure_writable_dir
from ..io.messages import one_line
from ..jobs.reconstruct_api import ReconstructRequest, run_reconstruct
from ..networks.threads import use_threads
from ..results.folder import save_structures
from ..results.structures import structure_row
from ..scoring.metrics import REPORTED
from ..slices.baselines import BASELINES
from .manifest import CohortTask

CASES = "cases"
FAILED = "failed"
STATE = ".cohort"
CASE_FILE = "case.json"
OUTPUT_FILES = ("mean.nii.gz", "variance.nii.gz", "entropy.nii.gz", "report.json", CASE_FILE)


def case_dir(out_dir: str | Path, task_id: str) -> Path:
    return Path(out_dir) / CASES / task_id


def failed_file(out_dir: str | Path, task_id: str) -> Path:
    return Path(out_dir) / FAILED / f"{task_id}.json"


def read_done_row(out_dir: str | Path, task: CohortTask) -> dict | None:
    """The row of a finished task whose inputs are unchanged (same hash, every output present), else None."""
    folder = case_dir(out_dir, task.task_id)
    if not all((folder / name).is_file() for name in OUTPUT_FILES):
        return None
    try:
        row = json.loads((folder / CASE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return row if row.get("input_hash") == task.input_hash and row.get("status") == "done" else None


def read_failed_row(out_dir: str | Path, task: CohortTask) -> dict | None:
    path = failed_file(out_dir, task.task_id)
    try:
        row = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return row if row.get("input_hash") == task.input_hash else None


def base_row(task: CohortTask) -> dict:
    return {
        "task": task.task_id,
        "case": task.case_id,
        "label": task.label,
        "status": "pending",
        "error": "",
        "observation": task.observation,
        "ground_truth": task.ground_truth or "",
        "method": task.config.method,
        "members": task.config.members,
        "input_hash": task.input_hash,
    }


def _worker_name() -> str:
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker  # dask.distributed: loaded for cohorts only

        return str(get_worker().name)
    return "local"


def _select_gpu(task: CohortTask, worker: str) -> None:
    """On a worker of a local multi-GPU cluster (names 0, 1, ...), use the GPU of the same index."""
    if task.config.device in ("auto", "cuda") and torch.cuda.is_available() and worker.isdigit():
        torch.cuda.set_device(int(worker) % torch.cuda.device_count())


def _log_attempt(out: Path, task: CohortTask, worker: str) -> None:
    state = ensure_writable_dir(out / STATE)
    line = json.dumps({"task": task.task_id, "pid": os.getpid(), "worker": worker, "time": time.time()}) + "\n"
    fd = os.open(state / "attempts.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: whole lines even from many processes
    finally:
        os.close(fd)


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _metric_columns(metrics: dict | None, method: str) -> dict:
    if not metrics:
        return {}
    ours = metrics.get(method, {})
    row = {key: _finite(ours.get(key)) for key in REPORTED}
    for name in BASELINES:
        if name in metrics:
            row[f"dice_{name}"] = _finite(metrics[name].get("dice"))
    return row


CASE_PHASES = {"prepare": 0.02, "finetune": 0.55, "check": 0.15, "predict": 0.18, "mesh": 0.03, "evaluate": 0.07}
PROGRESS_TOPIC = "dropsembles-case-progress"  # dask event topic of a running case's fraction
PROGRESS_EVERY_S = 1.0


def case_fraction(progress: Progress) -> float:
    """How far one case is, from a report of its reconstruction (phases in the order they run)."""
    done = 0.0
    for phase, weight in CASE_PHASES.items():
        if phase == progress.phase:
            return min(1.0, done + weight * min(progress.fraction, 1.0))
        done += weight
    return 0.0


def fraction_reporter(task_id: str, tell: Callable[[str, float], None] | None) -> Callable[[Progress], None] | None:
    """A progress callback telling ``tell(task_id, fraction)`` at most once a second (None without ``tell``)."""
    if tell is None:
        return None
    last = [0.0]

    def report(progress: Progress) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            tell(task_id, case_fraction(progress))

    return report


def tell_the_client(task_id: str, fraction: float) -> None:
    """Send a running case's fraction to the dask client (from inside a worker; nothing elsewhere)."""
    with contextlib.suppress(Exception):  # not on a worker, or the scheduler is going away
        from distributed import get_worker  # dask.distributed: loaded for cohorts only

        get_worker().log_event(PROGRESS_TOPIC, {"task": task_id, "fraction": round(float(fraction), 3)})


def _reconstruct_into(task: CohortTask, folder: Path, row: dict, cancel: CancelFlag | None, on_progress=None) -> None:
    request = ReconstructRequest(
        observation=task.observation,
        config=replace(task.config, keep_members=True),
        prior=task.priors,
        label=task.label,
        ground_truth=task.ground_truth or None,
    )
    structures = run_reconstruct(request, cancel=cancel, on_progress=on_progress).structures
    ((label, result),) = structures.results.items()  # a task is one structure
    stats = structure_row(label, result)
    row.update(
        volume_ml=stats.volume_ml,
        volume_ml_std=_finite(stats.volume_ml_std),
        band_variance=_finite(stats.band_variance),
        **_metric_columns(result.metrics, result.fitted.method),
        device=result.device,
        **{f"{name}_s": round(value, 3) for name, value in result.timings.items() if name != "total"},
    )
    save_structures(structures, folder)


def run_task(
    task: CohortTask, out_dir: str, cancel: CancelFlag | None = None, tell: Callable[[str, float], None] | None = None
) -> dict:
    """Reconstruct one task into ``out_dir``; return its summary row (done or failed; raises only Cancelled).

    ``tell(task_id, fraction)`` hears how far the case is, about once a second (:func:`tell_the_client`
    on a dask worker)."""
    out = Path(out_dir)
    worker = _worker_name()
    started, cpu_started = time.perf_counter(), time.process_time()
    row = {**base_row(task), "worker": worker}
    _log_attempt(out, task, worker)
    threads = contextlib.ExitStack()  # torch's threads: the worker's share of the cores (core/networks/threads)
    threads.enter_context(use_threads("worker", fixed=task.torch_threads))
    try:
        _select_gpu(task, worker)
        with atomic_folder(case_dir(out, task.task_id), keep_others=False) as tmp:  # another attempt's: replaced
            _reconstruct_into(task, tmp, row, cancel, fraction_reporter(task.task_id, tell))
            seconds = round(time.perf_counter() - started, 3)
            cpu_s = round(time.process_time() - cpu_started, 3)  # this process's CPU time: the cost without the load
            row.update(status="done", seconds=seconds, cpu_s=cpu_s, output=f"{CASES}/{task.task_id}")
            atomic_write_bytes(tmp / CASE_FILE, json.dumps(row, indent=2).encode())
        with contextlib.suppress(FileNotFoundError):
            failed_file(out, task.task_id).unlink()
    except Cancelled:
        raise
    except Exception as error:  # noqa: BLE001 - a failed case is recorded and the cohort goes on
        seconds = round(time.perf_counter() - started, 3)
        row.update(status="failed", error=one_line(error, 500, with_type=True), seconds=seconds)
        ensure_writable_dir(out / FAILED)
        atomic_write_bytes(failed_file(out, task.task_id), json.dumps(row, indent=2).encode())
    finally:
        threads.close()
    return row


def remove_leftovers(out_dir: str | Path, task_ids) -> None:
    """Temporary folders left by attempts that died (a killed worker) of tasks that are now settled."""
    folder = Path(out_dir) / CASES
    for task_id in task_ids:
        for leftover in folder.glob(f".{task_id}{TEMPORARY_TAG}*"):
            shutil.rmtree(leftover, ignore_errors=True)
