"""`napari-dropsembles demo`: the README's main job on the bundled prior and sample."""

from __future__ import annotations

import json

import pytest

from napari_dropsembles.cli import main


@pytest.mark.slow
def test_demo_writes_outputs_and_beats_shape_based_interpolation(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"dropsembles", "nearest", "linear", "shape_based"}
    ours = metrics["dropsembles"]
    assert ours["dice"] > metrics["shape_based"]["dice"]
    assert ours["auroc"] >= 0.8
    assert (out / "mesh.ply").stat().st_size > 10_000
    assert report["members"] == 4 and report["device"] == "cpu"
