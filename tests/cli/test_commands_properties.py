"""Property tests through the command line: any option value or damaged result folder ends in
exit 0 or exit 2 with one line on stderr, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from napari_dropsembles.cli import main
from napari_dropsembles.core.io.volumes import write_volume
from napari_dropsembles.core.networks.checkpoint import save_prior
from tests.conftest import make_tiny_prior, sphere_volume
from tests.hypothesis_support import scaled


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = int(exit_.code or 0)
    return code, err.getvalue()


def _assert_clean(code: int, err: str) -> None:
    assert code in (0, 2), f"exit {code}: {err}"
    assert "Traceback" not in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and ("error" in lines[-1]), err
        if not lines[0].startswith("usage:"):  # argparse prints its usage first; ours is one line
            assert len(lines) == 1, err


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_case")
    obs = write_volume(folder / "obs.nii.gz", sphere_volume(radius_mm=8), dtype=np.uint8)
    gt = write_volume(folder / "gt.nii.gz", sphere_volume(radius_mm=8, spacing_mm=(2, 2, 2)), dtype=np.uint8)
    prior = save_prior(make_tiny_prior(), folder / "prior.safetensors")
    out = folder / "result"
    argv = ["reconstruct", str(obs), "--out", str(out), "--prior", str(prior), "--like", str(gt),
            "--steps", "2", "--members", "2", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    return {"obs": obs, "gt": gt, "prior": prior, "out": out}


numbers_as_text = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e-6", "0", "-0", "1e308", "2**64", "", "abc", "4.0", "0x10"]),
)
OPTIONS = ["--members", "--steps", "--ewc", "--lr", "--resolution", "--level", "--seed", "--threshold",
           "--memory-limit"]


def _roomy(text: str) -> bool:
    try:
        return float(text) > 1e-3
    except ValueError:
        return False


@scaled(2)
@given(option=st.sampled_from(OPTIONS), text=numbers_as_text)
def test_any_reconstruct_option_value(case, option, text):
    """Valid values reach the memory check (a tiny --memory-limit refuses them before fine-tuning)."""
    argv = ["reconstruct", str(case["obs"]), "--out", str(case["out"].parent / "never"), "--prior",
            str(case["prior"]), "--device", "cpu", "--quiet"]
    if option == "--memory-limit":
        assume(not _roomy(text))  # a limit that lets the run through would run it
    else:
        argv += ["--memory-limit", "1e-9"]
    code, err = _run([*argv, option, text])
    _assert_clean(code, err)
    assert not (case["out"].parent / "never").exists()


@scaled(1)
@given(
    option=st.sampled_from(["--grid", "--hidden", "--blocks", "--batch-size", "--samples", "--lr", "--dropout",
                            "--models", "--steps"]),
    text=numbers_as_text,
)
def test_any_pretrain_option_value(case, option, text):
    """Valid values reach the memory check; nothing is trained or written."""
    target = case["out"].parent / "never.safetensors"
    code, err = _run(["pretrain", "--out", str(target), "--memory-limit", "1e-9", "--quiet", option, text])
    _assert_clean(code, err)
    assert not target.exists()


report_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["members", "config", "threshold", "method", "grid", "x"]), inner, max_size=4),
    max_leaves=10,
)


@scaled(0.5)
@given(report=report_values | st.binary(max_size=40))
def test_evaluate_on_any_report(case, report):
    with tempfile.TemporaryDirectory() as folder:
        pred = Path(folder) / "pred"
        shutil.copytree(case["out"], pred)
        raw = report if isinstance(report, bytes) else json.dumps(report).encode()
        (pred / "report.json").write_bytes(raw)
        code, err = _run(["evaluate", str(pred), str(case["gt"]), "--quiet"])
    _assert_clean(code, err)


def test_evaluate_out_must_be_a_new_file(case, tmp_path):
    for target in (tmp_path, case["gt"], case["out"] / "mean.nii.gz"):
        code, err = _run(["evaluate", str(case["out"]), str(case["gt"]), "--out", str(target)])
        assert code == 2
        _assert_clean(code, err)


def test_reconstruct_never_overwrites_an_input(case, tmp_path):
    """The observation, the ground truth or the prior inside --out under an output name (or linked)."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(case["obs"], out / "mean.nii.gz")
    (out / "report.json").symlink_to(case["gt"])
    before = (out / "mean.nii.gz").read_bytes()
    for argv in (
        ["reconstruct", str(out / "mean.nii.gz"), "--out", str(out)],
        ["reconstruct", str(case["obs"]), "--out", str(out), "--ground-truth", str(out / "report.json")],
        ["reconstruct", str(case["obs"]), "--out", str(out), "--ground-truth", str(case["gt"])],
    ):
        code, err = _run([*argv, "--prior", str(case["prior"]), "--quiet"])
        assert code == 2 and "overwrite" in err, err
    assert (out / "mean.nii.gz").read_bytes() == before


@pytest.mark.parametrize("command", [["reconstruct", "OBS"], ["simulate"], ["pretrain"], ["evaluate", "OUT", "GT"]])
def test_empty_out_is_refused(case, command):
    argv = [{"OBS": str(case["obs"]), "OUT": str(case["out"]), "GT": str(case["gt"])}.get(a, a) for a in command]
    code, err = _run([*argv, "--out", ""])
    assert code == 2 and "--out" in err


def test_library_logs_do_not_add_lines(case, tmp_path):
    """nibabel's and tifffile's own log lines (a zero pixdim, broken ImageJ metadata) stay out of stderr."""
    import nibabel as nib
    import tifffile

    image = nib.Nifti1Image(np.pad(np.ones((3, 3, 3), np.uint8), 2), None)
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    nib.save(image, tmp_path / "zero.nii")
    raw = bytearray((tmp_path / "zero.nii").read_bytes())
    raw[80:84] = np.float32(0).tobytes()  # pixdim[1] = 0
    (tmp_path / "zero.nii").write_bytes(bytes(raw))
    tifffile.imwrite(tmp_path / "odd.tif", np.zeros((3, 1, 1), np.uint8), imagej=True)
    for name in ("zero.nii", "odd.tif"):  # a subprocess: in pytest, its log capture would hide the lines
        done = subprocess.run(
            [sys.executable, "-m", "napari_dropsembles.cli", "reconstruct", str(tmp_path / name), "--out",
             str(tmp_path / "o"), "--prior", str(case["prior"]), "--quiet"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
