"""What the viewer shows of a result in 2D and in 3D (the defaults; every choice stays the user's to change).

2D: the outline and the heatmap over the input. 3D: the mesh is what one sees: the input's thick
slabs, the user's image and other volumes are hidden while a result is shown (they interleave with
the mesh in stripes, or hide it inside a CT), the camera frames the result, and going back to 2D
shows again exactly the layers hidden here.
"""

from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import QTimer

from .layers import role_of
from .placement import show_for_ndisplay

VOLUME_TYPES = ("image", "labels")
MESH_ROLES = ("mesh", "members")
FRAME_MARGIN = 0.1  # share of the canvas left around the framed result


def is_result(layer) -> bool:
    return role_of(layer) is not None


class ResultDisplay:
    """Follows the viewer's 2D/3D switch for the results of one dock."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self._hidden: list[weakref.ref] = []  # volumes this hid on the way into 3D
        viewer.dims.events.ndisplay.connect(self._ndisplay_changed)

    def result_meshes(self) -> list:
        return [layer for layer in self.viewer.layers if role_of(layer) in MESH_ROLES]

    def _ndisplay_changed(self, event) -> None:
        self.show(int(event.value))

    def show(self, ndisplay: int, *, frame: bool = True) -> None:
        """Results shown the readable way for ``ndisplay``; in 3D the other volumes hidden and the result framed."""
        results = [layer for layer in self.viewer.layers if is_result(layer)]
        show_for_ndisplay(results, ndisplay)
        if ndisplay == 3 and self.result_meshes():
            self.hide_other_volumes()
            if frame:  # in the next turn: napari fits the camera to the whole scene after the switch
                QTimer.singleShot(0, self.frame_result)
        elif ndisplay == 2:
            self.restore_volumes()

    def hide_other_volumes(self) -> None:
        """Hide every shown Image/Labels layer that is not a result (remembered for the way back)."""
        for layer in list(self.viewer.layers):
            if layer._type_string in VOLUME_TYPES and not is_result(layer) and layer.visible:
                layer.visible = False
                self._hidden.append(weakref.ref(layer))

    def restore_volumes(self) -> None:
        """Show again the layers hidden on the way into 3D (those still open)."""
        hidden, self._hidden = self._hidden, []
        for reference in hidden:
            layer = reference()
            if layer is not None and layer in self.viewer.layers and not layer.visible:
                layer.visible = True

    def frame_result(self) -> None:
        """Centre the camera on the shown result meshes and zoom so that they fit whichever way the view is
        turned (their box's diagonal across the canvas); the angles are kept."""
        meshes = [layer for layer in self.result_meshes() if layer.visible]
        if not meshes or self.viewer.dims.ndisplay != 3:
            return
        self.viewer.fit_to_view(layers=meshes, margin=FRAME_MARGIN)  # the centre, and a zoom fitting the box's sides
        boxes = np.array([layer.extent.world[:, -3:] for layer in meshes])
        size = boxes[:, 1].max(axis=0) - boxes[:, 0].min(axis=0)
        diagonal = float(np.linalg.norm(size))
        if diagonal > 0:
            self.viewer.scene.camera.zoom *= float(size.max()) / diagonal


_DISPLAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # viewer -> its one ResultDisplay


def result_display(viewer) -> ResultDisplay:
    """The viewer's one :class:`ResultDisplay` (made on first use, kept as long as the viewer)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # plugins get a PublicOnlyProxy
    if viewer not in _DISPLAYS:
        _DISPLAYS[viewer] = ResultDisplay(viewer)
    return _DISPLAYS[viewer]
