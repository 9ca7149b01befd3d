"""One cohort task on a worker: reconstruct a (scan, structure), write its folder atomically, return its row.

Layout of a cohort's output folder::

    cases/<task>/        mean/variance/entropy/mutual_information .nii.gz, mesh.ply, report.json, case.json
    failed/<task>.json   the row of a task that failed, with its one-line error
    .cohort/attempts.log one line per attempt started (task, pid, worker)

A task's folder appears only when complete (written in ``cases/.tmp-<task>-<random>`` then
renamed), and ``case.json`` holds the input hash that a rerun compares to skip it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import Cancelled, DropsemblesError
from ..io import atomic_write_bytes, binary_mask_from_volume, ensure_writable_dir, read_volume
from ..progress import CancelFlag, drive
from .manifest import CohortTask

CASES = "cases"
FAILED = "failed"
STATE = ".cohort"
CASE_FILE = "case.json"
OUTPUT_FILES = ("mean.nii.gz", "variance.nii.gz", "entropy.nii.gz", "report.json", CASE_FILE)
METRIC_KEYS = ("dice", "hd95_mm", "ece", "ece_band", "nll", "brier", "auroc", "auroc_band")
BASELINE_KEYS = ("nearest", "linear", "shape_based")


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


def one_line(error: BaseException) -> str:
    """A user-facing error as one line (project errors as they are; others with their type)."""
    text = str(error) if isinstance(error, DropsemblesError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:500]


@lru_cache(maxsize=4)
def _load_prior(paths: tuple[str, ...], stamps: tuple[int, ...]):
    """One prior file as is; several single-model priors combined (a deep ensemble), as `reconstruct --prior`."""
    from ..checkpoint import Prior, load_prior
    from ..errors import InputError

    if not paths:
        return load_prior(None)
    priors = [load_prior(p) for p in paths]
    first = priors[0]
    if len(priors) == 1:
        return first
    if any(other.config != first.config for other in priors[1:]):
        raise InputError(f"the priors {', '.join(p.name for p in priors)} have different architectures")
    return Prior(config=first.config, models=[m for p in priors for m in p.models], training=first.training,
                 path=first.path)


def load_task_prior(task: CohortTask):
    """The task's prior, loaded once per worker process (reloaded when a file changes)."""
    return _load_prior(task.priors, tuple(Path(p).stat().st_mtime_ns for p in task.priors))


def _worker_name() -> str:
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

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
    row = {key: _finite(ours.get(key)) for key in METRIC_KEYS}
    for name in BASELINE_KEYS:
        if name in metrics:
            row[f"dice_{name}"] = _finite(metrics[name].get("dice"))
    return row


def publish_dir(tmp: Path, final: Path) -> None:
    """Put a complete folder in place with renames, so a reader never sees a half-written one."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(tmp, final)
        except OSError:  # another attempt of the same task won the race: its outputs are the same
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)


def _reconstruct_into(task: CohortTask, folder: Path, row: dict, cancel: CancelFlag | None) -> None:
    from ..evaluate import compare_steps
    from ..pipeline import reconstruct
    from ..structures import structure_row

    prior = load_task_prior(task)
    volume = read_volume(task.observation)
    observation = binary_mask_from_volume(volume, label=task.label)
    config = replace(task.config, keep_members=True)
    result = reconstruct(observation, prior, config, cancel=cancel)
    if task.ground_truth:
        truth_volume = read_volume(task.ground_truth)
        if isinstance(task.label, int):
            truth = binary_mask_from_volume(truth_volume, label=task.label)
        else:
            truth = binary_mask_from_volume(truth_volume, threshold=0.5)
        tick = time.perf_counter()
        result.metrics = drive(
            compare_steps(
                result.fitted, observation, truth, threshold=config.threshold, empty_slices=config.empty_slices
            )
        )
        result.timings["evaluate"] = time.perf_counter() - tick
    stats = structure_row(task.label if isinstance(task.label, int) else 1, result)
    row.update(
        volume_ml=stats.volume_ml,
        volume_ml_std=_finite(stats.volume_ml_std),
        band_variance=_finite(stats.band_variance),
        **_metric_columns(result.metrics, result.fitted.method),
        device=result.device,
        **{f"{name}_s": round(value, 3) for name, value in result.timings.items() if name != "total"},
    )
    result.save(folder)


def run_task(task: CohortTask, out_dir: str, cancel: CancelFlag | None = None) -> dict:
    """Reconstruct one task into ``out_dir``; return its summary row (done or failed; raises only Cancelled)."""
    out = Path(out_dir)
    worker = _worker_name()
    started, cpu_started = time.perf_counter(), time.process_time()
    row = {**base_row(task), "worker": worker}
    _log_attempt(out, task, worker)
    threads = torch.get_num_threads()
    torch.set_num_threads(task.torch_threads)
    tmp = ensure_writable_dir(out / CASES) / f".tmp-{task.task_id}-{uuid.uuid4().hex[:8]}"
    try:
        _select_gpu(task, worker)
        tmp.mkdir()
        _reconstruct_into(task, tmp, row, cancel)
        seconds = round(time.perf_counter() - started, 3)
        cpu_s = round(time.process_time() - cpu_started, 3)  # this process's CPU time: the cost without the load
        row.update(status="done", seconds=seconds, cpu_s=cpu_s, output=f"{CASES}/{task.task_id}")
        atomic_write_bytes(tmp / CASE_FILE, json.dumps(row, indent=2).encode())
        publish_dir(tmp, case_dir(out, task.task_id))
        with contextlib.suppress(FileNotFoundError):
            failed_file(out, task.task_id).unlink()
    except Cancelled:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as error:  # noqa: BLE001 - a failed case is recorded and the cohort goes on
        shutil.rmtree(tmp, ignore_errors=True)
        row.update(status="failed", error=one_line(error), seconds=round(time.perf_counter() - started, 3))
        ensure_writable_dir(out / FAILED)
        atomic_write_bytes(failed_file(out, task.task_id), json.dumps(row, indent=2).encode())
    finally:
        torch.set_num_threads(threads)
    return row


def remove_leftovers(out_dir: str | Path, task_ids) -> None:
    """Temporary folders left by attempts that died (a killed worker) of tasks that are now settled."""
    folder = Path(out_dir) / CASES
    for task_id in task_ids:
        for leftover in folder.glob(f".tmp-{task_id}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
