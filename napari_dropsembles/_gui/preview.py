"""The live preview of a run: the coarse mean occupancy while the members are fine-tuned.

A re-run (or a refinement) shows it in the previous result's mean layer and gives that layer its
look back at the end; a first run adds a hidden layer when Run is pressed, which becomes the mean.
Adding a layer costs napari a few hundred ms under software OpenGL and removing one a full garbage
collection: both happen outside the run, never in the middle of it.
"""

from __future__ import annotations

import numpy as np

from ..core.volumes.volume import Volume
from .common import is_deleted
from .layers import InputFrame, preview_layer_data, role_of
from .placement import below_input, differs, insert_near, not_activating
from .session import ReconstructSession

PREVIEW_LOOK = ("colormap", "contrast_limits", "opacity", "blending", "rendering", "iso_threshold", "visible")
PREVIEW_FRAME = ("data", "scale", "translate")


class LivePreview:
    """The preview layer of the session's run: prepared at Run, fed each report, ended with the run."""

    def __init__(self, session: ReconstructSession, deferred) -> None:
        self.session = session
        self.viewer = session.viewer
        self.layer = None
        self._restore: dict | None = None  # the previous mean's look while it shows the preview
        self._pending = None  # data waiting for the next event-loop turn (see show)
        self._deferred = deferred  # a single-shot timer that calls flush in the next turn (None: at once)

    def prepare(self, frame: InputFrame, affine: np.ndarray, threshold: float) -> None:
        """A layer ready for the preview of a run on ``frame``'s input (the previous mean, or a hidden new one)."""
        from napari.layers import Layer

        self.end(keep_data=False)
        mean = self.session.layers_of(frame.source_id).get("mean")
        if mean is not None and mean._type_string == "image":
            self.layer = mean
            return
        placeholder = Volume(np.zeros((2, 2, 2), np.float32), affine)
        data, kwargs, layer_type = preview_layer_data(placeholder, frame, threshold)
        self.layer = Layer.create(data, {**kwargs, "visible": False}, layer_type)
        self._insert(self.layer, frame)

    def _insert(self, layer, frame: InputFrame) -> None:
        anchor = self.session.source_layer(frame.source_id)
        with not_activating(self.viewer.layers):
            insert_near(self.viewer, layer, anchor, below_input("preview", anchor))

    def show(self, preview: Volume, frame: InputFrame, threshold: float, *, at_once: bool) -> None:
        """The preview in its layer. Its first report sets the layer's look and frame (the previous mean's look,
        the preview grid's box) while the layer is still hidden; its data and first draw come in the next
        event-loop turn (``at_once``: now): each is a repaint of its own."""
        from napari.layers import Layer

        data, kwargs, layer_type = preview_layer_data(preview, frame, threshold)
        layer = self.layer
        if layer is not None and layer in self.viewer.layers and "affine" not in kwargs:
            set_up = False
            if role_of(layer) == "mean" and self._restore is None:  # the previous mean shows the preview
                self._restore = {key: getattr(layer, key) for key in (*PREVIEW_LOOK, *PREVIEW_FRAME)}
                for key in PREVIEW_LOOK:
                    if key in kwargs and differs(layer, key, kwargs[key]):
                        setattr(layer, key, kwargs[key])
                set_up = True
            if not (np.allclose(layer.scale, kwargs["scale"]) and np.allclose(layer.translate, kwargs["translate"])):
                layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]  # another structure's box
                set_up = True
            self._pending = data
            if set_up and not at_once and self._deferred is not None:
                self._deferred.start()
            else:
                self.flush()
            return
        self.end(keep_data=False)
        if self.session.status.running:
            self.layer = Layer.create(data, kwargs, layer_type)
            self._insert(self.layer, frame)

    def flush(self) -> None:
        """The pending preview's data into its layer, shown (one slice and one draw)."""
        data, self._pending = self._pending, None
        layer = self.layer
        if data is None or layer is None or layer not in self.viewer.layers:
            return
        layer.data = data
        if not layer.visible:
            layer.visible = True

    def end(self, keep_data: bool) -> None:
        """The run is over: a previous mean that showed the preview gets its look back (and its data, unless
        the new result replaces it); an added preview layer is removed unless it becomes the new mean."""
        if self._deferred is not None and not is_deleted(self._deferred):
            self._deferred.stop()
        self._pending = None
        layer, restore = self.layer, self._restore
        self.layer = self._restore = None
        if layer is None or layer not in self.viewer.layers:
            return
        if role_of(layer) == "mean":
            for key, value in (restore or {}).items():
                if not (keep_data and key in PREVIEW_FRAME):
                    setattr(layer, key, value)
        elif not keep_data:
            self.viewer.layers.remove(layer)
