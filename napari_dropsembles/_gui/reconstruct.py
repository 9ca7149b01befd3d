"""The Reconstruct widget: parameters -> background run -> result layers, threshold slider, structure table."""

from __future__ import annotations

import contextlib
import math
import weakref
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)
from superqt import QCollapsible, QLabeledDoubleSlider, QLabeledSlider

from ..core.config import FinetuneConfig, ReconstructionConfig
from ..core.device import DEVICE_CHOICES, resolve_device
from ..core.errors import DropsemblesError, InputError
from ..core.input_kind import MAX_LABELS, InputKind, classify_volume, mask_share
from ..core.methods import METHODS, REGISTRY
from ..core.paths import bundled_prior_path
from ..core.progress import drive
from ..core.structures import StructureRow
from ..core.vertex_labels import label_vertex_colours, vertex_labels
from ..core.volume import Volume
from .annotate import AnnotatePanel
from .common import (
    ERROR_STYLE,
    WARN_STYLE,
    ColourLegend,
    RunPanel,
    is_deleted,
    known_priors,
    notify_error,
    scroll_layout,
    shrinkable_combos,
)
from .layers import (
    TAG,
    InputFrame,
    active_layer,
    differs,
    label_colours,
    label_names,
    layer_to_volume,
    mask_preview_layer_data,
    not_activating,
    orient_like_a_radiologist,
    place_result_layers,
    preview_layer_data,
    result_layers,
    role_of,
    show_for_ndisplay,
    structure_mesh_layers,
    structure_mesh_name,
)
from .run import RunController, RunnerBacked, shutdown_on_destroy
from .state import RunState
from .tasks import (
    ALL_LABELS,
    EACH_LABEL,
    ReconstructOutput,
    ReconstructRequest,
    RefineRequest,
    RemeshOutput,
    reconstruct_task,
    refine_task,
    remesh_task,
    start_warm_up,
)
from .workers import GUI_FIELDS, Outcome, Task, gui_word, sync_workers_default

MESH_BY_VARIANCE, MESH_BY_STRUCTURE = "variance", "structure"
EACH_LABEL_DEFAULT_MAX = 8  # more labels than this: one label is chosen first, not all of them

BUNDLED = "bundled"
BINARY = "binary"
PREVIEW_INTERVAL_S = 2.0
PLACE_PAUSE_MS = 15  # between result layers: lets the event loop repaint and take input
PREVIEW_LOOK = ("colormap", "contrast_limits", "opacity", "blending", "rendering", "iso_threshold", "visible")
PREVIEW_FRAME = ("data", "scale", "translate")
COARSE_VOXELS = 64**3  # above this, the mesh follows a dragged slider at half resolution first
METHOD_LABELS = {name: method.label or name for name, method in REGISTRY.items()}


class StructureTable(QTableWidget):
    """Per-structure confidence: name (in its label colour), volume and its spread, band variance, flag.

    The name column stretches and the numbers stay compact, so every column fits the dock's width;
    a flag's full reason is in its tooltip and in the result line.
    """

    HEADERS = ("structure", "mL", "± mL", "band var.", "flag")

    def __init__(self) -> None:
        super().__init__(0, len(self.HEADERS))
        self.rows: list[StructureRow] = []
        self.names: dict[int, str] = {}
        self.setHorizontalHeaderLabels(self.HEADERS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setWordWrap(False)
        header = self.horizontalHeader()
        header.setMinimumSectionSize(24)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(self.HEADERS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeaderItem(3).setToolTip("mean member variance within 2 voxels of the surface")
        self.horizontalHeaderItem(4).setToolTip("⚠: the structure not to trust (hover the sign for why)")
        self.setToolTip(
            "one row per reconstructed structure; click a row to highlight it and centre the view on it;"
            " double-click a name to rename it"
        )
        self.itemChanged.connect(self._renamed)

    def set_rows(
        self, rows: list[StructureRow], names: dict[int, str] | None = None, colours: dict[int, tuple] | None = None
    ) -> None:
        self.rows = list(rows)
        self.names = dict(names or {})
        colours = colours or {}
        self.blockSignals(True)
        self.setRowCount(len(rows))
        for i, row in enumerate(rows):
            cells = (
                self.names.get(row.label, f"label {row.label}"),
                f"{row.volume_ml:.1f}",
                "-" if not math.isfinite(row.volume_ml_std) else f"{row.volume_ml_std:.2f}",
                "-" if not math.isfinite(row.band_variance) else f"{row.band_variance:.4f}",
                "⚠" if row.flagged else "",
            )
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j:
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if row.flagged:
                    item.setForeground(QColor("#e8a33d"))
                    item.setToolTip(row.reason)
                self.setItem(i, j, item)
            colour = colours.get(row.label)
            if colour is not None:
                swatch = QColor.fromRgbF(*[float(c) for c in colour[:3]])
                self.item(i, 0).setData(Qt.ItemDataRole.DecorationRole, swatch)
        self.blockSignals(False)
        self.setMinimumHeight(min(200, 30 + 26 * max(len(rows), 1)))

    def _renamed(self, item: QTableWidgetItem) -> None:
        if item.column() == 0 and 0 <= item.row() < len(self.rows):
            self.names[self.rows[item.row()].label] = item.text().strip() or f"label {self.rows[item.row()].label}"


class ReconstructWidget(RunnerBacked, QWidget):
    """Reconstruct with uncertainty: pick a segmentation (or threshold an image), press Run, read the result.

    The run's state lives in one :class:`~.run.RunController`; the result views (threshold slider,
    result line, structure table) always describe the result of the input that is selected.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        # no bar in napari's activity dock: its spinner and per-update repaints of the whole window cost
        # more CPU under software OpenGL than the run itself; the dock's own bar says the same
        self.runner = RunController("Dropsembles", activity=False)
        self.results: dict[str, ReconstructOutput] = {}  # input layer id -> its last result
        self.current: ReconstructOutput | None = None  # the result of the selected input (what sliders act on)
        self.last_remesh: RemeshOutput | None = None
        self.input_kind: InputKind | None = None
        self._offer_threshold = False  # an image input: 'Threshold image' is offered
        self._remesh_task: Task | None = None
        self._remesh_queued = False
        self._remesh_serial = 0
        self._remesh_applied = 0
        self._preview_layer = None
        self._preview_restore: dict | None = None  # the previous mean's look while it shows the live preview
        self._pending_preview = None  # preview data waiting for the next event-loop turn (see _show_preview)
        self._mask_preview = None
        self._frame: InputFrame | None = None
        self._described_input = None  # the input layer the Label choices describe
        self._oriented: set[str] = set()  # viewers' layers already shown the radiologists' way
        self._viewing_order: tuple[int, ...] | None = None  # the 2D axis order chosen for the input
        self._names: dict[str, dict[int, str]] = {}  # input id -> label -> name (edits kept)

        self._build_form()
        self.run_panel = RunPanel(self.runner, self.run)
        self.threshold = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0.05, 0.95)
        self.threshold.setSingleStep(0.01)
        self.threshold.setValue(ReconstructionConfig().threshold)
        self.threshold.setToolTip(
            "surface level on the mean occupancy; re-meshes the cached grid (no network query)."
            " Changed during a run, it applies to the new result."
        )
        self.member = QLabeledSlider(Qt.Orientation.Horizontal)
        self.member.setRange(0, 0)
        self.member.setEnabled(False)
        self.member.setToolTip("which ensemble member's mesh the 'member mesh' layer shows")
        self.table = StructureTable()
        self.table.cellClicked.connect(self._select_row)
        self.table.itemChanged.connect(self._name_edited)
        self.mesh_colour = QComboBox()
        self.mesh_colour.addItems([MESH_BY_VARIANCE, MESH_BY_STRUCTURE])
        self.mesh_colour.setToolTip("the mesh coloured by the members' variance, or by structure (the labels' colours)")
        self.mesh_colour.currentTextChanged.connect(lambda _text: self._recolour_mesh())
        self.mesh_colour.activated.connect(self._mesh_colour_chosen)  # the user's choice (not ours) is kept
        self._mesh_colour_by_user = False
        self._highlight: int | None = None  # the structure a table row click selected
        self.legend = ColourLegend("variance (p²)")  # the heatmap's and the mesh's colours
        self.legend.setVisible(False)
        self._legend_sources: weakref.WeakSet = weakref.WeakSet()  # variance layers the legend follows
        self.result_info = QLabel("no result for this input yet")
        self.result_info.setWordWrap(True)
        self.notes_info = QLabel("")  # how the observation was read (below the table: it can be long)
        self.notes_info.setWordWrap(True)
        self.notes_info.setStyleSheet("color: #a0a0a0;")
        self.notes_info.setVisible(False)

        layout = scroll_layout(self)
        layout.addWidget(self.form.native)
        prior_row = QHBoxLayout()
        prior_row.addWidget(QLabel("Prior"))
        prior_row.addWidget(self.prior.native, 1)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_prior)
        prior_row.addWidget(browse)
        layout.addLayout(prior_row)
        layout.addWidget(self.prior_info)
        layout.addWidget(self.device_info)
        self.advanced = QCollapsible("Advanced options")
        self.advanced.addWidget(self.advanced_form.native)
        self.advanced.collapse(animate=False)
        layout.addWidget(self.advanced)
        layout.addWidget(self.run_panel)
        result_title = QLabel("<b>Result</b>")
        layout.addWidget(result_title)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(QLabel("Threshold"))
        threshold_row.addWidget(self.threshold, 1)
        layout.addLayout(threshold_row)
        member_row = QHBoxLayout()
        member_row.addWidget(QLabel("Member"))
        member_row.addWidget(self.member, 1)
        layout.addLayout(member_row)
        colour_row = QHBoxLayout()
        colour_row.addWidget(QLabel("Mesh colour"))
        colour_row.addWidget(self.mesh_colour, 1)
        layout.addLayout(colour_row)
        layout.addWidget(self.legend)
        layout.addWidget(self.result_info)
        layout.addWidget(self.table)
        layout.addWidget(self.notes_info)
        self.annotate = AnnotatePanel(self)  # suggest the next slice, refine with the user's corrections
        layout.addWidget(QLabel("<b>Annotate next</b>"))
        layout.addWidget(self.annotate)
        layout.addStretch(1)

        self._coarse_timer = _single_shot(self, 30, partial(self._remesh, False))
        self._fine_timer = _single_shot(self, 250, partial(self._remesh, True))
        self._mask_timer = _single_shot(self, 150, self._update_mask_preview)
        self._preview_timer = _single_shot(self, PLACE_PAUSE_MS, self._flush_preview)
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.member.valueChanged.connect(self._member_changed)
        known_priors.changed.connect(self._prior_added)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.reset_choices)
        events.inserted.connect(self._watch_name)
        for layer in self.viewer.layers:
            layer.events.name.connect(self.reset_choices)
            layer.events.data.connect(self._data_changed)
        self.viewer.dims.events.ndisplay.connect(self._ndisplay_changed)
        shutdown_on_destroy(self, self.runner)
        self.reset_choices()
        self._device_changed()
        self._prior_changed()
        start_warm_up()

    @property
    def task(self) -> Task | None:
        return self.runner.task

    # ------------------------------------------------------------------ form

    def _build_form(self) -> None:
        defaults = ReconstructionConfig()
        self.input = ComboBox(
            label="Input", choices=self._input_choices, tooltip="a Labels layer, or an image to threshold"
        )
        self.label = ComboBox(label="Label", choices=[("(binary mask)", BINARY)], tooltip="which structure(s)")
        self.use_image_threshold = CheckBox(
            text="Threshold image", value=False, tooltip="voxels at or above 'Image level' become the object"
        )
        self.image_threshold = FloatSpinBox(label="Image level", value=0.5, min=-1e9, max=1e9, step=0.05)
        self.method = ComboBox(label="Method", choices=[(METHOD_LABELS[m], m) for m in METHODS], value=defaults.method)
        self.members = SpinBox(label="Members", value=defaults.members, min=1, max=32)
        self.steps = SpinBox(label="Fine-tuning steps", value=defaults.finetune.steps, min=0, max=5000)
        self.ewc = FloatSpinBox(label="EWC strength", value=defaults.finetune.ewc_lambda, min=0.0, max=100.0, step=0.01)
        self.seed = SpinBox(label="Seed", value=defaults.seed, min=0, max=2**31 - 1)
        self.spacing = FloatSpinBox(
            label="Output spacing (mm)",
            value=0.0,
            min=0.0,
            max=50.0,
            step=0.1,
            tooltip="0 = the input's finest voxel spacing",
        )
        self.empty_slices = ComboBox(
            label="Empty slices",
            choices=[("not annotated", "unobserved"), ("background", "background")],
            value=defaults.empty_slices,
            tooltip="empty slices between labelled ones: skipped as never annotated (default), or taken as background",
        )
        self.device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value=defaults.device)
        self.member_meshes = CheckBox(text="Per-member meshes", value=False)
        self.live_preview = CheckBox(text="Live preview", value=True)
        self.prior = ComboBox(choices=self._prior_choices)
        self.prior_info = QLabel("")
        self.prior_info.setWordWrap(True)
        self.device_info = QLabel("")
        self.device_info.setWordWrap(True)
        self.image_threshold.visible = False
        self.use_image_threshold.visible = False
        self.form = Container(
            widgets=[
                self.input,
                self.label,
                self.use_image_threshold,
                self.image_threshold,
                self.method,
                self.members,
                self.steps,
            ],
            labels=True,
        )
        self.advanced_form = Container(
            widgets=[
                self.ewc,
                self.seed,
                self.spacing,
                self.empty_slices,
                self.device,
                self.member_meshes,
                self.live_preview,
            ],
            labels=True,
        )
        shrinkable_combos(self.input, self.label, self.method, self.prior)
        self.input.changed.connect(self._input_changed)
        self.use_image_threshold.changed.connect(self._threshold_choice_changed)
        self.image_threshold.changed.connect(lambda *_: self._mask_timer.start())
        self.label.changed.connect(self._check_runnable)
        self.method.changed.connect(self._method_changed)
        self.device.changed.connect(self._device_changed)
        self.prior.changed.connect(self._prior_changed)

    def _input_choices(self, _widget=None) -> list[tuple[str, object]]:
        from napari.layers import Image, Labels

        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, (Image, Labels)) and role_of(layer) is None
        ]

    def _prior_choices(self, _widget=None) -> list[tuple[str, str]]:
        bundled = "bundled vertebra prior" + ("" if bundled_prior_path().is_file() else " (not installed)")
        return [(bundled, BUNDLED)] + [(path.name, str(path)) for path in known_priors.paths]

    def reset_choices(self, *_args) -> None:
        self.input.reset_choices()
        self.prior.reset_choices()
        if self.input.value is not self._described_input:  # changed without an event (signals blocked)
            self._input_changed()

    def _watch_name(self, event) -> None:
        event.value.events.name.connect(self.reset_choices)
        event.value.events.data.connect(self._data_changed)

    def _data_changed(self, event) -> None:
        if event.source is self.input.value:
            self._describe_input(event.source, keep_level=True)

    def _input_changed(self, *_args) -> None:
        layer = self.input.value
        self._described_input = layer
        self._describe_input(layer)
        self._show_state_of(layer)
        if layer is not None:
            self._orient(layer)

    def _describe_input(self, layer, keep_level: bool = False) -> None:
        """What the input is decides what is offered: labels, a threshold (with a mask preview), or why not."""
        from napari.layers import Image, Labels

        self.input_kind = None
        if layer is not None:
            if getattr(layer, "rgb", False):
                self.input_kind = InputKind("unusable", reason="it is an RGB image; one 3D channel is needed")
            else:
                data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
                self.input_kind = classify_volume(data, labels_layer=isinstance(layer, Labels))
        kind = self.input_kind
        is_image = isinstance(layer, Image) and kind is not None and kind.usable
        self._offer_threshold = is_image
        self.use_image_threshold.visible = is_image
        if is_image and not keep_level:
            intensity = kind.kind == "intensity"
            self.use_image_threshold.changed.disconnect(self._threshold_choice_changed)
            self.use_image_threshold.value = intensity
            self.use_image_threshold.changed.connect(self._threshold_choice_changed)
            lo, hi = kind.value_range
            self.image_threshold.min, self.image_threshold.max = min(lo, -1e9), max(hi, 1e9)
            self.image_threshold.step = max((hi - lo) / 100, 1e-3) if hi > lo else 0.05
            if intensity:
                self.image_threshold.value = kind.level
                self.image_threshold.tooltip = f"default: {kind.level_reason}"
        self.image_threshold.visible = is_image and self.use_image_threshold.value
        self._refresh_labels(layer)
        self._update_mask_preview()

    def _threshold_choice_changed(self, *_args) -> None:
        self.image_threshold.visible = self._thresholding()
        self._refresh_labels(self.input.value)
        self._update_mask_preview()

    def _thresholding(self) -> bool:
        return bool(self._offer_threshold and self.use_image_threshold.value)

    def _refresh_labels(self, layer) -> None:
        kind = self.input_kind
        choices: list[tuple[str, object]] = [("(binary mask)", BINARY)]
        value = BINARY
        if self._thresholding():
            choices = [("(thresholded image)", BINARY)]
        elif kind is not None and kind.kind == "labels":
            names = label_names(layer) if layer is not None else {}
            choices = [("all labels merged", ALL_LABELS)]
            if len(kind.labels) <= MAX_LABELS:
                choices.insert(0, ("each label separately", EACH_LABEL))
            choices += [(_label_text(v, names), v) for v in kind.labels[:MAX_LABELS]]
            value = EACH_LABEL if len(kind.labels) <= EACH_LABEL_DEFAULT_MAX else kind.labels[0]
        self.label.changed.disconnect(self._check_runnable)
        self.label.choices = choices
        self.label.value = value
        self.label.changed.connect(self._check_runnable)
        self._check_runnable()

    def blocked_reason(self) -> str:
        """Why Run cannot start with the current choices ('' when it can)."""
        layer, kind = self.input.value, self.input_kind
        if layer is None:
            return "no input: open a segmentation (Labels) or an image first"
        if kind is None:
            return ""
        if not kind.usable:
            return f"'{layer.name}' cannot be reconstructed: {kind.reason}"
        if kind.kind == "intensity" and not self._thresholding():
            return f"'{layer.name}' is an intensity image: tick 'Threshold image' and choose a level"
        if self._thresholding():
            share = mask_share(np.asarray(layer.data), float(self.image_threshold.value))
            if share == 0.0:
                return f"no voxel of '{layer.name}' reaches the image level {self.image_threshold.value:g}"
            if share == 1.0:
                return f"every voxel of '{layer.name}' reaches the image level {self.image_threshold.value:g}"
        return ""

    def _check_runnable(self, *_args) -> None:
        self.status.block(self.blocked_reason())

    def _update_mask_preview(self) -> None:
        """An outline of the thresholded image over it, updated as the level changes."""
        from napari.layers import Layer

        layer = self.input.value
        if not self._thresholding() or layer is None or is_deleted(self):
            self._remove_mask_preview()
            self._check_runnable()
            return
        data, kwargs, layer_type = mask_preview_layer_data(layer, float(self.image_threshold.value))
        preview = self._mask_preview
        if preview is not None and preview in self.viewer.layers and preview.metadata.get("for") == id(layer):
            preview.data = data
        else:
            self._remove_mask_preview()
            kwargs["metadata"]["for"] = id(layer)
            preview = Layer.create(data, kwargs, layer_type)
            preview.contour = 1
            with _keeping_selection(self.viewer):
                self.viewer.layers.append(preview)
            self._mask_preview = preview
        self._check_runnable()

    def _remove_mask_preview(self) -> None:
        layer, self._mask_preview = self._mask_preview, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _orient(self, layer) -> None:
        key = str(getattr(layer, "unique_id", id(layer)))
        if key in self._oriented:
            return
        self._oriented.add(key)
        if orient_like_a_radiologist(self.viewer, layer):
            self._viewing_order = tuple(self.viewer.dims.order)

    def _method_changed(self, *_args) -> None:
        self.members.enabled = self.method.value != "single"

    def _device_changed(self, *_args) -> None:
        choice = self.device.value
        try:
            device = resolve_device(choice)
        except InputError as error:
            self.device_info.setText(error.in_words(gui_word))
            self.device_info.setStyleSheet(ERROR_STYLE)
            return
        if device.type == "cpu":
            why = "" if choice == "cpu" else " (no GPU found)"
            self.device_info.setText(f"will run on the CPU{why}: expect minutes for full-size settings")
            self.device_info.setStyleSheet(WARN_STYLE)
        else:
            self.device_info.setText(f"will run on {device.type.upper()}")
            self.device_info.setStyleSheet("")

    def _prior_changed(self, *_args) -> None:
        missing = self.prior.value == BUNDLED and not bundled_prior_path().is_file()
        self.prior_info.setText(
            "the bundled prior is not installed: Browse… for a .safetensors file or train one" if missing else ""
        )
        self.prior_info.setStyleSheet(WARN_STYLE if missing else "")
        self.prior_info.setVisible(missing)

    def _prior_added(self, path) -> None:
        if is_deleted(self):  # a widget of a closed viewer, not yet garbage collected
            known_priors.changed.disconnect(self._prior_added)
            return
        self.prior.reset_choices()
        if not self.status.running:
            self.prior.value = str(path)

    def add_prior(self, path: str | Path) -> None:
        """Make a prior file selectable (and select it)."""
        known_priors.add(path)

    def _browse_prior(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a prior", "", "Dropsembles priors (*.safetensors)")
        if path:
            self.add_prior(path)

    # ------------------------------------------------------------------ run

    def config(self) -> ReconstructionConfig:
        return ReconstructionConfig(
            method=self.method.value,
            members=int(self.members.value),
            finetune=FinetuneConfig(steps=int(self.steps.value), ewc_lambda=float(self.ewc.value)),
            resolution_mm=float(self.spacing.value) or None,
            threshold=float(self.threshold.value()),
            device=self.device.value,
            seed=int(self.seed.value),
            keep_members=True,
            preview_interval_s=PREVIEW_INTERVAL_S if self.live_preview.value else 0.0,
            empty_slices=self.empty_slices.value,
        )

    def request(self) -> ReconstructRequest:
        """The run's parameters, read on the main thread (the input data is copied)."""
        layer = self.input.value
        reason = self.blocked_reason()
        if reason:
            raise InputError(reason)
        volume = layer_to_volume(layer)
        threshold = float(self.image_threshold.value) if self._thresholding() else None
        selection = self.label.value
        frame = InputFrame.from_layer(layer)
        config = self.annotate.with_marks(frame.source_id, self.config(), volume)  # slices marked empty stay so
        names = self._names.setdefault(frame.source_id, label_names(layer))
        return ReconstructRequest(
            volume=volume,
            frame=frame,
            names=dict(names),
            prior=None if self.prior.value == BUNDLED else self.prior.value,
            config=config,
            selection=None if selection == BINARY else selection,
            image_threshold=threshold,
            member=0 if self.member_meshes.value else None,
        )

    def run(self) -> Task | None:
        """Start a reconstruction of the selected input (returns its task; None when the input is refused)."""
        if self.status.running:
            return self.runner.task
        try:
            request = self.request()
        except DropsemblesError as error:
            self._failed(Outcome(RunState.FAILED, error=error))
            return None
        return self._start(
            partial(reconstruct_task, request), request, "reconstructing", request.config.preview_interval_s
        )

    def start_refine(self, request: RefineRequest) -> Task:
        """Refine the selected input's result in the background (the Annotate next panel's Refine)."""
        return self._start(partial(refine_task, request), request, "refining", request.preview_interval_s)

    def _start(self, work, request: ReconstructRequest | RefineRequest, verb: str, preview_interval_s: float) -> Task:
        """Run ``work`` for ``request``'s input through the run controller (progress, preview, layers at the end)."""
        self._frame = request.frame
        if preview_interval_s > 0:
            self._prepare_preview(request)
        return self.runner.start(
            work,
            message=f"{verb} '{request.frame.name}'",
            activity_name=request.frame.name,
            on_progress=self._on_progress,
            on_finished=self._on_finished,
        )

    def cancel(self) -> None:
        self.runner.cancel()

    def _on_progress(self, progress) -> None:
        if progress.preview is not None and self._frame is not None:
            self._show_preview(progress.preview)

    def _prepare_preview(self, request: ReconstructRequest) -> None:
        """Have a layer ready for the live preview when Run is pressed. A re-run shows it in the previous
        result's mean layer (its look is given back at the end); a first run adds a hidden layer now,
        which becomes the mean: adding a layer costs napari a few hundred ms under software OpenGL and
        removing one a full garbage collection, pauses that would otherwise come in the middle of the run."""
        from napari.layers import Layer

        self._end_preview(keep_data=False)
        mean = result_layers(self.viewer.layers, request.frame.source_id).get("mean")
        if mean is not None and mean._type_string == "image":
            self._preview_layer = mean
            return
        placeholder = Volume(np.zeros((2, 2, 2), np.float32), request.volume.affine)
        data, kwargs, layer_type = preview_layer_data(placeholder, request.frame, float(self.threshold.value()))
        self._preview_layer = Layer.create(data, {**kwargs, "visible": False}, layer_type)
        with not_activating(self.viewer.layers):
            self.viewer.layers.append(self._preview_layer)

    def _show_preview(self, preview: Volume) -> None:
        """The live preview in its layer. Its first report sets the layer's look and frame (the previous mean's
        look, the preview grid's box) while the layer is still hidden, and its data and first draw come in the
        next event-loop turn: each is a repaint of its own (two together were a 100-150 ms pause)."""
        from napari.layers import Layer

        data, kwargs, layer_type = preview_layer_data(preview, self._frame, float(self.threshold.value()))
        layer = self._preview_layer
        if layer is not None and layer in self.viewer.layers and "affine" not in kwargs:
            set_up = False
            if role_of(layer) == "mean" and self._preview_restore is None:  # the previous mean shows the preview
                self._preview_restore = {key: getattr(layer, key) for key in (*PREVIEW_LOOK, *PREVIEW_FRAME)}
                for key in PREVIEW_LOOK:
                    if key in kwargs and differs(layer, key, kwargs[key]):
                        setattr(layer, key, kwargs[key])
                set_up = True
            if not (np.allclose(layer.scale, kwargs["scale"]) and np.allclose(layer.translate, kwargs["translate"])):
                layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]  # another structure's box
                set_up = True
            self._pending_preview = data
            if set_up and not (self.sync if self.sync is not None else sync_workers_default()):
                self._preview_timer.start()
            else:
                self._flush_preview()
            return
        self._end_preview(keep_data=False)
        if self.status.running:
            self._preview_layer = Layer.create(data, kwargs, layer_type)
            with not_activating(self.viewer.layers):
                self.viewer.layers.append(self._preview_layer)

    def _flush_preview(self) -> None:
        """The pending preview's data into its layer, shown (one slice and one draw)."""
        data, self._pending_preview = self._pending_preview, None
        layer = self._preview_layer
        if data is None or layer is None or layer not in self.viewer.layers or is_deleted(self):
            return
        layer.data = data
        if not layer.visible:
            layer.visible = True

    def _end_preview(self, keep_data: bool) -> None:
        """The run is over: a previous mean that showed the preview gets its look back (and its data, unless
        the new result replaces it); an added preview layer is removed unless it becomes the new mean."""
        self._preview_timer.stop()
        self._pending_preview = None
        layer, restore = self._preview_layer, self._preview_restore
        self._preview_layer = self._preview_restore = None
        if layer is None or layer not in self.viewer.layers:
            return
        if role_of(layer) == "mean":
            for key, value in (restore or {}).items():
                if not (keep_data and key in PREVIEW_FRAME):
                    setattr(layer, key, value)
        elif not keep_data:
            self.viewer.layers.remove(layer)

    def _on_finished(self, outcome: Outcome) -> None:
        if is_deleted(self):
            return
        if outcome.state is RunState.DONE:
            self._show_result(outcome.value)
            return
        self._end_preview(keep_data=False)
        if outcome.state is RunState.CANCELLED:
            self.status.finish(RunState.CANCELLED, "cancelled: no layer was changed")
        else:
            self._failed(outcome)

    def _failed(self, outcome: Outcome) -> None:
        self.runner.finish(RunState.FAILED, outcome.message, outcome.error)
        notify_error(f"Dropsembles: {outcome.message}")

    def _show_result(self, output: ReconstructOutput) -> None:
        """Put the result layers in place one per event-loop turn (the viewer stays responsive)."""
        self.status.message = "adding the result layers"
        self.status.changed.emit()
        self._end_preview(keep_data=True)
        self._apply_names_and_colours(output)
        placing = place_result_layers(self.viewer, output.frame.source_id, output.layer_data)
        if self.sync if self.sync is not None else sync_workers_default():
            with _keeping_selection(self.viewer):
                added = drive(placing)
            self._result_placed(output, added)
            return
        self._place_next(placing, output)

    def _apply_names_and_colours(self, output: ReconstructOutput) -> None:
        """The thresholded result takes the input's label colours."""
        source = self._source_layer(output.frame.source_id)
        colormap = getattr(source, "colormap", None) if source is not None and hasattr(source, "get_color") else None
        if colormap is None:
            return
        for _data, kwargs, layer_type in output.layer_data:
            if layer_type == "labels":  # a copy: highlighting a structure in the result must not hide the input's
                kwargs["colormap"] = colormap.model_copy(deep=True) if hasattr(colormap, "model_copy") else colormap

    def _place_next(self, placing, output: ReconstructOutput) -> None:
        if is_deleted(self):
            return
        try:
            with _keeping_selection(self.viewer):
                next(placing)
        except StopIteration as done:
            self._result_placed(output, done.value)
            return
        QTimer.singleShot(PLACE_PAUSE_MS, partial(self._place_next, placing, output))

    def _result_placed(self, output: ReconstructOutput, added: list) -> None:
        self._remove_mask_preview()
        _link_contrast_limits(added)
        output.layer_data = []  # the layers hold the data now
        self.results[output.frame.source_id] = output
        structures = output.structures
        self.annotate.result_placed(output)
        what = "refined" if output.round is not None else "done"
        self.status.finish(RunState.DONE, f"{what} in {output.elapsed_s:.1f} s on {structures.device}")
        if self._selected_source_id() == output.frame.source_id or self.current is None:
            wanted = float(self.threshold.value())
            self._show_state_of(self.input.value, output)
            if abs(wanted - output.threshold) > 1e-9:  # moved during the run: it applies to this result
                self.threshold.setValue(wanted)
                self._fine_timer.start()

    # ------------------------------------------------------------------ state of the selected input

    def _selected_source_id(self) -> str | None:
        layer = self.input.value
        return None if layer is None else str(getattr(layer, "unique_id", None) or id(layer))

    def _source_layer(self, source_id: str):
        for layer in self.viewer.layers:
            if str(getattr(layer, "unique_id", None) or id(layer)) == source_id:
                return layer
        return None

    def _show_state_of(self, layer, output: ReconstructOutput | None = None) -> None:
        """The result views describe the selected input's result, or say there is none."""
        if output is None:
            output = self.results.get(self._selected_source_id() or "")
        self.current = output
        self._remesh_serial = self._remesh_applied = 0
        self._update_legend()
        if output is None:
            self.table.set_rows([])
            self.member.setEnabled(False)
            self.threshold.setEnabled(False)
            self.result_info.setText("no result for this input yet" if layer is not None else "")
            self.notes_info.setVisible(False)
            if hasattr(self, "annotate"):
                self.annotate.show_result(None)
            return
        if not self._running_on(output.frame.source_id):
            self.threshold.blockSignals(True)
            self.threshold.setValue(self._result_threshold(output))
            self.threshold.blockSignals(False)
        self.threshold.setEnabled(True)
        layers = result_layers(self.viewer.layers, output.frame.source_id)
        structures = output.structures
        self.member.blockSignals(True)
        self.member.setRange(0, max(0, structures.members - 1))
        self.member.setValue(0)
        self.member.blockSignals(False)
        self.member.setEnabled("members" in layers)
        source = self._source_layer(output.frame.source_id)
        names = self._names.setdefault(output.frame.source_id, label_names(source) if source is not None else {})
        self.table.set_rows(output.rows, names, label_colours(source, [r.label for r in output.rows]))
        device = structures.device
        flagged = [(names.get(r.label, f"label {r.label}"), r.reason) for r in output.rows if r.flagged]
        several = len(structures.results) > 1
        notes = [  # how the observation was read: in the result line, not in toasts that cut them off
            f"{names.get(label, f'label {label}') + ': ' if several else ''}{note}"
            for label, result in structures.results.items()
            for note in result.notes(lambda field, value: f"{GUI_FIELDS.get(field, repr(field))} = {value}")
        ]
        self.result_info.setText(
            f"{len(structures.labels)} structure(s), {structures.members} members, grid {structures.mean.shape},"
            f" {device.upper() if device != 'cpu' else 'CPU'}"
            + (f"; do not trust: {', '.join(f'{n} ({why})' for n, why in flagged)}" if flagged else "")
        )
        self.notes_info.setText("\n".join(f"• {note}" for note in notes))
        self.notes_info.setVisible(bool(notes))
        self._highlight = None
        if not self._mesh_colour_by_user:  # several structures: each mesh in its label's colour by default
            self.mesh_colour.blockSignals(True)
            self.mesh_colour.setCurrentText(MESH_BY_STRUCTURE if several else MESH_BY_VARIANCE)
            self.mesh_colour.blockSignals(False)
        self._recolour_mesh()
        if hasattr(self, "annotate"):
            self.annotate.show_result(output)

    def _update_legend(self, _event=None) -> None:
        """The dock's colour bar describes the selected input's variance heatmap (hidden without one)."""
        if is_deleted(self):
            return
        variance = None
        if self.current is not None:
            variance = result_layers(self.viewer.layers, self.current.frame.source_id).get("variance")
        self.legend.setVisible(variance is not None)
        if variance is None:
            return
        if variance not in self._legend_sources:
            self._legend_sources.add(variance)
            variance.events.contrast_limits.connect(self._update_legend)
            variance.events.colormap.connect(self._update_legend)
        self.legend.set_colormap(variance.colormap, tuple(variance.contrast_limits))

    def _running_on(self, source_id: str) -> bool:
        return self.status.running and self._frame is not None and self._frame.source_id == source_id

    def _result_threshold(self, output: ReconstructOutput) -> float:
        layers = result_layers(self.viewer.layers, output.frame.source_id)
        mesh = layers.get("mesh") or next(iter(structure_mesh_layers(layers).values()), None)
        if mesh is not None:
            return float(mesh.metadata.get(TAG, {}).get("threshold", output.threshold))
        return output.threshold

    def _ndisplay_changed(self, event) -> None:
        dims = self.viewer.dims
        if self._viewing_order is not None and dims.ndim == 3:
            # napari draws surfaces wrongly in 3D with permuted axes: 3D uses the file's order
            if event.value == 3 and tuple(dims.order) == self._viewing_order:
                dims.order = (0, 1, 2)
            elif event.value == 2 and tuple(dims.order) == (0, 1, 2):
                dims.order = self._viewing_order
        for source_id in self.results:
            show_for_ndisplay(list(result_layers(self.viewer.layers, source_id).values()), event.value)

    # ------------------------------------------------------------------ threshold / members

    def _threshold_changed(self, _value: float) -> None:
        if self.current is None:
            return
        if self._running_on(self.current.frame.source_id):
            return  # this input is being reconstructed again: the value applies to the new result
        self._coarse_timer.start()
        self._fine_timer.start()

    def _member_changed(self, _value: int) -> None:
        if self.current is not None:
            self._fine_timer.start()

    def _remesh(self, fine: bool) -> None:
        if self.current is None:
            return
        if self._remesh_task is not None and self._remesh_task.running:
            self._remesh_queued = True  # the latest values run when this one is done
            return
        grid_voxels = int(np.prod(self.current.structures.mean.shape))
        step = 1 if fine or grid_voxels <= COARSE_VOXELS else 2
        if not fine and step == 1:  # a small grid: the full mesh is quick, do it now
            fine = True
        member = int(self.member.value()) if (fine and self.member.isEnabled()) else None
        self._remesh_serial += 1
        serial = self._remesh_serial
        current = self.current
        level = float(self.threshold.value())
        task = Task(
            lambda _cancel: remesh_task(
                current.structures, current.frame, level, step_size=step, member=member, mesh=True, rows=fine
            ),
            on_progress=_ignore,
            on_finished=partial(self._remesh_done, serial, current),
            sync=self.sync,
        )
        self._remesh_task = task
        task.start()

    def _remesh_done(self, serial: int, source: ReconstructOutput, outcome: Outcome) -> None:
        if is_deleted(self):
            return
        if outcome.state is RunState.DONE and source is self.current and serial > self._remesh_applied:
            self._remesh_applied = serial
            self._apply_remesh(outcome.value)
        elif outcome.state is RunState.FAILED:
            notify_error(f"Dropsembles: re-meshing failed: {outcome.message}")
        if self._remesh_queued:
            self._remesh_queued = False
            QTimer.singleShot(0, partial(self._remesh, True))

    def _apply_remesh(self, output: RemeshOutput) -> None:
        self.last_remesh = output
        layers = result_layers(self.viewer.layers, self.current.frame.source_id)
        variance = layers.get("variance")
        updates = [("mesh", output.mesh), ("members", output.member)]
        updates += [(f"mesh:{label}", data) for label, data in (output.structure_meshes or {}).items()]
        for key, data in updates:
            layer = layers.get(key)
            if layer is not None and data is not None:
                limits = tuple(variance.contrast_limits) if variance is not None else layer.contrast_limits
                if layer.vertex_colors is not None:
                    layer.vertex_colors = None  # recoloured below, for the new vertices
                layer.data = data
                if not np.allclose(layer.contrast_limits, limits):  # each change redraws the colour bar
                    layer.contrast_limits = limits
                layer.metadata[TAG]["threshold"] = output.threshold
        if output.labels is not None and "thresholded" in layers:
            layers["thresholded"].data = output.labels
        self._recolour_mesh()
        if "mean" in layers:
            layers["mean"].iso_threshold = output.threshold
        if output.rows is not None:
            self.current.rows = output.rows
            source = self._source_layer(self.current.frame.source_id)
            self.table.set_rows(output.rows, self.table.names, label_colours(source, [r.label for r in output.rows]))
        self.status.message = (
            f"threshold {output.threshold:.2f}: "
            + ("no surface" if output.empty else f"{output.triangles} triangles")
            + f" ({1000 * output.elapsed_s:.0f} ms{', half resolution' if output.step_size > 1 else ''})"
        )
        self.status.changed.emit()

    # ------------------------------------------------------------------ structures

    def _select_row(self, row: int, _column: int = 0) -> None:
        """Highlight the row's structure in the thresholded layer and centre the view on it."""
        if not 0 <= row < len(self.table.rows) or self.current is None:
            return
        structure = self.table.rows[row]
        thresholded = result_layers(self.viewer.layers, self.current.frame.source_id).get("thresholded")
        if thresholded is not None and len(self.table.rows) > 1:
            thresholded.selected_label = int(structure.label)
            thresholded.show_selected_label = True
            self._highlight = int(structure.label)
            self._recolour_mesh()
        centre_on(self.viewer, structure.centre_mm)

    def _recolour_mesh(self) -> None:
        """Colour the mesh by structure (the thresholded labels' colours, the selected one bright) or by variance.

        Several structures: each has its own mesh layer, in its label's colour (the others dimmed while
        a table row is selected). One structure: by variance unless asked otherwise.
        """
        if self.current is None:
            return
        layers = result_layers(self.viewer.layers, self.current.frame.source_id)
        by_structure = self.mesh_colour.currentText() == MESH_BY_STRUCTURE
        structures = self.current.structures
        highlight = self._highlight if self._highlight in structures.labels and len(structures.labels) > 1 else None
        per_structure = structure_mesh_layers(layers)
        colours = self._structure_colours(layers, structures.labels)
        if per_structure:
            for label, layer in per_structure.items():
                if not by_structure:
                    if layer.vertex_colors is not None:
                        layer.vertex_colors = None
                    continue
                colour = np.asarray(colours.get(label, (0.7, 0.7, 0.7, 1.0)), np.float32)
                if highlight is not None and label != highlight:
                    colour = np.array([*(colour[:3] * 0.3), colour[3]], np.float32)
                layer.vertex_colors = np.tile(colour, (len(layer.data[0]), 1))
            return
        mesh = layers.get("mesh")
        if mesh is None:
            return
        if not by_structure:
            if mesh.vertex_colors is not None:
                mesh.vertex_colors = None
            return
        affine = self.current.frame.world_affine
        vertices_mm = np.asarray(mesh.data[0], float) @ affine[:3, :3].T + affine[:3, 3]
        labels = vertex_labels(structures.owner, structures.mean, vertices_mm)
        mesh.vertex_colors = label_vertex_colours(labels, colours, highlight)

    def _structure_colours(self, layers: dict, labels: list[int]) -> dict[int, tuple]:
        """label -> colour of the input's Labels layer (else the thresholded result's; its highlight aside)."""
        source = self._source_layer(self.current.frame.source_id)
        colours = label_colours(source, labels) if source is not None and hasattr(source, "get_color") else {}
        return colours or label_colours(layers.get("thresholded"), labels)

    def _name_edited(self, item) -> None:
        """A structure renamed in the table: its mesh layer takes the name too."""
        if self.current is not None and item.column() == 0:
            names = dict(self.table.names)
            self._names[self.current.frame.source_id] = names
            per_structure = structure_mesh_layers(result_layers(self.viewer.layers, self.current.frame.source_id))
            for label, layer in per_structure.items():
                layer.name = structure_mesh_name(self.current.frame.name, label, names)

    def _mesh_colour_chosen(self, _index: int) -> None:
        self._mesh_colour_by_user = True


def centre_on(viewer, centre_mm) -> None:
    """Move the slice and the camera to a world point (the last three world axes)."""
    dims = viewer.dims
    offset = dims.ndim - 3
    centre = list(centre_mm)
    for axis in dims.not_displayed:
        if axis >= offset:
            dims.set_point(axis, centre[axis - offset])
    viewer.scene.camera.center = tuple(centre[axis - offset] for axis in dims.displayed if axis >= offset)


def resolve_device_quiet(name: str) -> str:
    try:
        return resolve_device(name).type
    except InputError:
        return name


_FOLLOWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # heatmap -> the meshes that follow it


def _link_contrast_limits(layers: list) -> None:
    """The mesh colours follow the variance heatmap's contrast limits (one link per heatmap; meshes
    added by a later run join it)."""
    variance = next((layer for layer in layers if role_of(layer) == "variance"), None)
    if variance is None:
        return
    new = variance not in _FOLLOWERS
    followers = _FOLLOWERS.setdefault(variance, weakref.WeakSet())
    for layer in layers:
        if role_of(layer) in ("mesh", "members"):
            followers.add(layer)
    if not new:
        return

    def follow(_event=None, source=weakref.ref(variance)) -> None:
        heat = source()
        if heat is None:
            return
        for mesh in list(_FOLLOWERS.get(heat, ())):
            mesh.contrast_limits = tuple(heat.contrast_limits)

    variance.events.contrast_limits.connect(follow)  # napari keeps plain functions alive


def _label_text(label: int, names: dict[int, str]) -> str:
    return f"{names[label]} ({label})" if label in names else f"label {label}"


@contextlib.contextmanager
def _keeping_selection(viewer):
    """Layers added inside keep the user's layer selection as it was."""
    selected, active = set(viewer.layers.selection), active_layer(viewer.layers)
    try:
        yield
    finally:
        _restore_selection(viewer, selected, active)


def _restore_selection(viewer, selected: set, active) -> None:
    still = [layer for layer in selected if layer in viewer.layers]
    if set(viewer.layers.selection) == set(still) and active_layer(viewer.layers) is active:
        return  # unchanged: touching it would rebuild the layer controls (twice)
    viewer.layers.selection.clear()
    viewer.layers.selection.update(still)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active


def _single_shot(parent: QWidget, ms: int, callback) -> QTimer:
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(callback)
    return timer


def _ignore(*_args) -> None:
    return None
