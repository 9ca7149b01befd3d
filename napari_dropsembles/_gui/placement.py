"""Result layers into a viewer: where they go, how they show in 2D and 3D, the selection left alone.

:mod:`.layers` turns results into layer data; this module puts that data into a napari viewer in
small steps (the event loop runs in between), next to the input layer it came from.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Generator, Iterable

import numpy as np

from .layers import TAG, InputFrame, LayerDataTuple, layer_key, result_layers, role_of, viewing_order

AFTER_CREATION = {  # set on the layer (not constructor arguments in napari 0.9)
    "thresholded": {"contour": 1},
}
# napari's in-canvas colour bar, turned on when the layer is first shown (3D: the mesh). The 2D heatmap's
# colour bar is drawn by Qt in the Reconstruct dock: napari's costs a 0.3-0.9 s pause under software OpenGL
COLOUR_BAR_ROLES = ("mesh",)
SHOWN_IN = {  # what a reader needs at once: in 2D the outline and the heatmap, in 3D the mesh alone
    2: {"thresholded": True, "variance": True, "mesh": False, "members": False},
    3: {"thresholded": False, "variance": False, "mesh": True, "members": True, "mean": False},
}
BELOW_INPUT = ("mean", "variance", "preview")  # under a Labels input: its drawn slices stay readable on top
RADIOLOGICAL = ("towards", "up", "left")  # camera: superior (or anterior) up, the patient's right on the left


def show_for_ndisplay(layers: Iterable, ndisplay: int) -> None:
    """Result layers shown the readable way for 2D or 3D display (:data:`SHOWN_IN`)."""
    shown = SHOWN_IN.get(int(ndisplay), {})
    for layer in layers:
        role = role_of(layer)
        if role in shown and layer.visible != shown[role]:
            layer.visible = shown[role]


def orient_like_a_radiologist(viewer, layer) -> bool:
    """Put ``layer``'s thick-slice axis on the slider, superior up and the patient's right on the left
    (NIfTI files, whose world is RAS mm); world coordinates stay as they are. False when not applied."""
    if viewer.dims.ndim != 3 or layer.ndim != 3:
        return False
    order = viewing_order(InputFrame.from_layer(layer).world_affine)
    viewer.dims.order = order
    source = str((getattr(layer, "metadata", None) or {}).get("source_path", "")).lower()
    if source.endswith((".nii", ".nii.gz")):
        viewer.scene.camera.orientation = RADIOLOGICAL
    viewer.reset_view()
    return True


def below_input(role: str, anchor) -> bool:
    """True when a layer of ``role`` goes under the input ``anchor`` (a Labels input, a heatmap or mean)."""
    return role in BELOW_INPUT and anchor is not None and anchor._type_string == "labels"


def insert_near(viewer, layer, anchor, below: bool, last_above=None):
    """Insert ``layer`` just under ``anchor``, or above it (over ``last_above``, the previous layer put there);
    appended when ``anchor`` is not in the viewer. Returns the new ``last_above``."""
    layers = viewer.layers
    if anchor is None or anchor not in layers:
        layers.append(layer)
        return last_above
    if below:
        layers.insert(layers.index(anchor), layer)
        return last_above
    reference = last_above if last_above is not None and last_above in layers else anchor
    layers.insert(layers.index(reference) + 1, layer)
    return layer


def raise_to_paint(viewer, layer, results: dict) -> None:
    """Put the Labels ``layer`` being painted over its result's heatmap and mean (under its outline and the
    suggested-slice frame, which stay readable on top of the strokes)."""
    layers = viewer.layers
    under = [results[key] for key in ("variance", "mean", "preview") if results.get(key) in layers]
    if layer not in layers or not under:
        return
    top = max(layers.index(other) for other in under)
    index = layers.index(layer)
    if index < top:
        layers.move(index, top + 1)  # napari inserts before ``top + 1`` (pre-move indices): just above ``top``


@contextlib.contextmanager
def keeping_selection(viewer):
    """Layers added inside keep the user's layer selection as it was."""
    selected, active = set(viewer.layers.selection), active_layer(viewer.layers)
    try:
        yield
    finally:
        still = [layer for layer in selected if layer in viewer.layers]
        if set(viewer.layers.selection) != set(still) or active_layer(viewer.layers) is not active:
            viewer.layers.selection.clear()
            viewer.layers.selection.update(still)
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active


def centre_on(viewer, centre_mm) -> None:
    """Move the slice and the camera to a world point (the last three world axes)."""
    dims = viewer.dims
    offset = dims.ndim - 3
    centre = list(centre_mm)
    for axis in dims.not_displayed:
        if axis >= offset:
            dims.set_point(axis, centre[axis - offset])
    viewer.scene.camera.center = tuple(centre[axis - offset] for axis in dims.displayed if axis >= offset)


IN_PLACE = ("scale", "translate", "contrast_limits", "iso_threshold", "name")  # refreshed on a re-run
PREVIEW_TO_MEAN = ("colormap", "opacity", "blending", "rendering", "visible")


def differs(layer, key: str, value) -> bool:
    current = getattr(layer, key, None)
    if key == "colormap" or current is None:
        return True
    try:
        return not np.allclose(np.asarray(current, float), np.asarray(value, float))
    except (TypeError, ValueError):
        return current != value


def update_in_place(layer, data, kwargs: dict, layer_type: str, keys: tuple[str, ...] = IN_PLACE) -> bool:
    """Give an existing result layer new data and frame; keeps the user's display choices.

    Removing a layer makes napari run a full garbage collection (seconds with torch loaded) and
    adding one builds its visual: updating in place keeps the viewer responsive on re-runs. A
    property is set only when it changes (each change makes napari refresh the layer).
    """
    if layer._type_string != layer_type or any(key in kwargs for key in ("affine", "rotate", "shear")):
        return False
    if getattr(layer, "affine", None) is not None and not np.allclose(layer.affine.affine_matrix, np.eye(4)):
        return False
    if "visible" in keys and kwargs.get("visible") is False and layer.visible:
        layer.visible = False  # hidden first: napari does not slice or draw the new data of a hidden layer
    for key in ("scale", "translate"):  # the frame first: the new data is sliced once, in it
        if key in keys and key in kwargs and differs(layer, key, kwargs[key]):
            setattr(layer, key, kwargs[key])
    layer.data = data
    for key in keys:
        if key in kwargs and key not in ("scale", "translate") and differs(layer, key, kwargs[key]):
            setattr(layer, key, kwargs[key])
    layer.metadata = dict(kwargs["metadata"])
    return True


def unproxied(obj):
    """The napari object behind a plugin's ``PublicOnlyProxy`` (napari hands plugins a proxied viewer whose
    attributes come back as new proxies: ``viewer.layers.selection.active is active`` is then never true)."""
    return getattr(obj, "__wrapped__", obj)


def active_layer(layer_list):
    """The active layer of ``layer_list`` itself, not a new proxy of it."""
    return unproxied(layer_list.selection.active)


@contextlib.contextmanager
def not_activating(layer_list):
    """Layers appended inside are not made the active layer, and nobody is told about a selection change.

    napari selects each new layer, which rebuilds the layer controls panel twice (once for the new
    layer, once more when the user's selection is put back): about 100 ms a layer under software
    OpenGL. Here the selection's events are held while the layer goes in and the selection is put
    back as it was before they are released, so the controls never change.
    """
    selection = layer_list.selection
    selected, active = set(selection), active_layer(layer_list)
    with selection.events.blocker_all():
        try:
            yield
        finally:
            still = {layer for layer in selected if layer in layer_list}
            if set(selection) != still or active_layer(layer_list) is not active:
                selection.clear()
                selection.update(still)
                if active is not None and active in layer_list:
                    selection.active = active


def _set_after_creation(layer, role: str) -> None:
    for name, value in AFTER_CREATION.get(role, {}).items():
        *path, attribute = name.split(".")
        target = layer
        for part in path:
            target = getattr(target, part)
        setattr(target, attribute, value)


def _hold_overlays(layer) -> list:
    """Hide a new layer's own overlays until it is in the viewer; returns those to show again.

    napari builds the visuals of a layer's visible overlays when the layer is added, in the same
    event-loop turn: for a Labels layer its polygon and brush-stroke outlines, about 20 ms of vispy
    work under software OpenGL on top of the layer's own 40 ms. Held back, they are built when shown
    again (:func:`_release_overlays`), in a step of their own. Nothing changes for the user: the
    overlays draw nothing until a paint tool is used, and the layer is still hidden then.
    """
    overlays = getattr(layer, "_overlays", None)  # napari's (private) per-layer overlays
    if overlays is None or not hasattr(overlays, "values"):
        return []
    held = [overlay for overlay in overlays.values() if getattr(overlay, "visible", False)]
    for overlay in held:
        overlay.visible = False
    return held


def _release_overlays(held: list) -> None:
    for overlay in held:
        overlay.visible = True


def colour_bar_when_shown(layer) -> None:
    """The layer's colour bar appears the first time the layer is shown (now, if it is visible).

    A colour bar costs napari about 100-300 ms under software OpenGL (its visual, then its text the
    first time it is drawn): a hidden layer (the mesh in 2D) pays it when the user shows it.
    """
    if layer.visible:
        layer.colorbar.visible = True
        return

    def show(event=None, ref=weakref.ref(layer)) -> None:
        target = ref()
        if target is None:
            return
        if target.visible:
            target.colorbar.visible = True
            target.events.visible.disconnect(show)

    layer.events.visible.connect(show)


def place_result_layers(
    viewer, source_id: str, layer_data: list[LayerDataTuple], ndisplay: int | None = None, anchor=None
) -> Generator[object, None, list]:
    """Results of ``source_id`` take the place of the previous ones (updated in place when possible).

    A generator of small steps, so that a caller can let the event loop run in between (each step
    is one repaint's worth of napari work under software OpenGL): a new layer is made (a step that
    changes nothing on screen), added hidden (no slicing, no thumbnail, not selected, its own
    overlays held back), its overlays shown again, and it is shown in a step of its own, then its
    colour bar. A layer that already exists gets its data in place and keeps the user's visibility.
    New layers are shown the readable way for ``ndisplay`` (:data:`SHOWN_IN`; default: the viewer's)
    and go next to ``anchor`` (the input layer): the heatmap under a Labels input, so that the drawn
    slices stay on top of it, and the outline and meshes over it (:func:`insert_near`).
    """
    from napari.layers import Layer

    shown = SHOWN_IN.get(int(viewer.dims.ndisplay if ndisplay is None else ndisplay), {})
    existing = result_layers(viewer.layers, source_id)
    preview = existing.pop("preview", None)
    existing.pop("suggestion", None)  # the annotate-next outline stays (it is not a result layer)
    placed, to_show, above = [], [], None
    for data, kwargs, layer_type in layer_data:
        role = kwargs["metadata"][TAG]["role"]
        key = layer_key(kwargs["metadata"])
        old = existing.pop(key, None)
        if old is not None and old in viewer.layers and update_in_place(old, data, kwargs, layer_type):
            placed.append(old)
            yield old
            continue
        # the live preview becomes the mean (removing a layer costs napari a full garbage collection)
        reuse_preview = role == "mean" and old is None and preview is not None and preview in viewer.layers
        if reuse_preview and update_in_place(preview, data, kwargs, layer_type, IN_PLACE + PREVIEW_TO_MEAN):
            placed.append(preview)
            preview = None
            yield placed[-1]
            continue
        visible = bool(shown.get(role, kwargs.get("visible", True)))
        layer = Layer.create(data, {**kwargs, "visible": False}, layer_type)
        _set_after_creation(layer, role)
        held = _hold_overlays(layer)
        try:
            yield None  # made, not yet in the viewer: nothing to repaint (the insert is napari's largest step)
            with not_activating(viewer.layers):
                if old is not None and old in viewer.layers:
                    index = viewer.layers.index(old)
                    viewer.layers.remove(old)
                    viewer.layers.insert(index, layer)
                else:
                    above = insert_near(viewer, layer, anchor, below_input(role, anchor), above)
            placed.append(layer)
            wants_bar = role in COLOUR_BAR_ROLES and key == role  # not on each structure's mesh: one bar, not N
            if visible:
                to_show.append((layer, wants_bar))
            elif wants_bar:
                colour_bar_when_shown(layer)
            yield layer
        finally:  # next step (or when the placing is abandoned): the overlays' visuals, built by napari now
            _release_overlays(held)
        if held:
            yield layer
    for layer, _bar in to_show:  # sliced and drawn for the first time: one layer per step
        layer.visible = True
        yield layer
    for layer, bar in to_show:
        if bar:
            colour_bar_when_shown(layer)
            yield layer
    for stale in [*existing.values(), preview]:
        if stale is not None and stale in viewer.layers:
            viewer.layers.remove(stale)
    return placed
