"""bench/gpu_check.py on a machine without CUDA: one line and exit 0; its CPU-side pieces work."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_in_one_line_and_succeeds(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("gpu_check: no CUDA device here")
    assert not list(tmp_path.iterdir())


def _maps(folder: Path, shift: float = 0.0) -> Path:
    folder.mkdir()
    data = np.linspace(0, 1, 27, dtype=np.float32).reshape(3, 3, 3)
    for name in gpu_check.MAPS:
        nib.save(nib.Nifti1Image(data + shift * (name == "variance"), np.eye(4)), folder / f"{name}.nii.gz")
    return folder


def test_maps_are_compared_to_the_tolerance(tmp_path):
    same = gpu_check.compare_maps(_maps(tmp_path / "a"), _maps(tmp_path / "b"))
    assert same["equal_to_tolerance"] and same["mean"]["max_abs_diff"] == 0.0
    off = gpu_check.compare_maps(tmp_path / "a", _maps(tmp_path / "c", shift=1e-3))
    assert not off["equal_to_tolerance"]
    assert off["variance"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert off["variance"]["share_over_tolerance"] == 1.0 and off["entropy"]["max_abs_diff"] == 0.0


def test_the_report_lists_every_measure_the_issue_asks_for():
    row = {"M=1 s": 0.5, "M=4 s": 0.6, "M=4 / M=1": 1.2}
    results = {
        "date": "today",
        "seconds": 100.0,
        "device": {"device": "cuda", "torch": "2.x", "cuda": "12.x", "card": "NVIDIA H100"},
        "finetune": {"rows": {"fp32": row, "bf16": row}, "peak_mb": 300.0},
        "prediction": {"grid": [256, 256, 256], "seconds": 1.5, "queries": 1000, "peak_mb": 900.0},
        "reconstruct": {
            "device": {"exit": 0, "seconds": 4.0, "peak_mb": 800.0},
            "cpu": {"exit": 0, "seconds": 12.0},
            "maps": {**{n: {"max_abs_diff": 2e-5} for n in gpu_check.MAPS}, "equal_to_tolerance": True},
        },
    }
    text = gpu_check.markdown(results)
    for needed in ("NVIDIA H100", "M=1 / M=4", "1.20", "256 x 256 x 256", "peak GPU memory", "300.0 / 900.0 / 800.0",
                   "to 0.0001 | yes"):  # fmt: skip
        assert needed in text, needed


@pytest.mark.slow
def test_the_reconstruct_step_runs_on_the_cpu(tmp_path):
    out = gpu_check.reconstruct(tmp_path, gpu_check.Device("cpu"), steps=2)
    assert out["device"]["exit"] == out["cpu"]["exit"] == 0
    assert out["maps"]["equal_to_tolerance"]  # the same seed on the same device: the same maps
