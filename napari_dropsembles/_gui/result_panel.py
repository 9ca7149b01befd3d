"""The Reconstruct dock's result panel: threshold and member sliders, mesh colours, colour bar, result line, notes.

It always describes the session's current result (the selected input's). The sliders re-mesh the
cached mean in the background (no network query); the mesh is coloured by variance or by structure;
the notes say in plain words how the drawn slices were read, named as the table names the structures.
"""

from __future__ import annotations

import weakref
from functools import partial

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget
from superqt import QLabeledDoubleSlider, QLabeledSlider

from ..core.config.configs import ReconstructionConfig
from ..core.querying.vertex_labels import label_vertex_colours, vertex_labels
from .common import WARN_STYLE, ColourLegend, is_deleted, notify_error
from .layers import TAG, label_colours, role_of, structure_mesh_layers, structure_mesh_name
from .placement import centre_on
from .session import ReconstructSession
from .state import RunState
from .tasks import RemeshOutput, remesh_task
from .workers import GUI_FIELDS, Outcome, Task

MESH_BY_VARIANCE, MESH_BY_STRUCTURE = "variance", "structure"
COARSE_VOXELS = 64**3  # above this, the mesh follows a dragged slider at half resolution first


def single_shot(parent: QWidget, ms: int, callback) -> QTimer:
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(callback)
    return timer


class ResultPanel(QWidget):
    """Threshold, member, mesh colour, colour bar, result line and notes of the current result."""

    def __init__(self, session: ReconstructSession) -> None:
        super().__init__()
        self.session = session
        self.viewer = session.viewer
        self.last_remesh: RemeshOutput | None = None
        self.highlight: int | None = None  # the structure a table row selected
        self._remesh_task: Task | None = None
        self._remesh_queued = False
        self._remesh_serial = 0
        self._remesh_applied = 0
        self._mesh_colour_by_user = False
        self._legend_sources: weakref.WeakSet = weakref.WeakSet()  # variance layers the legend follows

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
        self.mesh_colour = QComboBox()
        self.mesh_colour.addItems([MESH_BY_VARIANCE, MESH_BY_STRUCTURE])
        self.mesh_colour.setToolTip("the mesh coloured by the members' variance, or by structure (the labels' colours)")
        self.legend = ColourLegend("variance (p²)")  # the heatmap's and the mesh's colours
        self.legend.setVisible(False)
        self.result_info = QLabel("no result for this input yet")
        self.result_info.setWordWrap(True)
        self.notes_info = QLabel("")  # how the drawn slices were read (below the table: it can be long)
        self.notes_info.setWordWrap(True)
        self.notes_info.setStyleSheet("color: #a0a0a0;")
        self.notes_info.setVisible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Result</b>"))
        for title, control in (
            ("Threshold", self.threshold),
            ("Member", self.member),
            ("Mesh colour", self.mesh_colour),
        ):
            row = QHBoxLayout()
            row.addWidget(QLabel(title))
            row.addWidget(control, 1)
            layout.addLayout(row)
        layout.addWidget(self.legend)
        layout.addWidget(self.result_info)

        self._coarse_timer = single_shot(self, 30, partial(self._remesh, False))
        self._fine_timer = single_shot(self, 250, partial(self._remesh, True))
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.member.valueChanged.connect(self._member_changed)
        self.mesh_colour.currentTextChanged.connect(lambda _text: self.recolour_mesh())
        self.mesh_colour.activated.connect(self._mesh_colour_chosen)  # the user's choice (not ours) is kept
        session.result_changed.connect(self.show_result)
        session.names_changed.connect(self._names_changed)
        session.structure_selected.connect(self.select_structure)
        self.show_result(None)

    @property
    def current(self):
        return self.session.current

    # ------------------------------------------------------------------ the result shown

    def show_result(self, output) -> None:
        """Describe ``output`` (None: say there is no result for the selected input)."""
        if is_deleted(self):
            return
        self._remesh_serial = self._remesh_applied = 0
        self.highlight = None
        self.update_legend()
        if output is None:
            self.member.setEnabled(False)
            self.threshold.setEnabled(False)
            self.result_info.setStyleSheet("")
            self.result_info.setText("no result for this input yet" if self.session.input_layer is not None else "")
            self.notes_info.setVisible(False)
            return
        if not self.session.running_on(output.frame.source_id):
            with _blocked(self.threshold):
                self.threshold.setValue(self._result_threshold(output))
        self.threshold.setEnabled(True)
        layers = self.session.layers_of(output.frame.source_id)
        structures = output.structures
        with _blocked(self.member):
            self.member.setRange(0, max(0, structures.members - 1))
            self.member.setValue(0)
        self.member.setEnabled("members" in layers)
        self.describe(output)
        several = len(structures.results) > 1
        if not self._mesh_colour_by_user:  # several structures: each mesh in its label's colour by default
            with _blocked(self.mesh_colour):
                self.mesh_colour.setCurrentText(MESH_BY_STRUCTURE if several else MESH_BY_VARIANCE)
        self.recolour_mesh()

    def describe(self, output) -> None:
        """The result line (what was made, where, what not to trust) and the notes, with today's names."""
        structures = output.structures
        names = self.session.names(output.frame.source_id)
        flagged = [(names.get(r.label, f"label {r.label}"), r.reason) for r in output.rows if r.flagged]
        device = structures.device
        changed = getattr(output, "stale", "")
        self.result_info.setText(
            f"{len(structures.labels)} structure(s), {structures.members} members, grid {structures.mean.shape},"
            f" {device.upper() if device != 'cpu' else 'CPU'}"
            + (f"; do not trust: {', '.join(f'{n} ({why})' for n, why in flagged)}" if flagged else "")
            + (f". {changed}" if changed else "")
        )
        self.result_info.setStyleSheet(WARN_STYLE if changed else "")
        notes = result_notes(output, names)
        self.notes_info.setText("\n".join(f"• {note}" for note in notes))
        self.notes_info.setVisible(bool(notes))

    def _names_changed(self, source_id: str) -> None:
        output = self.current
        if output is None or output.frame.source_id != source_id or is_deleted(self):
            return
        names = self.session.names(source_id)
        for label, layer in structure_mesh_layers(self.session.layers_of(source_id)).items():
            layer.name = structure_mesh_name(output.frame.name, label, names)
        self.describe(output)

    def update_legend(self, _event=None) -> None:
        """The dock's colour bar describes the current result's variance heatmap (hidden without one)."""
        if is_deleted(self):
            return
        variance = self.session.layers_of().get("variance") if self.current is not None else None
        self.legend.setVisible(variance is not None)
        if variance is None:
            return
        if variance not in self._legend_sources:
            self._legend_sources.add(variance)
            variance.events.contrast_limits.connect(self.update_legend)
            variance.events.colormap.connect(self.update_legend)
        self.legend.set_colormap(variance.colormap, tuple(variance.contrast_limits))

    def _result_threshold(self, output) -> float:
        layers = self.session.layers_of(output.frame.source_id)
        mesh = layers.get("mesh") or next(iter(structure_mesh_layers(layers).values()), None)
        if mesh is not None:
            return float(mesh.metadata.get(TAG, {}).get("threshold", output.threshold))
        return output.threshold

    def keep_threshold(self, wanted: float, output) -> None:
        """A threshold moved while ``output`` was being made applies to it now (re-meshed)."""
        if abs(wanted - output.threshold) > 1e-9:
            self.threshold.setValue(wanted)
            self._fine_timer.start()

    # ------------------------------------------------------------------ threshold / members

    def _threshold_changed(self, _value: float) -> None:
        if self.current is None or self.session.running_on(self.current.frame.source_id):
            return  # this input is being reconstructed again: the value applies to the new result
        self._coarse_timer.start()
        self._fine_timer.start()

    def _member_changed(self, _value: int) -> None:
        if self.current is not None:
            self._fine_timer.start()

    def _remesh(self, fine: bool) -> None:
        if self.current is None or is_deleted(self):
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
        serial, current, level = self._remesh_serial, self.current, float(self.threshold.value())
        task = Task(
            lambda _cancel: remesh_task(
                current.structures, current.frame, level, step_size=step, member=member, mesh=True, rows=fine
            ),
            on_progress=_ignore,
            on_finished=partial(self._remesh_done, serial, current),
            sync=self.session.runner.sync,
        )
        self._remesh_task = task
        task.start()

    def _remesh_done(self, serial: int, source, outcome: Outcome) -> None:
        if is_deleted(self):
            return
        if outcome.state is RunState.DONE and source is self.current and serial > self._remesh_applied:
            self._remesh_applied = serial
            self.apply_remesh(outcome.value)
        elif outcome.state is RunState.FAILED:
            notify_error(f"Dropsembles: re-meshing failed: {outcome.message}")
        if self._remesh_queued:
            self._remesh_queued = False
            QTimer.singleShot(0, partial(self._remesh, True))

    def apply_remesh(self, output: RemeshOutput) -> None:
        self.last_remesh = output
        layers = self.session.layers_of()
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
        self.recolour_mesh()
        if "mean" in layers:
            layers["mean"].iso_threshold = output.threshold
        if output.rows is not None:
            self.current.rows = output.rows
            self.session.rows_changed.emit(self.current)
            self.describe(self.current)
        status = self.session.status
        status.message = (
            f"threshold {output.threshold:.2f}: "
            + ("no surface" if output.empty else f"{output.triangles} triangles")
            + f" ({1000 * output.elapsed_s:.0f} ms{', half resolution' if output.step_size > 1 else ''})"
        )
        status.changed.emit()

    # ------------------------------------------------------------------ structures and mesh colours

    def select_structure(self, label: int) -> None:
        """Highlight structure ``label`` in the outline and the meshes, and centre the view on it."""
        if self.current is None:
            return
        row = next((r for r in self.current.rows if r.label == label), None)
        if row is None:
            return
        thresholded = self.session.layers_of().get("thresholded")
        if thresholded is not None and len(self.current.rows) > 1:
            thresholded.selected_label = int(label)
            thresholded.show_selected_label = True
            self.highlight = int(label)
            self.recolour_mesh()
        centre_on(self.viewer, row.centre_mm)

    def recolour_mesh(self) -> None:
        """Colour the mesh by structure (the input's label colours, the selected one bright) or by variance.

        Several structures: each has its own mesh layer, in its label's colour (the others dimmed while
        a table row is selected). One structure: by variance unless asked otherwise.
        """
        if self.current is None:
            return
        layers = self.session.layers_of()
        by_structure = self.mesh_colour.currentText() == MESH_BY_STRUCTURE
        structures = self.current.structures
        highlight = self.highlight if self.highlight in structures.labels and len(structures.labels) > 1 else None
        per_structure = structure_mesh_layers(layers)
        colours = self.structure_colours(structures.labels)
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

    def structure_colours(self, labels: list[int]) -> dict[int, tuple]:
        """label -> colour of the input's Labels layer (grey when the input has no label colours)."""
        source = self.session.source_layer(self.current.frame.source_id) if self.current is not None else None
        return label_colours(source, labels)

    def _mesh_colour_chosen(self, _index: int) -> None:
        self._mesh_colour_by_user = True


def result_notes(output, names: dict[int, str]) -> list[str]:
    """What the user should know about the result, in plain words, each structure by its name today."""
    structures = output.structures
    several = len(structures.results) > 1
    notes = []
    for label, result in structures.results.items():
        prefix = f"{names.get(label, f'label {label}')}: " if several else ""
        for note in result.notes(lambda field, value: f"{GUI_FIELDS.get(field, repr(field))} = {value}"):
            notes.append(prefix + note)
    return notes


_FOLLOWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # heatmap -> the meshes that follow it


def link_contrast_limits(layers: list) -> None:
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


class _blocked:
    """Qt signals of ``widget`` held inside the block."""

    def __init__(self, widget) -> None:
        self.widget = widget

    def __enter__(self):
        self.widget.blockSignals(True)
        return self.widget

    def __exit__(self, *_exc) -> None:
        self.widget.blockSignals(False)


def _ignore(*_args) -> None:
    return None
