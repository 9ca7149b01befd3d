"""The Batch widget: runs a folder of cases, fills the summary table, cancels, opens a case's layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.checkpoint import save_prior
from napari_dropsembles.core.io import read_volume, write_volume

from . import gui_support
from .conftest import make_tiny_prior
from .gui_support import requires_gui
from .test_cohort import write_case

pytestmark = [requires_gui, pytest.mark.gui]
viewer = gui_support.viewer  # fixture

PLUGIN = "napari-dropsembles"


@pytest.fixture
def batch(viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("DROPSEMBLES_SYNC_WORKERS", "1")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        write_case(inputs, f"case{i}", 7.0 + i, truth=i == 0)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch (cohort)")
    widget.inputs.value = inputs
    widget.out_dir.value = tmp_path / "out"
    widget.prior.value = save_prior(make_tiny_prior(), tmp_path / "prior.safetensors")
    widget.members.setValue(2)
    widget.steps.setValue(3)
    widget.resolution.setText("2")
    widget.workers.setValue(0)
    widget.device.setCurrentText("cpu")
    return widget


def test_batch_runs_the_folder_and_a_row_click_opens_the_case(batch, viewer):
    bad = batch.inputs.value + "/case2.nii.gz"
    volume = read_volume(bad)
    write_volume(bad, volume.with_data(np.zeros_like(volume.data)), dtype=np.uint8)
    batch.run()
    assert batch.state == "done", batch.status.text()
    assert batch.table.rowCount() == 3 and batch.progress_bar.value() == 3
    statuses = [batch.table.item(r, 1).text() for r in range(3)]
    assert statuses == ["done", "done", "failed"]
    assert "empty" in batch.table.item(2, 8).text()
    assert batch.table.item(0, 5).text()  # Dice against case0's ground truth

    layers = batch.open_case(0)
    names = [layer.name for layer in layers]
    assert all("case0" in name for name in names), names
    assert any("mean" in name for name in names) and any("variance" in name for name in names), names
    assert all(layer in viewer.layers for layer in layers)
    assert batch.open_case(2) == [] and "failed" in batch.status.text()

    batch.run()  # a rerun skips the finished cases
    assert batch.state == "done" and "(2 unchanged)" in batch.status.text()


def test_cancel_stops_before_the_next_case(batch, monkeypatch):
    shown = batch._on_progress

    def cancel_after_first_case(progress):
        shown(progress)
        if progress.extra.get("row"):
            batch.cancel()

    monkeypatch.setattr(batch, "_on_progress", cancel_after_first_case)
    batch.run()
    assert batch.state == "cancelled" and batch.table.rowCount() == 1
    assert batch.run_button.text() == "Run"


def test_missing_or_empty_folder_is_one_clear_line(batch, tmp_path):
    batch.inputs.value = ""
    batch.run()
    assert batch.state == "failed" and "choose the cases" in batch.status.text()
    (tmp_path / "empty").mkdir()
    batch.inputs.value = tmp_path / "empty"
    batch.run()
    assert batch.state == "failed" and "no observation volume" in batch.status.text()
    assert batch.run_button.text() == "Run"


@pytest.mark.slow
def test_batch_runs_in_the_background_on_a_local_cluster(batch, qtbot, monkeypatch):
    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS")
    batch.workers.setValue(1)
    batch.run()
    assert batch.state == "running" and batch.run_button.text() == "Cancel"
    qtbot.waitUntil(lambda: batch.state != "running", timeout=180_000)
    assert batch.state == "done", batch.status.text()
    assert [batch.table.item(r, 1).text() for r in range(batch.table.rowCount())] == ["done"] * 3
