"""`napari-dropsembles demo`: the README's main job on the bundled prior and sample."""

from __future__ import annotations

import json

import pytest

from napari_dropsembles.cli import main


@pytest.mark.slow
def test_demo_writes_outputs_scored_beside_every_baseline(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    assert {"dropsembles", "nearest", "linear", "shape_based", "contour"} <= set(metrics)  # contour: ITK or skipped
    ours = metrics["dropsembles"]
    # the noisy procedural sample: above linear interpolation; within 0.01 of shape-based (README: below it)
    assert ours["dice"] > metrics["linear"]["dice"] and ours["dice"] > metrics["shape_based"]["dice"] - 0.01
    assert ours["auroc"] >= 0.8
    assert report["calibration"]["answered_by"] == "calibrated network"
    assert (out / "mesh.ply").stat().st_size > 10_000
    assert report["members"] == 4 and report["device"] == "cpu"


@pytest.mark.slow
def test_mri_demo_reconstructs_every_vertebra_of_the_real_mri(tmp_path):
    out = tmp_path / "mri"
    assert main(["demo", "--sample", "mri", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    index = json.loads((out / "structures.json").read_text())  # one structure per label
    assert index["labels"] == [18, 19, 20, 21, 22, 23, 24, 26]  # T11-L5 and the sacrum (VerSe numbers)
    for folder in index["folders"].values():
        report = json.loads((out / folder / "report.json").read_text())
        assert report["unusual_shape"] is not None and report["calibration"]["answered_by"] in (
            "calibrated network",
            "interpolation",
        )
    assert (out / "mesh.ply").stat().st_size > 10_000
