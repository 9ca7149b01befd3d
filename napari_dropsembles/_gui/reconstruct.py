"""The Reconstruct widget: parameters -> background run -> result layers, threshold slider, structure table."""

from __future__ import annotations

import math
import weakref
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider, QLabeledSlider

from ..core.device import DEVICE_CHOICES, resolve_device
from ..core.errors import DropsemblesError, InputError
from ..core.io import list_labels
from ..core.methods import METHODS
from ..core.paths import bundled_prior_path
from ..core.pipeline import ReconstructionConfig
from ..core.structures import StructureRow
from ..core.volume import Volume
from .common import (
    ERROR_STYLE,
    WARN_STYLE,
    ActivityProgress,
    RunPanel,
    is_deleted,
    known_priors,
    notify_error,
    notify_info,
    notify_warning,
)
from .layers import (
    InputFrame,
    layer_to_volume,
    place_result_layers,
    preview_layer_data,
    result_layers,
    role_of,
)
from .state import RunState, RunStatus
from .tasks import (
    ALL_LABELS,
    EACH_LABEL,
    ReconstructOutput,
    ReconstructRequest,
    RemeshOutput,
    reconstruct_task,
    remesh_task,
    start_warm_up,
)
from .workers import Outcome, Task, sync_workers_default

BUNDLED = "bundled"
BINARY = "binary"
PREVIEW_INTERVAL_S = 2.0
PLACE_PAUSE_MS = 15  # between result layers: lets the event loop repaint and take input
COARSE_VOXELS = 64**3  # above this, the mesh follows a dragged slider at half resolution first
METHOD_LABELS = {
    "dropsembles": "Dropsembles",
    "mc_dropout": "MC dropout",
    "deep_ensemble": "deep ensemble",
    "single": "single network",
}


class StructureTable(QTableWidget):
    """Per-structure confidence: volume (mean and spread across members), band variance, flag."""

    HEADERS = ("label", "volume mL", "± mL", "band variance", "flag")

    def __init__(self) -> None:
        super().__init__(0, len(self.HEADERS))
        self.rows: list[StructureRow] = []
        self.setHorizontalHeaderLabels(self.HEADERS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setStretchLastSection(True)
        self.setToolTip(
            "one row per reconstructed structure; band variance = mean member variance within 2 voxels of the surface;"
            " click a row to centre the view on it"
        )

    def set_rows(self, rows: list[StructureRow]) -> None:
        self.rows = list(rows)
        self.setRowCount(len(rows))
        for i, row in enumerate(rows):
            cells = (
                str(row.label),
                f"{row.volume_ml:.2f}",
                "-" if not math.isfinite(row.volume_ml_std) else f"{row.volume_ml_std:.2f}",
                "-" if not math.isfinite(row.band_variance) else f"{row.band_variance:.4f}",
                ("⚠ " + row.reason) if row.flagged else "",
            )
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if row.flagged:
                    item.setForeground(Qt.GlobalColor.darkYellow)
                    item.setToolTip(row.reason)
                self.setItem(i, j, item)
        self.setMinimumHeight(min(220, 30 + 26 * len(rows)))


class ReconstructWidget(QWidget):
    """Reconstruct with uncertainty: pick a segmentation, press Run, get mean/variance/mesh layers."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.status = RunStatus()
        self.sync: bool | None = None  # None: DROPSEMBLES_SYNC_WORKERS decides
        self.current: ReconstructOutput | None = None  # the last result (what the sliders act on)
        self.last_remesh: RemeshOutput | None = None
        self._running = _Running()
        self._remesh_task: Task | None = None
        self._remesh_queued = False
        self._remesh_serial = 0
        self._remesh_applied = 0
        self._preview_layer = None
        self._frame: InputFrame | None = None
        self._warned_cpu = False
        self._described_input = None  # the input layer the Label choices describe
        self._live = False  # a run is going and its progress is welcome

        self._build_form()
        self.run_panel = RunPanel(self.status, self.run_or_cancel)
        self.threshold = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0.05, 0.95)
        self.threshold.setSingleStep(0.01)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip("surface level on the mean occupancy; re-meshes the cached grid (no network query)")
        self.member = QLabeledSlider(Qt.Orientation.Horizontal)
        self.member.setRange(0, 0)
        self.member.setEnabled(False)
        self.member.setToolTip("which ensemble member's mesh the 'member mesh' layer shows")
        self.table = StructureTable()
        self.table.cellClicked.connect(self._centre_on_row)
        self.result_info = QLabel("")
        self.result_info.setWordWrap(True)

        layout = QVBoxLayout(self)
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
        layout.addWidget(self.run_panel)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(QLabel("Threshold"))
        threshold_row.addWidget(self.threshold, 1)
        layout.addLayout(threshold_row)
        member_row = QHBoxLayout()
        member_row.addWidget(QLabel("Member"))
        member_row.addWidget(self.member, 1)
        layout.addLayout(member_row)
        layout.addWidget(self.result_info)
        layout.addWidget(QLabel("Per-structure confidence"))
        layout.addWidget(self.table)
        layout.addStretch(1)

        self._coarse_timer = _single_shot(self, 30, partial(self._remesh, False))
        self._fine_timer = _single_shot(self, 250, partial(self._remesh, True))
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.member.valueChanged.connect(self._member_changed)
        known_priors.changed.connect(self._prior_added)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.reset_choices)
        events.inserted.connect(self._watch_name)
        for layer in self.viewer.layers:
            layer.events.name.connect(self.reset_choices)
        self.destroyed.connect(partial(_shutdown, self._running))
        self.reset_choices()
        self._device_changed()
        self._prior_changed()
        start_warm_up()

    # ------------------------------------------------------------------ form

    def _build_form(self) -> None:
        self.input = ComboBox(label="Input", choices=self._input_choices, tooltip="a Labels layer, or an Image")
        self.label = ComboBox(label="Label", choices=[("(binary mask)", BINARY)], tooltip="which structure(s)")
        self.use_image_threshold = CheckBox(text="Threshold image", value=False)
        self.image_threshold = FloatSpinBox(label="Image level", value=0.5, min=-1e9, max=1e9, step=0.05)
        self.method = ComboBox(label="Method", choices=[(METHOD_LABELS[m], m) for m in METHODS], value="dropsembles")
        self.members = SpinBox(label="Members", value=4, min=1, max=32)
        self.steps = SpinBox(label="Fine-tuning steps", value=60, min=0, max=5000)
        self.ewc = FloatSpinBox(label="EWC strength", value=0.1, min=0.0, max=100.0, step=0.01)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.spacing = FloatSpinBox(
            label="Output spacing (mm)", value=0.0, min=0.0, max=50.0, step=0.1,
            tooltip="0 = the input's finest voxel spacing",
        )
        self.empty_slices = ComboBox(
            label="Empty slices",
            choices=[("not annotated", "unobserved"), ("background", "background")],
            value="unobserved",
            tooltip="empty slices between labelled ones: skipped as never annotated (default), or taken as background",
        )
        self.device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto")
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
                self.input, self.label, self.use_image_threshold, self.image_threshold, self.method, self.members,
                self.steps, self.ewc, self.seed, self.spacing, self.empty_slices, self.device, self.member_meshes,
                self.live_preview,
            ],
            labels=True,
        )
        self.input.changed.connect(self._input_changed)
        self.use_image_threshold.changed.connect(self._input_changed)
        self.method.changed.connect(self._method_changed)
        self.device.changed.connect(self._device_changed)
        self.prior.changed.connect(self._prior_changed)

    def _input_choices(self, _widget=None) -> list[tuple[str, object]]:
        from napari.layers import Image, Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, (Image, Labels))
                and role_of(layer) not in ("preview",)]

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

    def _input_changed(self, *_args) -> None:
        from napari.layers import Image

        layer = self.input.value
        self._described_input = layer
        is_image = isinstance(layer, Image)
        self.use_image_threshold.visible = is_image
        self.image_threshold.visible = is_image and self.use_image_threshold.value
        if is_image and not self.use_image_threshold.value:
            data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
            if data.size and data.dtype.kind == "f" and np.isfinite(data).all():
                self.image_threshold.value = float(data.min() + data.max()) / 2
        self._refresh_labels(layer)

    def _refresh_labels(self, layer) -> None:
        from napari.layers import Image

        choices = [("(binary mask)", BINARY)]
        thresholded = isinstance(layer, Image) and self.use_image_threshold.value
        if layer is not None and not thresholded:
            try:
                data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
                labels = list_labels(Volume(data)) if data.ndim == 3 else []
            except (DropsemblesError, ValueError, TypeError):
                labels = []
            if len(labels) > 1:
                choices = [("each label separately", EACH_LABEL), ("all labels merged", ALL_LABELS)]
                choices += [(f"label {v}", v) for v in labels]
        self.label.choices = choices

    def _method_changed(self, *_args) -> None:
        self.members.enabled = self.method.value != "single"

    def _device_changed(self, *_args) -> None:
        choice = self.device.value
        try:
            device = resolve_device(choice)
        except InputError as error:
            self.device_info.setText(str(error).replace("--device auto", "'auto'"))
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
        if self.prior.value == BUNDLED and not bundled_prior_path().is_file():
            self.prior_info.setText("the bundled prior is not installed: Browse… for a .safetensors file or train one")
            self.prior_info.setStyleSheet(WARN_STYLE)
        else:
            self.prior_info.setText("")
            self.prior_info.setStyleSheet("")

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
            steps=int(self.steps.value),
            ewc=float(self.ewc.value),
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
        if layer is None:
            raise InputError("no input: open a segmentation (Labels) or an image first")
        volume = layer_to_volume(layer)
        threshold = float(self.image_threshold.value) if self.use_image_threshold.value else None
        selection = self.label.value
        config = self.config()
        config.validate()
        return ReconstructRequest(
            volume=volume,
            frame=InputFrame.from_layer(layer),
            prior=None if self.prior.value == BUNDLED else self.prior.value,
            config=config,
            selection=None if selection == BINARY else selection,
            image_threshold=threshold,
            member=0 if self.member_meshes.value else None,
        )

    def run_or_cancel(self) -> None:
        if self.status.running:
            self.cancel()
        else:
            self.run()

    def run(self) -> Task | None:
        """Start a reconstruction of the selected input (returns its task; None when the input is refused)."""
        if self.status.running:
            return self._running.task
        try:
            request = self.request()
        except DropsemblesError as error:
            self._failed(Outcome(RunState.FAILED, error=error))
            return None
        self._frame = request.frame
        on_cpu = resolve_device_quiet(request.config.device) == "cpu"
        if on_cpu and request.config.device != "cpu" and not self._warned_cpu:
            notify_warning("Dropsembles runs on the CPU (no GPU found): small settings keep it quick")
            self._warned_cpu = True
        self.status.start(f"reconstructing '{request.frame.name}'")
        self._running.activity = ActivityProgress(f"Dropsembles: {request.frame.name}")
        task = Task(
            partial(reconstruct_task, request), on_progress=self._on_progress, on_finished=self._on_finished,
            sync=self.sync,
        )
        self._running.task = task
        self._live = True
        task.start()
        return task

    def cancel(self) -> None:
        if self._running.task is not None:
            self._running.task.cancel()
            self.status.message = "cancelling…"
            self.status.changed.emit()

    @property
    def task(self) -> Task | None:
        return self._running.task

    def _on_progress(self, progress) -> None:
        if not self._live:
            return
        self.status.report(progress)
        if self._running.activity is not None:
            # napari's activity dock may process events here: the run can end (re-entrantly) meanwhile
            self._running.activity.update(self.status.fraction, progress.phase)
        if progress.preview is not None and self._frame is not None and self._live:
            self._show_preview(progress.preview)

    def _show_preview(self, preview: Volume) -> None:
        from napari.layers import Layer

        data, kwargs, layer_type = preview_layer_data(preview, self._frame, float(self.threshold.value()))
        layer = self._preview_layer
        if layer is not None and layer in self.viewer.layers and "affine" not in kwargs:
            if not (np.allclose(layer.scale, kwargs["scale"]) and np.allclose(layer.translate, kwargs["translate"])):
                layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]  # another structure's box
            layer.data = data
            return
        self._remove_preview()
        if self._live:
            self._preview_layer = Layer.create(data, kwargs, layer_type)
            self.viewer.layers.append(self._preview_layer)

    def _remove_preview(self) -> None:
        layer, self._preview_layer = self._preview_layer, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _on_finished(self, outcome: Outcome) -> None:
        self._live = False
        self._running.close_activity()
        if is_deleted(self):
            return
        if outcome.state is RunState.DONE:
            self._show_result(outcome.value)
            return
        self._remove_preview()
        if outcome.state is RunState.CANCELLED:
            self.status.finish(RunState.CANCELLED, "cancelled: no layer was changed")
        else:
            self._failed(outcome)

    def _failed(self, outcome: Outcome) -> None:
        self.status.finish(RunState.FAILED, outcome.message, outcome.error)
        notify_error(f"Dropsembles: {outcome.message}")
        self._refresh_labels(self.input.value)

    def _show_result(self, output: ReconstructOutput) -> None:
        """Put the result layers in place one per event-loop turn (the viewer stays responsive)."""
        self.status.message = "adding the result layers"
        self.status.changed.emit()
        placing = place_result_layers(self.viewer, output.frame.source_id, output.layer_data)
        if (self.sync if self.sync is not None else sync_workers_default()):
            while True:
                try:
                    next(placing)
                except StopIteration as done:
                    self._result_placed(output, done.value)
                    return
        self._place_next(placing, output)

    def _place_next(self, placing, output: ReconstructOutput) -> None:
        if is_deleted(self):
            return
        try:
            next(placing)
        except StopIteration as done:
            self._result_placed(output, done.value)
            return
        QTimer.singleShot(PLACE_PAUSE_MS, partial(self._place_next, placing, output))

    def _result_placed(self, output: ReconstructOutput, added: list) -> None:
        self._preview_layer = None
        _link_contrast_limits(added)
        self.current = output
        self._remesh_serial = self._remesh_applied = 0
        self.threshold.blockSignals(True)
        self.threshold.setValue(output.threshold)
        self.threshold.blockSignals(False)
        has_members = any(role_of(layer) == "members" for layer in added)
        self.member.blockSignals(True)
        self.member.setRange(0, max(0, output.structures.members - 1))
        self.member.setValue(0)
        self.member.blockSignals(False)
        self.member.setEnabled(has_members)
        self.table.set_rows(output.rows)
        structures = output.structures
        device = structures.device
        self.device_info.setText(f"ran on {device.upper() if device != 'cpu' else 'the CPU'}")
        self.device_info.setStyleSheet(WARN_STYLE if device == "cpu" else "")
        flagged = [str(r.label) for r in output.rows if r.flagged]
        self.result_info.setText(
            f"{len(structures.labels)} structure(s), {structures.members} members, grid {structures.mean.shape}"
            + (f"; least trustworthy: label {', '.join(flagged)}" if flagged else "")
        )
        self.status.finish(RunState.DONE, f"done in {output.elapsed_s:.1f} s on {device}")
        several = len(structures.results) > 1
        for label, result in structures.results.items():
            for note in result.notes():
                notify_info(f"Dropsembles: {f'label {label}: ' if several else ''}{note}")

    # ------------------------------------------------------------------ threshold / members

    def _threshold_changed(self, _value: float) -> None:
        if self.current is None:
            return
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
        for role, data in (("mesh", output.mesh), ("members", output.member)):
            layer = layers.get(role)
            if layer is not None and data is not None:
                limits = tuple(variance.contrast_limits) if variance is not None else layer.contrast_limits
                layer.data = data
                layer.contrast_limits = limits
                layer.metadata["dropsembles"]["threshold"] = output.threshold
        if output.labels is not None and "thresholded" in layers:
            layers["thresholded"].data = output.labels
        if "mean" in layers:
            layers["mean"].iso_threshold = output.threshold
        if output.rows is not None:
            self.table.set_rows(output.rows)
        self.status.message = (
            f"threshold {output.threshold:.2f}: "
            + ("no surface" if output.empty else f"{len(output.mesh[1]) if output.mesh else 0} triangles")
            + f" ({1000 * output.elapsed_s:.0f} ms{', half resolution' if output.step_size > 1 else ''})"
        )
        self.status.changed.emit()

    # ------------------------------------------------------------------ structures

    def _centre_on_row(self, row: int, _column: int = 0) -> None:
        if not 0 <= row < len(self.table.rows):
            return
        centre_on(self.viewer, self.table.rows[row].centre_mm)


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


def _link_contrast_limits(layers: list) -> None:
    """The mesh colours follow the variance heatmap's contrast limits."""
    by_role = {role_of(layer): layer for layer in layers}
    variance = by_role.get("variance")
    if variance is None:
        return
    meshes = [weakref.ref(by_role[r]) for r in ("mesh", "members") if r in by_role]

    def follow(_event=None, meshes=meshes, source=weakref.ref(variance)) -> None:
        heat = source()
        if heat is None:
            return
        for ref in meshes:
            mesh = ref()
            if mesh is not None:
                mesh.contrast_limits = tuple(heat.contrast_limits)

    variance.events.contrast_limits.connect(follow)  # napari keeps plain functions alive


class _Running:
    """The current run's task and activity bar; what closing the widget must stop."""

    def __init__(self) -> None:
        self.task: Task | None = None
        self.activity: ActivityProgress | None = None

    def close_activity(self) -> None:
        if self.activity is not None:
            self.activity.close()
            self.activity = None


def _shutdown(running: _Running, *_args) -> None:
    """The widget is being destroyed (e.g. the viewer closes): stop the worker, close the bar."""
    if running.task is not None:
        running.task.detach()
    running.close_activity()


def _single_shot(parent: QWidget, ms: int, callback) -> QTimer:
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(callback)
    return timer


def _ignore(*_args) -> None:
    return None
