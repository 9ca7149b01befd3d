"""Cohorts: manifests, resume, sharding, the summary table, and a LocalCluster that loses a worker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_dropsembles.cli import main
from napari_dropsembles.core.cohort import (
    case_dir,
    plan_tasks,
    read_manifest,
    read_summary,
    run_cohort,
    shard,
)
from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.networks.checkpoint import save_prior
from tests.cohort_support import write_case
from tests.conftest import make_tiny_prior, sphere_volume

TINY_CASE = ReconstructionConfig(members=2, finetune=FinetuneConfig(steps=3), resolution_mm=2.0, device="cpu")
MAPS = ("mean", "variance", "entropy", "mutual_information")


@pytest.fixture
def cohort(tmp_path) -> tuple[Path, Path]:
    """Six tiny cases (the first with a ground truth) and a tiny prior file."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        write_case(inputs, f"case{i}", 6.0 + i, truth=i == 0)
    prior = save_prior(make_tiny_prior(), tmp_path / "prior.safetensors")
    return inputs, prior


def attempts(out: Path) -> list[str]:
    log = out / ".cohort" / "attempts.log"
    return [json.loads(line)["task"] for line in log.read_text().splitlines()] if log.is_file() else []


def same_outputs(a: Path, b: Path) -> None:
    for name in MAPS:
        va, vb = read_volume(a / f"{name}.nii.gz"), read_volume(b / f"{name}.nii.gz")
        np.testing.assert_array_equal(va.data, vb.data)
        np.testing.assert_array_equal(va.affine, vb.affine)
    assert (a / "mesh.ply").is_file() == (b / "mesh.ply").is_file()
    if (a / "mesh.ply").is_file():
        assert (a / "mesh.ply").read_bytes() == (b / "mesh.ply").read_bytes()


def test_folder_manifest_pairs_ground_truths_and_skips_them(cohort):
    inputs, _ = cohort
    cases = read_manifest(inputs)
    assert [c.case_id for c in cases] == [f"case{i}" for i in range(6)]
    assert cases[0].ground_truth == (inputs / "case0_gt.nii.gz").resolve()
    assert all(c.ground_truth is None for c in cases[1:])
    globbed = read_manifest(str(inputs / "case[12].nii.gz"))
    assert [c.case_id for c in globbed] == ["case1", "case2"]


def test_csv_manifest_reads_labels_and_per_case_options(tmp_path):
    labels = sphere_volume(7, spacing_mm=(2, 2, 4), size_mm=30)
    labels = labels.with_data(labels.data * 3)
    write_volume(tmp_path / "multi.nii.gz", labels, dtype=np.uint8)
    write_case(tmp_path, "single", 8)
    (tmp_path / "m.csv").write_text(
        "case,observation,labels,members,steps\nA,multi.nii.gz,3,3,2\nB,single.nii.gz,,,\n"
    )
    cases = read_manifest(tmp_path / "m.csv")
    tasks = plan_tasks(cases, TINY_CASE)
    assert [t.task_id for t in tasks] == ["A.label3", "B"]
    assert (tasks[0].config.members, tasks[0].config.finetune.steps) == (3, 2)
    assert (tasks[1].config.members, tasks[1].config.finetune.steps) == (2, 3)
    each = plan_tasks(read_manifest(tmp_path / "multi.nii.gz"), TINY_CASE, labels="each")
    assert [t.label for t in each] == [3]
    merged = plan_tasks(read_manifest(tmp_path / "multi.nii.gz"), TINY_CASE, labels="all")
    assert [(t.task_id, t.label) for t in merged] == [("multi", "all")]
    assert merged[0].input_hash != each[0].input_hash
    result = run_cohort(tasks, tmp_path / "out", workers=0)
    assert [r["status"] for r in result.rows] == ["done", "done"], result.rows
    assert list(read_summary(tmp_path / "out")["label"]) == ["3", ""]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("observation,colour\nx.nii.gz,red\n", "unknown column"),
        ("observation,members\nmissing.nii.gz,2\n", "not found"),
        ("case\nA\n", "'observation' column"),
        ("observation,members\nx.nii.gz,two\n", "members must be an integer"),
    ],
)
def test_bad_manifest_says_what_to_change(tmp_path, text, message):
    write_case(tmp_path, "x", 8)
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_bad_per_case_option_names_the_case_and_column(tmp_path):
    write_case(tmp_path, "x", 8)
    (tmp_path / "m.csv").write_text("case,observation,members\nA,x.nii.gz,0\n")
    with pytest.raises(InputError, match="case A: members must"):
        plan_tasks(read_manifest(tmp_path / "m.csv"), TINY_CASE)


def test_shards_cover_the_manifest_once(cohort):
    inputs, prior = cohort
    tasks = plan_tasks(read_manifest(inputs), TINY_CASE, priors=[prior])
    parts = [shard(tasks, 4, i) for i in range(4)]
    assert sorted(t.task_id for part in parts for t in part) == sorted(t.task_id for t in tasks)
    with pytest.raises(InputError, match="--part-id"):
        shard(tasks, 2, 2)


def test_resume_skips_finished_cases_and_retries_failed_ones(cohort, tmp_path):
    inputs, prior = cohort
    bad = inputs / "case5.nii.gz"
    empty = read_volume(bad)
    write_volume(bad, empty.with_data(np.zeros_like(empty.data)), dtype=np.uint8)  # an empty mask fails
    out = tmp_path / "out"
    tasks = plan_tasks(read_manifest(inputs), TINY_CASE, priors=[prior])[3:]  # case3..case5
    first = run_cohort(tasks, out, workers=0)
    assert [r["status"] for r in first.rows] == ["done", "done", "failed"]
    assert "empty" in first.rows[2]["error"] and "\n" not in first.rows[2]["error"]
    assert (out / "failed" / "case5.json").is_file() and not case_dir(out, "case5").exists()

    again = run_cohort(tasks, out, workers=0)
    assert again.skipped == ["case3", "case4"]
    assert attempts(out) == ["case3", "case4", "case5", "case5"]  # only the failed case ran again

    write_case(inputs, "case5", 8.0)  # fixed input: new content hash
    write_case(inputs, "case3", 9.5)  # a changed input is not skipped either
    tasks = plan_tasks(read_manifest(inputs), TINY_CASE, priors=[prior])[3:]
    fixed = run_cohort(tasks, out, workers=0)
    assert [r["status"] for r in fixed.rows] == ["done"] * 3
    assert fixed.skipped == ["case4"]
    assert not (out / "failed" / "case5.json").exists()
    table = read_summary(out)
    assert list(table["status"]) == ["done"] * 3 and table["volume_ml"].notna().all()


def test_summary_has_metrics_baselines_and_a_row_per_task(cohort, tmp_path):
    inputs, prior = cohort
    tasks = plan_tasks(read_manifest(inputs), TINY_CASE, priors=[prior])
    out = tmp_path / "out"
    run_cohort(tasks[:2], out, manifest_tasks=tasks, workers=0)
    table = read_summary(out)
    assert list(table["task"]) == [t.task_id for t in tasks]
    assert list(table["status"]) == ["done", "done"] + ["pending"] * 4
    first = table.iloc[0]
    for column in ("dice", "hd95_mm", "ece_band", "dice_linear", "dice_shape_based", "volume_ml", "seconds"):
        assert np.isfinite(first[column]), column
    assert np.isnan(table.iloc[1]["dice"])  # no ground truth
    assert first["device"] == "cpu"
    csv = (out / "summary.csv").read_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith("task,case,label,status")


def test_cli_parts_fill_one_summary_and_report_failures(cohort, tmp_path, capsys):
    inputs, prior = cohort
    out = tmp_path / "out"
    common = [str(inputs), "--out", str(out), "--prior", str(prior), "--members", "2", "--steps", "3",
              "--resolution", "2", "--device", "cpu", "--workers", "0", "--num-parts", "3", "--quiet"]
    for part in range(1, 3):
        assert main(["reconstruct-many", *common, "--part-id", str(part)]) == 0
    assert list(read_summary(out)["status"]).count("pending") == 2
    on_cluster = [a for a in common if a != "--quiet"]
    on_cluster[on_cluster.index("--workers") + 1] = "1"  # part 0 on a one-worker LocalCluster
    capsys.readouterr()
    assert main(["reconstruct-many", *on_cluster, "--dashboard-address", ":0", "--part-id", "0"]) == 0
    printed = capsys.readouterr()
    assert "dask dashboard: http" in printed.err and "2 done (0 skipped as unchanged), 0 failed" in printed.out
    table = read_summary(out)
    assert list(table["status"]) == ["done"] * 6
    assert main(["reconstruct-many", *common[:-1], "--part-id", "1"]) == 0
    assert "skipped as unchanged" in capsys.readouterr().out
    assert main(["reconstruct-many", str(tmp_path / "nothing"), "--out", str(out), "--quiet"]) == 2
    assert "neither a folder" in capsys.readouterr().err


def _kill_first_running_worker(out: Path, killed: list[int], stop: threading.Event) -> None:
    """As soon as a worker has started a task, SIGKILL that worker's process (mid-task)."""
    log = out / ".cohort" / "attempts.log"
    while not stop.is_set():
        if log.is_file() and log.read_text().strip():
            entry = json.loads(log.read_text().splitlines()[0])
            killed.append(entry["pid"])
            os.kill(entry["pid"], signal.SIGKILL)
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_local_cluster_survives_a_killed_worker_with_serial_outputs(cohort, tmp_path):
    distributed = pytest.importorskip("distributed")
    inputs, prior = cohort
    tasks = plan_tasks(read_manifest(inputs), TINY_CASE, priors=[prior])
    serial = tmp_path / "serial"
    run_cohort(tasks, serial, workers=0)

    out = tmp_path / "dask"
    killed: list[int] = []
    stop = threading.Event()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    ) as cluster, distributed.Client(cluster) as client:
        killer = threading.Thread(target=_kill_first_running_worker, args=(out, killed, stop), daemon=True)
        killer.start()
        try:
            result = run_cohort(tasks, out, client=client)
        finally:
            stop.set()
            killer.join(5)

    assert killed, "no worker was killed"
    assert [r["status"] for r in result.rows] == ["done"] * 6
    tried = attempts(out)
    assert sorted(set(tried)) == sorted(t.task_id for t in tasks)
    assert any(tried.count(t) == 2 for t in tried), "the killed task did not run again"
    assert len({r["worker"] for r in result.rows}) >= 1
    table = read_summary(out)
    assert sorted(table["task"]) == sorted(t.task_id for t in tasks) and (table["status"] == "done").all()
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]  # no half-written folder left
    for task in tasks:
        same_outputs(case_dir(serial, task.task_id), case_dir(out, task.task_id))


@pytest.mark.parametrize(("gpu", "expected"), [(True, 1), (False, 2)])
def test_tasks_that_claim_a_gpu_never_share_one(cohort, tmp_path, monkeypatch, gpu, expected):
    """One worker with two threads and one GPU: GPU tasks run one at a time, CPU tasks two at a time."""
    distributed = pytest.importorskip("distributed")
    from napari_dropsembles.core.cohort import task as task_module

    inputs, prior = cohort
    tasks = plan_tasks(read_manifest(inputs), TINY_CASE, priors=[prior], gpu=gpu)[:4]
    running, most = [0], [0]
    lock = threading.Lock()
    reconstruct_into = task_module._reconstruct_into

    def counting(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.3)  # long enough for a second task to start if it may
            return reconstruct_into(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(task_module, "_reconstruct_into", counting)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, resources={"GPU": 1}, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        result = run_cohort(tasks, tmp_path / "out", client=client)
    assert result.count("done") == 4
    assert most[0] == expected
