"""Keep napari alive when a layer is removed: make its canvas's OpenGL context current first.

napari 0.9 deletes a removed layer's textures, buffers and program in ``VispyCanvas._remove_layer``
without making the canvas's context current. Under Qt another context may be current then, so the
deletes hit that context's objects; the next time the canvas is resized (a layer added, a dock
opened) drawing a Labels layer segfaults in ``glDrawArrays``. Measured under Xvfb (Mesa llvmpipe):
remove the lower of two Labels layers, then add any layer -> segfault, 3 times out of 3; with the
context made current on ``removing`` -> no crash. Installed once per viewer by the plugin's docks.
"""

from __future__ import annotations

import contextlib
import weakref

_GUARDED: weakref.WeakSet = weakref.WeakSet()


def _canvas(viewer):
    """The vispy SceneCanvas of a napari viewer (None without a window, e.g. a headless viewer)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # plugins get a PublicOnlyProxy
    window = getattr(viewer, "window", None)
    qt_viewer = getattr(window, "_qt_viewer", None)
    canvas = getattr(qt_viewer, "canvas", None)
    return getattr(canvas, "_scene_canvas", None)


def guard_layer_removal(viewer) -> None:
    """Make ``viewer``'s canvas context current before each layer removal (once per viewer)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    if viewer is None or not hasattr(viewer, "layers") or viewer in _GUARDED:
        return
    _GUARDED.add(viewer)
    reference = weakref.ref(viewer)

    def make_current(_event=None) -> None:
        target = reference()
        scene_canvas = None if target is None else _canvas(target)
        if scene_canvas is not None:
            with contextlib.suppress(Exception):  # a closing window: nothing to protect
                scene_canvas.set_current()

    viewer.layers.events.removing.connect(make_current)
