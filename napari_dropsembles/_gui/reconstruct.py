"""The Reconstruct dock: five panels over one session, and the run from Run pressed to result layers placed.

Panels (each a file of its own): input (:mod:`.input_panel`), run settings with Run/Cancel
(:mod:`.run_settings`), result (:mod:`.result_panel`), structure table (:mod:`.structure_table`) and
annotate next (:mod:`.annotate`). They share one :class:`~.session.ReconstructSession`. This module
starts the run (a core generator, through the session's run controller), shows its live preview,
and puts the result layers in place, one per event-loop turn. Whatever the user does to the layers
meanwhile (close, rename or edit the input, close a result layer) ends in one line, never a crash
and never a result under another layer's name.
"""

from __future__ import annotations

import dataclasses
import weakref
from functools import partial

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QWidget

from ..core.config.errors import DropsemblesError
from ..core.config.progress import drive
from .annotate import AnnotatePanel
from .common import is_deleted, notify_error, scroll_layout
from .display import result_display
from .gl_context import guard_layer_removal
from .input_panel import InputPanel
from .layers import TAG, InputFrame, label_colours, layer_to_volume, outline_colormap, role_of
from .placement import keeping_selection, place_result_layers
from .preview import LivePreview
from .result_panel import ResultPanel, link_contrast_limits, single_shot
from .run import RunController, RunnerBacked, shutdown_on_destroy
from .run_settings import RunSettings
from .session import ReconstructSession, source_id_of
from .state import RunState
from .structure_table import StructureTable
from .tasks import ReconstructOutput, ReconstructRequest, RefineRequest, reconstruct_task, refine_task, start_warm_up
from .workers import Outcome, Task, sync_workers_default

PLACE_PAUSE_MS = 15  # between result layers: lets the event loop repaint and take input
WATCHED = ("data", "scale", "translate", "rotate", "shear", "affine")  # input changes that make a result stale


class ReconstructWidget(RunnerBacked, QWidget):
    """Reconstruct with uncertainty: pick a segmentation (or threshold an image), press Run, read the result."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        # no bar in napari's activity dock: its spinner and per-update repaints of the whole window cost
        # more CPU under software OpenGL than the run itself; the dock's own bar says the same
        self.runner = RunController("Dropsembles", activity=False)
        self.session = ReconstructSession(napari_viewer, self.runner)
        self.input_panel = InputPanel(self.session)
        self.settings = RunSettings(self.session, self.run)
        self.result_panel = ResultPanel(self.session)
        self.table = StructureTable(self.session)
        self.annotate = AnnotatePanel(self.session, self.start_refine, self.refine_options)
        self.preview = LivePreview(self.session, single_shot(self, PLACE_PAUSE_MS, self._flush_preview))
        self.display = result_display(napari_viewer)
        self._edited_during_run = ""  # what changed on the run's input while it ran ('' nothing)
        self._order_2d: tuple[int, ...] | None = None  # the 2D axis order to go back to from 3D
        self._expose_controls()

        layout = scroll_layout(self)
        layout.addWidget(self.input_panel)
        layout.addWidget(self.settings)
        layout.addWidget(self.result_panel)
        layout.addWidget(self.table)
        layout.addWidget(self.result_panel.notes_info)
        layout.addWidget(QLabel("<b>Annotate next</b>"))
        layout.addWidget(self.annotate)
        layout.addStretch(1)

        self.session.result_changed.connect(self._show_rows)
        self.session.rows_changed.connect(self._show_rows)
        self.session.names_changed.connect(self._names_changed)
        self.session.input_changed.connect(lambda _layer: self.session.show_selected())
        events = self.viewer.layers.events
        for event in (events.inserted, events.reordered):
            event.connect(self.reset_choices)
        events.removed.connect(self._layer_removed)
        events.inserted.connect(self._watch_layer)
        for layer in self.viewer.layers:
            self._watch(layer)
        self.viewer.dims.events.ndisplay.connect(self._ndisplay_changed)
        guard_layer_removal(self.viewer)
        shutdown_on_destroy(self, self.runner)
        self.reset_choices()
        start_warm_up()

    def _expose_controls(self) -> None:
        """The panels' controls by their names on the dock (scripts and tests set them here)."""
        for name in ("input", "label", "use_image_threshold", "image_threshold"):
            setattr(self, name, getattr(self.input_panel, name))
        for name in ("method", "members", "steps", "ewc", "seed", "spacing", "empty_slices", "device",
                     "member_meshes", "live_preview", "prior", "prior_info", "device_info", "advanced", "run_panel",
                     "add_prior"):  # fmt: skip
            setattr(self, name, getattr(self.settings, name))
        for name in ("threshold", "member", "mesh_colour", "legend", "result_info", "notes_info"):
            setattr(self, name, getattr(self.result_panel, name))

    # ------------------------------------------------------------------ what the panels share

    @property
    def task(self) -> Task | None:
        return self.runner.task

    @property
    def current(self) -> ReconstructOutput | None:
        return self.session.current

    @property
    def results(self) -> dict[str, ReconstructOutput]:
        return self.session.results

    @property
    def last_remesh(self):
        return self.result_panel.last_remesh

    def reset_choices(self, *_args) -> None:
        if not is_deleted(self):
            self.input_panel.reset_choices()
            self.settings.prior.reset_choices()

    def config(self):
        return self.settings.config(self.threshold.value())

    def _show_rows(self, output) -> None:
        if output is None or is_deleted(self):
            self.table.set_rows([])
            return
        source = self.session.source_layer(output.frame.source_id)
        colours = label_colours(source, [row.label for row in output.rows])
        self.table.set_rows(output.rows, self.session.names(output.frame.source_id), colours)

    def _names_changed(self, source_id: str) -> None:
        if self.current is not None and self.current.frame.source_id == source_id:
            self._show_rows(self.current)
        if self.session.selected_source_id() == source_id:
            self.input_panel.refresh_labels(keep=True)

    def _select_row(self, row: int, _column: int = 0) -> None:
        """What a click on table row ``row`` does (highlight the structure, centre the view)."""
        if 0 <= row < len(self.table.rows):
            self.session.structure_selected.emit(int(self.table.rows[row].label))

    def _apply_remesh(self, output) -> None:
        self.result_panel.apply_remesh(output)

    def _update_mask_preview(self) -> None:
        self.input_panel.update_mask_preview()

    # ------------------------------------------------------------------ layers changing under the dock

    def _watch_layer(self, event) -> None:
        self._watch(event.value)

    def _watch(self, layer) -> None:
        layer.events.name.connect(partial(self._layer_renamed, layer_ref(layer)))
        for name in WATCHED:
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(partial(self._layer_edited, layer_ref(layer), name))

    def _layer_renamed(self, reference, _event=None) -> None:
        layer = reference()
        if layer is None or is_deleted(self):
            return
        self.reset_choices()
        if role_of(layer) is None:  # an input renamed: its result layers are renamed with it
            rename_results(self.session.layers_of(source_id_of(layer)), layer.name)

    def _layer_edited(self, reference, what: str, _event=None) -> None:
        layer = reference()
        if layer is None or is_deleted(self):
            return
        if layer is self.input.value and what == "data":
            self.input_panel.describe(layer, keep_level=True)
        frame = self.session.run_frame
        if self.status.running and frame is not None and source_id_of(layer) == frame.source_id:
            self._edited_during_run = "painted" if what == "data" else "moved"

    def _layer_removed(self, event) -> None:
        """A layer was closed: the choices follow; the run's input closed cancels the run (no result placed)."""
        if is_deleted(self):
            return
        layer = event.value
        source_id = source_id_of(layer)
        frame = self.session.run_frame
        if self.status.running and frame is not None and frame.source_id == source_id:
            self.runner.cancel(force=True)
            self.status.message = f"'{layer.name}' was closed: cancelling, no result will be added"
            self.status.changed.emit()
            if self.preview.layer is not None and role_of(self.preview.layer) == "preview":
                QTimer.singleShot(0, partial(self.preview.end, False))  # not inside napari's removal
        if role_of(layer) is None:
            self.session.forget(source_id)
        self.reset_choices()

    # ------------------------------------------------------------------ run

    def request(self) -> ReconstructRequest:
        """The run's parameters, read on the main thread (the input data is copied)."""
        self.input_panel.check()
        layer = self.input.value
        volume = layer_to_volume(layer)
        frame = InputFrame.from_layer(layer)
        config = self.annotate.with_marks(frame.source_id, self.config(), volume)  # slices marked empty stay so
        return ReconstructRequest(
            volume=volume,
            frame=frame,
            names=dict(self.session.names(frame.source_id)),
            prior=self.settings.prior_choice(),
            config=config,
            selection=self.input_panel.selection(),
            image_threshold=self.input_panel.image_level(),
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

    def refine_options(self) -> dict:
        """What a refinement reads from the dock: the surface level, the member shown, the preview interval."""
        return {
            "threshold": float(self.threshold.value()),
            "member": int(self.member.value()) if "members" in self.session.layers_of() else None,
            "preview_interval_s": self.config().preview_interval_s,
        }

    def start_refine(self, request: RefineRequest) -> Task:
        """Refine the selected input's result in the background (the Annotate next panel's Refine)."""
        return self._start(partial(refine_task, request), request, "refining", request.preview_interval_s)

    def _start(self, work, request: ReconstructRequest | RefineRequest, verb: str, preview_interval_s: float) -> Task:
        """Run ``work`` for ``request``'s input through the run controller (progress, preview, layers at the end)."""
        self.session.run_frame = request.frame
        self._edited_during_run = ""
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

    # ------------------------------------------------------------------ live preview

    @property
    def _frame(self) -> InputFrame | None:
        return self.session.run_frame

    @_frame.setter
    def _frame(self, frame: InputFrame | None) -> None:
        self.session.run_frame = frame

    @property
    def _preview_layer(self):
        return self.preview.layer

    def _at_once(self) -> bool:
        return bool(self.sync if self.sync is not None else sync_workers_default())

    def _prepare_preview(self, request) -> None:
        self.preview.prepare(request.frame, request.volume.affine, float(self.threshold.value()))

    def _on_progress(self, progress) -> None:
        frame = self.session.run_frame
        if progress.preview is None or frame is None:
            return
        if self.session.source_layer(frame.source_id) is not None:  # not for an input closed meanwhile
            self._show_preview(progress.preview)

    def _show_preview(self, preview) -> None:
        self.preview.show(preview, self.session.run_frame, float(self.threshold.value()), at_once=self._at_once())

    def _flush_preview(self) -> None:
        if not is_deleted(self):
            self.preview.flush()

    def _end_preview(self, keep_data: bool) -> None:
        self.preview.end(keep_data)

    # ------------------------------------------------------------------ the run's end

    def _on_finished(self, outcome: Outcome) -> None:
        if is_deleted(self):
            return
        frame = self.session.run_frame
        closed = frame is not None and self.session.source_layer(frame.source_id) is None
        if outcome.state is RunState.DONE and not closed:
            self._show_result(outcome.value)
            return
        self._end_preview(keep_data=False)
        self.session.run_frame = None
        if closed:
            self.runner.finish(RunState.CANCELLED, f"'{frame.name}' was closed during the run: no layer was added")
        elif outcome.state is RunState.CANCELLED:
            self.runner.finish(RunState.CANCELLED, "cancelled: no layer was changed")
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
        source = self.session.source_layer(output.frame.source_id)
        if source is not None and source.name != output.frame.name:  # renamed during the run
            output.frame = rename_frame(output.frame, source.name, output.layer_data)
        self._apply_look(output, source)
        placing = place_result_layers(self.viewer, output.frame.source_id, output.layer_data, anchor=source)
        if self._at_once():
            with keeping_selection(self.viewer):
                added = drive(placing)
            self._result_placed(output, added)
            return
        self._place_next(placing, output)

    def _apply_look(self, output: ReconstructOutput, source) -> None:
        """The outline in a colour that stands out from the input's own colours (another choice in the layer list)."""
        labels = output.structures.labels
        colours = list(label_colours(source, labels).values())
        for _data, kwargs, layer_type in output.layer_data:
            if layer_type == "labels" and kwargs.get("metadata", {}).get(TAG, {}).get("role") == "thresholded":
                kwargs["colormap"] = outline_colormap(labels, colours)

    def _place_next(self, placing, output: ReconstructOutput) -> None:
        if is_deleted(self):
            return
        if self.session.source_layer(output.frame.source_id) is None:  # the input closed while placing
            placing.close()
            self.session.run_frame = None
            self.runner.finish(RunState.CANCELLED, f"'{output.frame.name}' was closed: the result was not added")
            return
        try:
            with keeping_selection(self.viewer):
                next(placing)
        except StopIteration as done:
            self._result_placed(output, done.value)
            return
        QTimer.singleShot(PLACE_PAUSE_MS, partial(self._place_next, placing, output))

    def _result_placed(self, output: ReconstructOutput, added: list) -> None:
        self.input_panel.remove_mask_preview()
        link_contrast_limits(added)
        output.layer_data = []  # the layers hold the data now
        output.stale = stale_text(self._edited_during_run, output.round is not None)
        self.session.results[output.frame.source_id] = output
        self.session.run_frame = None
        self.session.result_placed.emit(output)
        what = "refined" if output.round is not None else "done"
        self.runner.finish(RunState.DONE, f"{what} in {output.elapsed_s:.1f} s on {output.structures.device}")
        if self.viewer.dims.ndisplay == 3:
            self.display.show(3)
        if self.session.selected_source_id() == output.frame.source_id:
            wanted = float(self.threshold.value())  # moved during the run: it applies to this result
            self.session.show(output)
            self.result_panel.keep_threshold(wanted, output)

    def _ndisplay_changed(self, event) -> None:
        """napari draws surfaces wrongly in 3D with permuted axes (nothing at all after a transpose): 3D uses the
        file's axis order, and the way back to 2D gives the order the user had."""
        dims = self.viewer.dims
        if dims.ndim != 3:
            return
        if event.value == 3 and tuple(dims.order) != (0, 1, 2):
            self._order_2d = tuple(dims.order)
            dims.order = (0, 1, 2)
        elif event.value == 2 and tuple(dims.order) == (0, 1, 2):
            order = self._order_2d or self.session.viewing_order
            if order is not None:
                dims.order = order


def layer_ref(layer) -> weakref.ref:
    return weakref.ref(getattr(layer, "__wrapped__", layer))


def rename_results(layers: dict, name: str) -> None:
    """Result layers named after their input take its new name (the role part is kept)."""
    for layer in layers.values():
        tag = layer.metadata.get(TAG, {})
        old = tag.get("source_name")
        if old and old != name and layer.name.startswith(old):
            tag["source_name"] = name
            layer.name = name + layer.name[len(old) :]


def rename_frame(frame: InputFrame, name: str, layer_data: list) -> InputFrame:
    """The frame of an input renamed during the run, and the result layers' names and tags with it."""
    for _data, kwargs, _type in layer_data:
        tag = kwargs.get("metadata", {}).get(TAG, {})
        if kwargs.get("name", "").startswith(frame.name):
            kwargs["name"] = name + kwargs["name"][len(frame.name) :]
        if tag:
            tag["source_name"] = name
    return dataclasses.replace(frame, name=name)


def stale_text(edited: str, refined: bool) -> str:
    """What the result line says when the input changed during the run ('' when it did not)."""
    if not edited:
        return ""
    again = "Refine" if refined else "Run"
    what = "was painted" if edited == "painted" else "was moved"
    return f"The input {what} during the run: this result does not include the change (press {again} again)"
