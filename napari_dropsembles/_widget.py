"""npe2 widget contributions (the classes live in ``_gui``) and the Layers > Segment menu command."""

from __future__ import annotations

from napari.viewer import Viewer

from ._gui.evaluate import EvaluateWidget
from ._gui.pretrain import TrainPriorWidget
from ._gui.reconstruct import ReconstructWidget

PLUGIN = "napari-dropsembles"
RECONSTRUCT_WIDGET = "Reconstruct with uncertainty"

__all__ = ["EvaluateWidget", "ReconstructWidget", "TrainPriorWidget", "reconstruct_selected_layer"]


def reconstruct_selected_layer(viewer: Viewer) -> None:
    """Layers > Segment: open (or show) the Reconstruct widget with the active layer as its input."""
    open_reconstruct_widget(viewer)


def open_reconstruct_widget(viewer: Viewer) -> ReconstructWidget:
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, RECONSTRUCT_WIDGET)
    active = viewer.layers.selection.active
    if active is not None:
        widget.reset_choices()
        if any(choice is active for choice in widget.input.choices):
            widget.input.value = active
    return widget
