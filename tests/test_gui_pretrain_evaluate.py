"""The Train-a-prior and Evaluate widgets in a napari viewer (headless under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

from . import gui_support
from .conftest import TINY, sphere_volume
from .gui_support import add_volume, errors, requires_gui

pytestmark = [requires_gui, pytest.mark.gui]
viewer = gui_support.viewer  # fixtures
notifications = gui_support.notifications
sync_workers = gui_support.sync_workers

PLUGIN = "napari-dropsembles"


def test_trained_prior_is_saved_and_becomes_selectable_for_reconstruction(
    viewer, sync_workers, notifications, tmp_path, monkeypatch
):
    from napari_dropsembles._gui.state import RunState
    from napari_dropsembles.core.fitting import pretrain
    from napari_dropsembles.core.networks.checkpoint import load_prior

    monkeypatch.setattr(pretrain.os, "cpu_count", lambda: 1)  # make the few samples here, no worker processes
    _dock, trainer = viewer.window.add_plugin_dock_widget(PLUGIN, "Train a prior")
    _dock, reconstruct = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct with uncertainty")
    trainer.out_path.value = str(tmp_path / "prior.pt")  # a bad path first: refused, the widget stays usable
    trainer.run()
    assert trainer.status.state is RunState.FAILED and ".safetensors" in errors(notifications)[-1]
    assert trainer.run_panel.button.text() == "Train"

    trainer.base_model = TINY
    for name, value in dict(
        steps=2,
        samples=2,
        batch_size=2,
        shapes=2,
        fisher_samples=1,
        grid_size=16,
        hidden=16,
        blocks=2,
        dropout=0.2,
        device="cpu",
    ).items():
        getattr(trainer, name).value = value
    out = tmp_path / "my_prior.safetensors"
    trainer.out_path.value = str(out)
    trainer.run()
    assert trainer.status.state is RunState.DONE, trainer.status.message
    assert trainer.status.losses and trainer.run_panel.progress_bar.value() == 1000
    prior = load_prior(out)
    assert prior.config.grid_size == 16 and prior.config.hidden == 16
    assert reconstruct.prior.value == str(out.resolve())  # listed and selected in the Reconstruct widget


def smooth_ball(centre, radius, spacing, origin) -> Volume:
    """Probabilities of a ball with a soft edge on a grid (a stand-in for a mean occupancy)."""
    shape = (24, 24, 24)
    grid = Volume(np.zeros(shape, np.float32), affine_from_spacing((spacing,) * 3, origin))
    distance = np.linalg.norm(grid.voxel_centres_mm() - np.asarray(centre), axis=1).reshape(shape)
    return grid.with_data((1 / (1 + np.exp((distance - radius) / 1.0))).astype(np.float32))


def test_evaluate_shows_metrics_and_a_reliability_diagram(viewer, sync_workers, notifications):
    from napari_dropsembles._gui.tasks import resample_onto
    from napari_dropsembles.core.scoring.metrics import evaluate_probabilities

    truth = sphere_volume(radius_mm=10.0, spacing_mm=(1.0, 1.0, 1.0), size_mm=30.0)
    prediction = smooth_ball((0.5, 0.0, 0.0), 10.0, 1.5, (-17.0, -17.0, -17.0))
    gt_layer = add_volume(viewer, truth, "ground truth")
    pred_layer = add_volume(viewer, prediction, "prediction", kind="image")
    intensity = viewer.add_image(np.full(truth.shape, 300.0, np.float32), name="CT", **truth.napari_frame())
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate against ground truth")
    widget.ground_truth.value = gt_layer
    # an intensity image is not a probability: refused, nothing changes
    widget.prediction.value = intensity
    before = [layer.name for layer in viewer.layers]
    widget.run()
    assert "within [0, 1]" in errors(notifications)[-1]
    assert [layer.name for layer in viewer.layers] == before and widget.metric_values()["dice"] == "-"

    widget.prediction.value = pred_layer
    widget.run()
    shown = widget.metric_values()
    probs, resampled = resample_onto(prediction, truth)
    expected = evaluate_probabilities(probs, truth.data > 0, truth.spacing)
    assert resampled
    for key in ("dice", "hd95_mm", "ece", "nll", "brier", "auroc"):
        assert shown[key] == f"{expected[key]:.4f}", key
    assert float(shown["dice"]) > 0.8
    lines = widget.reliability.axes.get_lines()
    assert len(lines) == 3 and len(lines[1].get_xdata()) > 3  # diagonal, all voxels, surface band
