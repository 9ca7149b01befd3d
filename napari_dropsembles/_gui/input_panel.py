"""The Reconstruct dock's input panel: which layer, which label(s), or an image and its threshold level.

What the input is decides what is offered: the labels of a label map (named), a threshold for an
intensity image (with an outline of the mask it makes), or why it cannot be reconstructed (Run
disabled with the reason). The first input shown is oriented the radiologists' way.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..core.config.errors import InputError
from ..core.volumes.input_kind import MAX_LABELS, InputKind, classify_volume, mask_share
from .common import is_deleted, shrinkable_combos
from .layers import mask_preview_layer_data, role_of
from .placement import keeping_selection, orient_like_a_radiologist
from .session import ReconstructSession, source_id_of, structure_text
from .tasks import ALL_LABELS, EACH_LABEL

BINARY = "binary"
EACH_LABEL_DEFAULT_MAX = 8  # more labels than this: one label is chosen first, not all of them
NO_INPUT = "no input: open a segmentation (Labels) or an image first"


class InputPanel(QWidget):
    """Input layer, label choice and image threshold; says why Run is unavailable."""

    def __init__(self, session: ReconstructSession) -> None:
        self.session = session
        self.viewer = session.viewer
        self.input = ComboBox(label="Input", choices=self._choices, tooltip="a Labels layer, or an image to threshold")
        self.label = ComboBox(label="Label", choices=[("(binary mask)", BINARY)], tooltip="which structure(s)")
        self.use_image_threshold = CheckBox(
            text="Threshold image", value=False, tooltip="voxels at or above 'Image level' become the object"
        )
        self.image_threshold = FloatSpinBox(label="Image level", value=0.5, min=-1e9, max=1e9, step=0.05)
        self.image_threshold.visible = False
        self.use_image_threshold.visible = False
        super().__init__()
        self.form = Container(
            widgets=[self.input, self.label, self.use_image_threshold, self.image_threshold], labels=True
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.native)
        self.kind: InputKind | None = None
        self._offer_threshold = False
        self._described = None  # the layer the choices describe
        self._oriented: set[str] = set()
        self._mask_preview = None
        shrinkable_combos(self.input, self.label)
        self.input.changed.connect(self._input_changed)
        self.use_image_threshold.changed.connect(self._threshold_choice_changed)
        self.label.changed.connect(self.check_runnable)

    # ------------------------------------------------------------------ choices

    def _choices(self, _widget=None) -> list[tuple[str, object]]:
        from napari.layers import Image, Labels

        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, (Image, Labels)) and role_of(layer) is None
        ]

    def reset_choices(self, *_args) -> None:
        self.input.reset_choices()
        if self.input.value is not self._described:  # changed without an event (signals blocked)
            self._input_changed()
        elif self.input.value is None:
            self.check_runnable()

    def _input_changed(self, *_args) -> None:
        layer = self.input.value
        self._described = layer
        self.session.input_layer = layer
        self.describe(layer)
        if layer is not None:
            self._orient(layer)
        self.session.input_changed.emit(layer)

    def describe(self, layer, keep_level: bool = False) -> None:
        """What the input is decides what is offered: labels, a threshold (with a mask preview), or why not."""
        from napari.layers import Image, Labels

        self.kind = None
        if layer is not None:
            if getattr(layer, "rgb", False):
                self.kind = InputKind("unusable", reason="it is an RGB image; one 3D channel is needed")
            else:
                data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
                self.kind = classify_volume(data, labels_layer=isinstance(layer, Labels))
        kind = self.kind
        is_image = isinstance(layer, Image) and kind is not None and kind.usable
        self._offer_threshold = is_image
        self.use_image_threshold.visible = is_image
        if is_image and not keep_level:
            intensity = kind.kind == "intensity"
            with self.use_image_threshold.changed.blocked():
                self.use_image_threshold.value = intensity
            lo, hi = kind.value_range
            self.image_threshold.min, self.image_threshold.max = min(lo, -1e9), max(hi, 1e9)
            self.image_threshold.step = max((hi - lo) / 100, 1e-3) if hi > lo else 0.05
            if intensity:
                self.image_threshold.value = kind.level
                self.image_threshold.tooltip = f"default: {kind.level_reason}"
        self.image_threshold.visible = is_image and self.use_image_threshold.value
        self.refresh_labels(layer)
        self.update_mask_preview()

    def _threshold_choice_changed(self, *_args) -> None:
        self.image_threshold.visible = self.thresholding()
        self.refresh_labels(self.input.value)
        self.update_mask_preview()

    def thresholding(self) -> bool:
        return bool(self._offer_threshold and self.use_image_threshold.value)

    def refresh_labels(self, layer=None, *, keep: bool = False) -> None:
        """The Label choices for ``layer`` (default: the input), named as the session names them; ``keep``: the
        choice made stays (a structure renamed)."""
        layer = self.input.value if layer is None else layer
        kind = self.kind
        choices: list[tuple[str, object]] = [("(binary mask)", BINARY)]
        value = BINARY
        if self.thresholding():
            choices = [("(thresholded image)", BINARY)]
        elif kind is not None and kind.kind == "labels":
            names = self.session.names(source_id_of(layer)) if layer is not None else {}
            choices = [("all labels merged", ALL_LABELS)]
            if len(kind.labels) <= MAX_LABELS:
                choices.insert(0, ("each label separately", EACH_LABEL))
            choices += [(label_choice_text(v, names), v) for v in kind.labels[:MAX_LABELS]]
            value = EACH_LABEL if len(kind.labels) <= EACH_LABEL_DEFAULT_MAX else kind.labels[0]
            if keep and self.label.value in [v for _t, v in choices]:
                value = self.label.value
        with self.label.changed.blocked():
            self.label.choices = choices
            self.label.value = value
        self.check_runnable()

    # ------------------------------------------------------------------ what Run reads

    def selection(self):
        """None (a binary mask or a thresholded image), a label, ALL_LABELS or EACH_LABEL."""
        return None if self.label.value == BINARY else self.label.value

    def image_level(self) -> float | None:
        return float(self.image_threshold.value) if self.thresholding() else None

    def blocked_reason(self) -> str:
        """Why Run cannot start with the current choices ('' when it can)."""
        layer, kind = self.input.value, self.kind
        if layer is None:
            return NO_INPUT
        if kind is None:
            return ""
        if not kind.usable:
            return f"'{layer.name}' cannot be reconstructed: {kind.reason}"
        if kind.kind == "intensity" and not self.thresholding():
            return f"'{layer.name}' is an intensity image: tick 'Threshold image' and choose a level"
        if self.thresholding():
            share = mask_share(np.asarray(layer.data), float(self.image_threshold.value))
            if share == 0.0:
                return f"no voxel of '{layer.name}' reaches the image level {self.image_threshold.value:g}"
            if share == 1.0:
                return f"every voxel of '{layer.name}' reaches the image level {self.image_threshold.value:g}"
        return ""

    def check_runnable(self, *_args) -> None:
        self.session.status.block(self.blocked_reason())

    def check(self) -> None:
        """Raise the reason Run is unavailable (an InputError), if any."""
        reason = self.blocked_reason()
        if reason:
            raise InputError(reason)

    # ------------------------------------------------------------------ mask preview and orientation

    def update_mask_preview(self) -> None:
        """An outline of the thresholded image over it, updated as the level changes."""
        from napari.layers import Layer

        layer = self.input.value
        if not self.thresholding() or layer is None or is_deleted(self):
            self.remove_mask_preview()
            self.check_runnable()
            return
        data, kwargs, layer_type = mask_preview_layer_data(layer, float(self.image_threshold.value))
        preview = self._mask_preview
        if preview is not None and preview in self.viewer.layers and preview.metadata.get("for") == id(layer):
            preview.data = data
        else:
            self.remove_mask_preview()
            kwargs["metadata"]["for"] = id(layer)
            preview = Layer.create(data, kwargs, layer_type)
            preview.contour = 1
            with keeping_selection(self.viewer):
                self.viewer.layers.append(preview)
            self._mask_preview = preview
        self.check_runnable()

    def remove_mask_preview(self) -> None:
        layer, self._mask_preview = self._mask_preview, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _orient(self, layer) -> None:
        key = source_id_of(layer)
        if key in self._oriented:
            return
        self._oriented.add(key)
        if orient_like_a_radiologist(self.viewer, layer):
            self.session.viewing_order = tuple(self.viewer.dims.order)


def label_choice_text(label: int, names: dict[int, str]) -> str:
    return f"{names[label]} ({label})" if label in names else structure_text(label, names)
