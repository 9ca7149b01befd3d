"""Shared by the GUI test modules: skip without a display, the plugin manifest, notifications, tiny runs.

GUI tests need Qt and an X display (pytest-xvfb starts Xvfb when it is installed). Without
them they are skipped with the reason, unless ``DROPSEMBLES_REQUIRE_GUI=1`` (CI), where they
run and fail instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_GUI = os.environ.get("DROPSEMBLES_REQUIRE_GUI", "").strip() not in ("", "0")


def _gui_missing() -> str:
    """Why GUI tests cannot run here ('' when they can)."""
    for module in ("qtpy", "napari", "pytestqt"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if os.environ.get("QT_QPA_PLATFORM", "") == "offscreen":
        return "QT_QPA_PLATFORM=offscreen has no OpenGL context (napari cannot add layers)"
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):  # pytest-xvfb sets DISPLAY before collection
        return ""
    if not shutil.which("Xvfb"):
        return "no X display and no Xvfb (install xvfb with pytest-xvfb, or set DISPLAY)"
    return "no X display (pytest-xvfb is not installed or not enabled)"


GUI_MISSING = _gui_missing()
requires_gui = pytest.mark.skipif(bool(GUI_MISSING) and not REQUIRE_GUI, reason=f"GUI tests skipped: {GUI_MISSING}")


def register_plugin() -> None:
    """Make napari see this plugin even when the package is not pip-installed (source checkout)."""
    from npe2 import PluginManager, PluginManifest

    manager = PluginManager.instance()
    if "napari-dropsembles" not in manager:
        manager.register(PluginManifest.from_file(ROOT / "napari.yaml"))


@pytest.fixture
def viewer(make_napari_viewer):
    register_plugin()
    return make_napari_viewer()


@pytest.fixture
def notifications():
    """Every napari notification shown during the test."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def errors(notes) -> list[str]:
    from napari.utils.notifications import NotificationSeverity

    return [str(n.message) for n in notes if n.severity == NotificationSeverity.ERROR]


@pytest.fixture
def sync_workers(monkeypatch):
    """Workers run to the end in the calling thread: GUI tests that do not race."""
    monkeypatch.setenv("DROPSEMBLES_SYNC_WORKERS", "1")


def open_widget(viewer, title: str = "Reconstruct with uncertainty"):
    """Dock one of the plugin's widgets through napari and return it."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-dropsembles", title)
    return widget


@pytest.fixture
def tiny_prior_path(tmp_path):
    from napari_dropsembles.core.networks.checkpoint import save_prior

    from .conftest import make_tiny_prior

    return save_prior(make_tiny_prior(), tmp_path / "tiny_prior.safetensors")


def two_spheres(labels=(2, 5), spacing=(1.5, 1.5, 3.0)) -> Volume:
    """Two labelled balls side by side on an anisotropic grid (a multi-structure input)."""
    spacing = np.asarray(spacing, float)
    shape = (40, 24, 10)
    volume = Volume(np.zeros(shape, np.uint8), affine_from_spacing(spacing, (-30.0, -18.0, -13.5)))
    points = volume.voxel_centres_mm().reshape(*shape, 3)
    for label, centre in zip(labels, ((-14.0, 0.0, 0.0), (14.0, 0.0, 0.0)), strict=True):
        inside = np.linalg.norm(points - np.array(centre), axis=-1) <= 9.0
        volume.data[inside] = label
    return volume


def tiny_settings(widget, prior_path, *, steps: int = 3, members: int = 2, spacing_mm: float = 3.0) -> None:
    """Fast Reconstruct settings: a tiny prior, few steps, a coarse output grid, CPU."""
    widget.add_prior(prior_path)
    widget.prior.value = str(Path(prior_path).resolve())
    widget.steps.value = steps
    widget.members.value = members
    widget.spacing.value = spacing_mm
    widget.device.value = "cpu"
    widget.live_preview.value = False


def add_volume(viewer, volume: Volume, name: str, kind: str = "labels"):
    return getattr(viewer, f"add_{kind}")(volume.data, name=name, **volume.napari_frame())
