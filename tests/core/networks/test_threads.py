"""The thread policy (core/networks/threads): set before torch loads, chosen per run, applied everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.networks import threads
from napari_dropsembles.core.networks.threads import THREADS_ENV, WORKERS_ENV, choose_threads, use_threads

PROBE = (
    "import json, os, sys, napari_dropsembles; e = os.environ; "
    "print(json.dumps([e.get('OMP_WAIT_POLICY'), e.get('GOMP_SPINCOUNT'), e.get('OPENBLAS_NUM_THREADS'), "
    "'torch' in sys.modules]))"
)


def _probe(**env: str) -> list:
    own = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_NUM_THREADS")
    clean = {k: v for k, v in os.environ.items() if k not in own}
    command = [sys.executable, "-c", PROBE]
    done = subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_importing_the_package_makes_idle_threads_spin_briefly_and_openblas_single_before_torch_and_numpy_load():
    assert _probe() == [None, "10000", "1", False]
    assert _probe(OMP_WAIT_POLICY="ACTIVE", OPENBLAS_NUM_THREADS="2") == ["ACTIVE", None, "2", False]  # the user's
    assert _probe(GOMP_SPINCOUNT="1000") == [None, "1000", "1", False]
    environ: dict[str, str] = {}
    assert threads.prepare_threads(environ) is False and environ == {}  # torch and numpy are loaded here: too late


def test_during_a_run_openblas_runs_one_thread_and_torch_its_own_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    with use_threads("cli", environ={THREADS_ENV: "2"}):
        blas = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
        assert blas and set(blas) == {1}
        assert torch.get_num_threads() == 2


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    return monkeypatch


@pytest.mark.parametrize(("busy", "expected"), [(0.05, 2), (0.45, 2), (1.0, 1), (1.9, 1)])
def test_auto_uses_the_cores_other_processes_leave_free(two_cores, busy, expected):
    two_cores.setattr(threads, "busy_elsewhere", lambda: busy)
    choice = choose_threads("cli", environ={})
    assert (choice.threads, choice.source, choice.busy_elsewhere) == (expected, "auto", busy)
    assert "auto" in choice.describe()


def test_the_viewer_keeps_a_core_and_workers_share_the_cores(two_cores):
    two_cores.setattr(threads, "busy_elsewhere", lambda: 0.0)
    assert choose_threads("viewer", environ={}).threads == 1
    assert choose_threads("worker", environ={WORKERS_ENV: "1"}).threads == 2
    assert choose_threads("worker", environ={WORKERS_ENV: "2"}).threads == 1
    assert choose_threads("worker", environ={}).threads == 1  # a worker of an unknown cluster: dask's one thread
    assert choose_threads("worker", environ={WORKERS_ENV: "1", "OMP_NUM_THREADS": "1"}).threads == 2  # dask's own


def test_a_fixed_count_wins_and_a_bad_one_is_named(two_cores):
    assert choose_threads("viewer", environ={THREADS_ENV: "3"}).threads == 3
    assert choose_threads("cli", environ={"OMP_NUM_THREADS": "1"}).source == "OMP_NUM_THREADS"
    assert choose_threads("cli", environ={THREADS_ENV: "2", "OMP_NUM_THREADS": "1"}).threads == 2
    with pytest.raises(InputError, match=THREADS_ENV):
        choose_threads("cli", environ={THREADS_ENV: "many"})
    with pytest.raises(ValueError):
        choose_threads("gui", environ={})


def test_use_threads_sets_torch_restores_it_and_an_inner_run_keeps_the_outer_choice():
    before = torch.get_num_threads()
    with use_threads("cli", environ={THREADS_ENV: "2"}) as outer:
        assert torch.get_num_threads() == 2 and threads.active_choice() is outer
        with use_threads("worker", environ={THREADS_ENV: "1"}) as inner:  # a cohort case in this process
            assert inner is outer and torch.get_num_threads() == 2
        with use_threads("worker", fixed=1):  # a task that names its threads
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before and threads.active_choice() is None


def test_the_load_of_another_busy_process_is_measured():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        threads.mark_cpu()
        assert threads.busy_elsewhere(min_window_s=0.5) > 0.6
    finally:
        hog.kill()
        hog.wait()


def test_the_command_line_runs_its_command_under_the_policy(monkeypatch):
    from napari_dropsembles.cli import commands, main

    seen = []
    monkeypatch.setitem(commands.COMMANDS, "simulate", lambda args: seen.append(torch.get_num_threads()) or 0)
    monkeypatch.setenv(THREADS_ENV, "2")
    before = torch.get_num_threads()
    assert main(["simulate", "--out", "unused"]) == 0
    assert seen == [2] and torch.get_num_threads() == before
