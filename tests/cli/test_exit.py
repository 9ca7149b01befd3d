"""Faults around a run (full disk, size limit, out of memory, signals, closed pipes): one line on
stderr, the right exit code, the previous result intact and no temporary left behind."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_dropsembles import cli
from napari_dropsembles.core.io import atomic
from napari_dropsembles.core.io.volumes import write_volume
from napari_dropsembles.core.networks import checkpoint
from napari_dropsembles.core.networks.checkpoint import save_prior
from tests.conftest import make_tiny_prior, sphere_volume

FAST = ["--steps", "2", "--members", "2", "--resolution", "2", "--device", "cpu"]


@pytest.fixture
def case(tmp_path):
    """An observation, a tiny prior, and a previous good result in ``out``."""
    obs = write_volume(tmp_path / "obs.nii.gz", sphere_volume(radius_mm=8), dtype=np.uint8)
    prior = save_prior(make_tiny_prior(), tmp_path / "prior.safetensors")
    out = tmp_path / "out"
    args = ["reconstruct", str(obs), "--out", str(out), "--prior", str(prior), *FAST, "--quiet"]
    assert cli.main(args) == 0
    return {"obs": obs, "prior": prior, "out": out, "args": args, "before": _snapshot(out)}


def _whole_result(folder: Path) -> bool:
    """A complete result folder: its report and every map read back (the mesh only when the run made one)."""
    from napari_dropsembles.core.results.folder import read_reconstruction

    saved = read_reconstruction(folder)
    return all(np.isfinite(np.asarray(v.data)).all() for v in saved.maps().as_dict().values())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _temporaries(folder: Path) -> list[str]:
    """Hidden temporaries of the tool anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*") if "dropsembles-tmp" in p.name or "dropsembles-old" in p.name]


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    assert "Traceback" not in text
    return lines[0]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "napari_dropsembles.cli", *args], env=env, timeout=300, **kwargs
    )


# --------------------------------------------------------------------------- disk full, size limit


@pytest.mark.slow  # a fresh interpreter runs a whole reconstruction under a file size limit
def test_file_size_limit_exits_2_and_keeps_the_previous_result(case, tmp_path):
    """EFBIG: a file size limit (ulimit -f, RLIMIT_FSIZE) smaller than the maps."""

    def limit():  # in the child: a write past 4 kB fails with EFBIG instead of killing it (SIGXFSZ)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = _run([*case["args"], "--seed", "1"], capture_output=True, text=True, preexec_fn=limit)
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert "size limit" in line and ".nii.gz" in line  # names the file it was writing
    assert _snapshot(case["out"]) == case["before"]
    assert _temporaries(tmp_path) == []


def test_disk_full_exits_2_and_keeps_the_previous_result(case, tmp_path, monkeypatch):
    """ENOSPC in the middle of writing the maps (after some were written)."""
    from napari_dropsembles.core.results import reconstruction as result

    monkeypatch.setattr(result, "write_volume", _failing_after(result.write_volume, 2, errno.ENOSPC))
    code = cli.main([*case["args"], "--seed", "2"])
    assert code == 2
    assert _snapshot(case["out"]) == case["before"]
    assert _temporaries(tmp_path) == []


def _failing_after(real, calls: int, error: int | type[BaseException]):
    """``real``, except that call number ``calls`` raises (an OSError with that errno, or the exception)."""
    made = []

    def wrapper(path, *args, **kwargs):
        made.append(path)
        if len(made) == calls:
            if isinstance(error, int):
                raise OSError(error, os.strerror(error), str(path))
            raise error()
        return real(path, *args, **kwargs)

    return wrapper


def test_disk_full_message(case, capsys, monkeypatch):
    from napari_dropsembles.core.results import reconstruction as result

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(result, "write_volume", full)
    assert cli.main(case["args"]) == 2
    assert "disk is full" in _one_line(capsys.readouterr().err)


def test_memory_error_exits_2_with_one_line(case, capsys, monkeypatch):
    from napari_dropsembles.core.jobs import structures as pipeline  # where the job reconstructs each structure

    def no_memory(*args, **kwargs):
        raise MemoryError()
        yield  # a generator, like the real one

    monkeypatch.setattr(pipeline, "reconstruct_steps", no_memory)
    code = cli.main(case["args"])
    assert code == 2
    assert "out of memory" in _one_line(capsys.readouterr().err)
    assert _snapshot(case["out"]) == case["before"]


# --------------------------------------------------------------------------- interrupted writes and signals


@pytest.mark.parametrize("error", [KeyboardInterrupt, cli.Terminated])
def test_interrupted_while_writing_keeps_the_previous_result(case, tmp_path, monkeypatch, capsys, error):
    """Ctrl-C or SIGTERM after two maps were written, before the rest: nothing of the new run lands."""
    from napari_dropsembles.core.results import reconstruction as result

    monkeypatch.setattr(result, "write_volume", _failing_after(result.write_volume, 3, error))
    code = cli.main([*case["args"], "--seed", "3"])
    assert code == (130 if error is KeyboardInterrupt else 143)
    _one_line(capsys.readouterr().err)
    assert _snapshot(case["out"]) == case["before"]
    assert _temporaries(tmp_path) == []


@pytest.mark.slow  # a fresh interpreter per signal, each stopped in the middle of a reconstruction
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_signal_mid_run(case, tmp_path, signum, code):
    """A signal once the run is under way: the out folder holds the old or the new result, whole;
    SIGTERM/SIGINT leave no temporary; after SIGKILL the next run removes what was left."""
    args = [a for a in case["args"] if a != "--quiet"] + ["--steps", "400", "--seed", "4"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_dropsembles.cli", *args],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    first = proc.stderr.readline()  # the first progress line: the work has started
    assert first, "no progress line"
    time.sleep(0.5)
    proc.send_signal(signum)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode in (code, 0)
    after = _snapshot(case["out"])
    assert after == case["before"] or _whole_result(case["out"])  # whole old, or whole new
    if signum != signal.SIGKILL:
        assert "Traceback" not in rest
        assert _temporaries(tmp_path) == []
    assert cli.main([*case["args"], "--seed", "5"]) == 0
    assert _temporaries(tmp_path) == []


def test_next_run_removes_temporaries_of_a_killed_run(case, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_folder = tmp_path / f".out{atomic._TMP_TAG}{dead.pid}-abc"
    stale_folder.mkdir()
    (stale_folder / "mean.nii.gz").write_bytes(b"half")
    stale_file = case["out"] / f".report.json{atomic._TMP_TAG}{dead.pid}-xyz.tmp.json"
    stale_file.write_bytes(b"{")
    mine = tmp_path / f".out{atomic._TMP_TAG}{os.getpid()}-live"  # a live process's: kept
    mine.mkdir()
    assert cli.main([*case["args"], "--seed", "6"]) == 0
    assert not stale_folder.exists() and not stale_file.exists()
    assert mine.exists()


def test_pretrain_interrupted_while_saving_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    target = tmp_path / "p.safetensors"
    with pytest.raises(KeyboardInterrupt):
        save_prior(make_tiny_prior(), target)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_prior_is_never_saved(tmp_path):
    prior = make_tiny_prior()
    prior.models[0].decoder["fc0_w"][0, 0, 0, 0] = float("nan")
    with pytest.raises(checkpoint.CheckpointError, match="fc0_w"):
        save_prior(prior, tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_pretrain_stops_on_a_non_finite_loss(tmp_path, monkeypatch, capsys):
    import torch

    from napari_dropsembles.core.fitting import pretrain

    real = pretrain.train_step

    def diverging(*args, **kwargs):
        loss, logits = real(*args, **kwargs)
        return loss * torch.tensor(float("inf")), logits

    monkeypatch.setattr(pretrain, "train_step", diverging)
    out = tmp_path / "p.safetensors"
    argv = ["pretrain", "--out", str(out), "--steps", "3", "--samples", "2", "--batch-size", "1", "--grid", "8",
            "--hidden", "8", "--blocks", "1", "--device", "cpu", "--quiet"]
    assert cli.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "diverged" in line and "--lr" in line
    assert not out.exists() and _temporaries(tmp_path) == []


# --------------------------------------------------------------------------- closed pipes


def test_closed_stdout_pipe(case, tmp_path):
    """``reconstruct ... | head -c1``: the files are written, then one line and exit 141."""
    out = tmp_path / "piped"
    args = [a if a != str(case["out"]) else str(out) for a in case["args"] if a != "--quiet"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is printed
    done = _run(args, stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    assert done.returncode == 141
    assert "Traceback" not in done.stderr
    assert "pipe was closed" in done.stderr.strip().splitlines()[-1]  # after the progress lines
    assert (out / "report.json").is_file()


@pytest.mark.slow  # a fresh interpreter runs a whole reconstruction: about 15 s
def test_closed_stderr_still_runs(case, tmp_path):
    """``2>&-``: sys.stderr is None in the child; a good run still writes everything and exits 0."""
    out = tmp_path / "nostderr"
    args = [a if a != str(case["out"]) else str(out) for a in case["args"] if a != "--quiet"]
    done = _run(args, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
    assert done.returncode == 0
    assert (out / "report.json").is_file() and (out / "mean.nii.gz").is_file()
    bad = _run(["reconstruct", str(tmp_path / "missing.nii.gz"), "--out", str(out)], preexec_fn=lambda: os.close(2))
    assert bad.returncode == 2
