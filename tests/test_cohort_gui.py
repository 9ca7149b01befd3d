"""The Batch widget: runs a folder of cases, fills the summary table, cancels, opens a case's layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.networks.checkpoint import save_prior

from . import gui_support
from .cohort_support import write_case
from .conftest import make_tiny_prior
from .gui_support import requires_gui

pytestmark = [requires_gui, pytest.mark.gui]
viewer = gui_support.viewer  # fixtures
notifications = gui_support.notifications

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
    assert batch.state == "done", batch.status.message
    assert batch.table.rowCount() == 3 and batch.status.fraction == 1.0
    headers = [batch.table.horizontalHeaderItem(c).text() for c in range(batch.table.columnCount())]
    assert headers[:4] == ["case", "structure", "status", "mL"] and "volume_ml_std" not in headers  # readable
    statuses = [batch.table.item(r, headers.index("status")).text() for r in range(3)]
    assert statuses == ["done", "done", "failed"]
    assert "empty" in batch.table.item(2, headers.index("problem")).text()
    assert batch.table.item(0, headers.index("Dice")).text()  # Dice against case0's ground truth

    layers = batch.open_case(0)
    names = [layer.name for layer in layers]
    assert all("case0" in name for name in names), names
    assert any("mean" in name for name in names) and any("variance" in name for name in names), names
    assert all(layer in viewer.layers for layer in layers)
    assert batch.open_case(2) == [] and "failed" in batch.status.message

    batch.run()  # a rerun skips the finished cases
    assert batch.state == "done" and "(2 unchanged)" in batch.status.message


def test_cancel_stops_before_the_next_case_in_one_line(batch, monkeypatch, notifications):
    shown = batch._on_progress

    def cancel_after_first_case(progress):
        shown(progress)
        if progress.extra.get("row"):
            batch.cancel()

    monkeypatch.setattr(batch, "_on_progress", cancel_after_first_case)
    batch.run()
    assert batch.state == "cancelled" and batch.table.rowCount() == 1
    assert "\n" not in batch.status.message and "kept" in batch.status.message
    assert batch.run_panel.button.isEnabled() and batch.status.fraction == 0.0
    assert not notifications  # no toast, no traceback: the status line says it


def test_missing_or_empty_folder_is_one_clear_line(batch, tmp_path, notifications):
    from napari.utils.notifications import ErrorNotification

    batch.inputs.value = ""
    batch.run()
    assert batch.state == "failed" and "choose the cases" in batch.status.message
    batch.inputs.value = tmp_path / "nowhere"
    batch.run()
    assert batch.state == "failed" and "does not exist" in batch.status.message
    (tmp_path / "empty").mkdir()
    batch.inputs.value = tmp_path / "empty"
    batch.run()
    assert batch.state == "failed" and "no observation volume" in batch.status.message
    assert batch.run_panel.button.isEnabled() and "\n" not in batch.status.message
    assert all(not isinstance(note, ErrorNotification) for note in notifications)  # no "View Traceback"
    assert all("\n" not in str(note.message) for note in notifications)


@pytest.mark.slow
def test_batch_runs_in_the_background_on_a_local_cluster(batch, qtbot, monkeypatch):
    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS")
    batch.workers.setValue(1)
    batch.run()
    assert batch.state == "running" and batch.run_panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: batch.state != "running", timeout=180_000)
    assert batch.state == "done", batch.status.message
    assert [batch.table.item(r, 2).text() for r in range(batch.table.rowCount())] == ["done"] * 3


def test_the_status_says_what_happens_and_the_bar_moves_at_once(batch, monkeypatch):
    """Starting workers, then the cases as they advance (reported from inside a case); the dashboard's address
    only where it is served (bokeh installed)."""
    from napari_dropsembles.core import cohort
    from napari_dropsembles.core.cohort.runner import CohortResult
    from napari_dropsembles.core.config.progress import Progress

    def fake_run(tasks, out_dir, workers=None, cancel=None, dashboard_address=":0"):
        ids = [task.task_id for task in tasks]
        yield Progress("cohort", 0, len(ids), message="0 already done", extra={"skipped": 0})
        yield Progress("cohort", 0, len(ids), message="starting 2 worker(s)", extra={"starting": 2})
        yield Progress("cohort", 0, len(ids), extra={"dashboard": "http://127.0.0.1:8787/status",
                                                      "dashboard_serves": False})  # fmt: skip
        yield Progress("cohort", 0, len(ids), extra={"case_progress": {ids[0]: 0.5, ids[1]: 0.25}})
        row = {"task": ids[0], "case": ids[0], "label": "", "status": "done", "error": ""}
        yield Progress("cohort", 1, len(ids), extra={"row": row, "done": 1, "failed": 0})
        return CohortResult([row], batch.out_dir.value + "/summary.csv", None)

    monkeypatch.setattr(cohort, "run_cohort_steps", fake_run)
    seen = []
    batch.status.changed.connect(lambda: seen.append((round(batch.status.fraction, 3), batch.status.message)))
    batch.run()
    messages = [message for _fraction, message in seen]
    assert any("starting 2 worker" in m for m in messages), messages
    assert any("cases 1-2 of 3 running" in m for m in messages), messages
    assert not any("8787" in m for m in messages)  # no bokeh here: no address that would not answer
    moving = [fraction for fraction, _m in seen if 0 < fraction < 1]
    assert moving and moving == sorted(moving)  # the bar moves forward as the cases advance


@pytest.mark.slow
def test_the_bar_moves_within_5_s_of_run(batch, qtbot, monkeypatch):
    import time

    monkeypatch.delenv("DROPSEMBLES_SYNC_WORKERS")
    started = time.perf_counter()
    batch.run()
    qtbot.waitUntil(lambda: batch.status.fraction > 0, timeout=5000)
    assert time.perf_counter() - started < 5.0 and batch.status.message
    batch.cancel()
    qtbot.waitUntil(lambda: batch.state != "running", timeout=120_000)
