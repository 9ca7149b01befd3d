"""Annotate where it matters, in the Reconstruct dock: suggest the next slice, take the user's paint, refine.

The loop (issue 13): a result exists -> "Suggest next slice" moves the viewer to the slice whose
annotation is expected to remove the most error (``core.annotate.suggest_slices``) and outlines it ->
the user paints it on the observation's Labels layer with napari's own tools (and undo) -> "Refine"
reads the observation again and warm-starts the members on it (``core.refine.refine_steps``) in the
background, through the dock's run controller (progress, cancel), and the result layers are updated
in place -> the history gains a row (slices annotated, slices marked empty, expected error, Dice against
a ground truth when one is open). Corrections of slices already annotated are read the same way.

A slice the user looked at and found empty is said so with "Mark slice empty" (the slice shown, else the
outlined suggestion): it is listed under the buttons ("Unmark" takes back the selected one, or the last),
every later Refine (and Run) reads it as background instead of a gap (``annotated_empty``), and the marks
stay from round to round. A result of several structures (labels reconstructed each separately) runs the
same loop: the suggestions are slices of the shared volume ranked across structures (each saying which
structures it helps), and Refine refines the structures whose labels changed (core/jobs/structures).
The panel only gathers inputs and shows outputs: every number comes from a task in ``tasks.py``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
from magicgui.widgets import ComboBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.config.configs import ReconstructionConfig
from ..core.config.errors import DropsemblesError, InputError
from .common import WARN_STYLE, is_deleted, notify_error, shrinkable_combos
from .layers import (
    TAG,
    InputFrame,
    layer_to_volume,
    result_layers,
    result_metadata,
    role_of,
    slice_outline,
    slice_view_order,
)
from .placement import not_activating, raise_to_paint
from .session import ReconstructSession
from .state import RunState
from .tasks import RefineRequest, RoundOutput, SuggestRequest, suggest_task
from .workers import Outcome, Task

NO_TRUTH = "(none)"
OUTLINE_COLOUR = "#ffd400"
AXIS_NAMES = ("x", "y", "z")  # data axes of the observation (RAS world axes for a NIfTI file)


def _table(headers: tuple[str, ...], tooltip: str) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setWordWrap(False)
    header = table.horizontalHeader()
    header.setMinimumSectionSize(24)
    for column in range(len(headers)):
        mode = QHeaderView.ResizeMode.Stretch if column == len(headers) - 1 else QHeaderView.ResizeMode.ResizeToContents
        header.setSectionResizeMode(column, mode)
    table.setToolTip(tooltip)
    table.setMinimumHeight(90)
    table.setMaximumHeight(170)
    return table


def _set_row(table: QTableWidget, row: int, cells: tuple[str, ...], tooltip: str = "") -> None:
    for column, text in enumerate(cells):
        item = QTableWidgetItem(text)
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if tooltip:
            item.setToolTip(tooltip)
        table.setItem(row, column, item)


class AnnotatePanel(QWidget):
    """Suggest the next slice, refine with what the user painted, and the history of the rounds."""

    SUGGESTION_HEADERS = ("#", "slice", "score (voxels)")
    HISTORY_HEADERS = ("round", "slices", "empty", "expected error", "Dice")

    def __init__(self, session: ReconstructSession, start_refine, options) -> None:
        super().__init__()
        self.session = session
        self.viewer = session.viewer
        self._start_refine = start_refine  # RefineRequest -> Task: the dock runs it like a run
        self._options = options  # () -> {"threshold", "member", "preview_interval_s"} of the dock
        self.rounds: dict[str, RoundOutput] = {}  # input id -> the current result's round (suggestions, error)
        self.history: dict[str, list[tuple]] = {}  # input id -> (round, slices, expected, Dice, slices marked empty)
        self.empty: dict[str, list[int]] = {}  # input id -> slices marked empty, in the order they were marked
        self.empty_axis: dict[str, int] = {}  # input id -> the slice axis the marks are on
        self._next: dict[str, int] = {}  # input id -> the suggestion the button shows next
        self._go_when_ready = False
        self._pending: dict[str, object] = {}  # input id -> the result whose slices are being ranked
        self._suggest_task: Task | None = None
        self._outlines: dict[str, object] = {}  # input id -> its suggested-slice Shapes layer

        self.suggest_button = QPushButton("Suggest next slice")
        self.suggest_button.setToolTip(
            "go to the slice whose annotation is expected to remove the most error, and outline it;"
            " press again for the next one"
        )
        self.suggest_button.clicked.connect(self.suggest)
        self.refine_button = QPushButton("Refine")
        self.refine_button.setToolTip(
            "read the input's Labels layer again (added and corrected slices) and refine the result from its"
            " members, in the background"
        )
        self.refine_button.clicked.connect(self.refine)
        self.mark_button = QPushButton("Mark slice empty")
        self.mark_button.setToolTip(
            "the slice shown (else the outlined suggestion) was looked at and holds nothing: the next Refine reads it"
            " as background instead of a slice nobody annotated"
        )
        self.mark_button.clicked.connect(lambda *_checked: self.mark_empty())  # not clicked's bool as the index
        self.unmark_button = QPushButton("Unmark")
        self.unmark_button.setToolTip("take back the selected mark (the last one when none is selected)")
        self.unmark_button.clicked.connect(self.unmark)
        self.empty_list = QListWidget()
        self.empty_list.setFlow(QListWidget.Flow.LeftToRight)
        self.empty_list.setWrapping(True)
        self.empty_list.setMaximumHeight(48)
        self.empty_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.empty_list.setToolTip("slices marked as annotated empty: every Refine reads them as background")
        self.ground_truth = ComboBox(
            label="Ground truth", choices=self._truth_choices, tooltip="scores each round (Dice) when one is open"
        )
        shrinkable_combos(self.ground_truth)
        self._truth_by_user = False
        self.ground_truth.changed.connect(self._truth_chosen)
        self.info = QLabel("run a reconstruction first")
        self.info.setWordWrap(True)
        self.suggestions = _table(self.SUGGESTION_HEADERS, "the slices to annotate next, best first; click to go there")
        self.suggestions.cellClicked.connect(self._suggestion_clicked)
        self.history_table = _table(self.HISTORY_HEADERS, "one row per round: the first run, then each refinement")
        for column, tip in enumerate(
            (
                "0: the first run; then one per Refine",
                "slices of the slice axis that hold labels",
                "slices marked as annotated empty that the round read as background",
                "about this many mislabelled voxels expected near the surface (stop when it is small enough)",
                "Dice against the ground truth chosen above ('-' without one)",
            )
        ):
            self.history_table.horizontalHeaderItem(column).setToolTip(tip)
        self.suggestions.horizontalHeaderItem(2).setToolTip(
            "mislabelled voxels that annotating the slice is expected to remove"
        )

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        buttons = QHBoxLayout()
        buttons.addWidget(self.suggest_button)
        buttons.addWidget(self.mark_button)
        buttons.addWidget(self.refine_button)
        layout.addLayout(buttons)
        marks = QHBoxLayout()
        marks.addWidget(QLabel("Empty"))
        marks.addWidget(self.empty_list, 1)
        marks.addWidget(self.unmark_button)
        layout.addLayout(marks)
        truth_row = QHBoxLayout()
        truth_row.addWidget(QLabel("Ground truth"))
        truth_row.addWidget(self.ground_truth.native, 1)
        layout.addLayout(truth_row)
        layout.addWidget(self.info)
        layout.addWidget(self.suggestions)
        layout.addWidget(self.history_table)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._layers_changed)
        session.status.changed.connect(self._update_buttons)
        session.result_placed.connect(self.result_placed)
        session.result_changed.connect(self.show_result)
        self._layers_changed()
        self.show_result(None)

    # ------------------------------------------------------------------ inputs

    def _truth_choices(self, _widget=None) -> list[tuple[str, object]]:
        from napari.layers import Image, Labels

        source = self._source_layer()
        layers = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, (Labels, Image)) and role_of(layer) is None and layer is not source
        ]
        layers.sort(key=lambda layer: "truth" not in layer.name.lower())  # like the Evaluate widget
        return [(NO_TRUTH, None), *[(layer.name, layer) for layer in layers]]

    def _layers_changed(self, *_args) -> None:
        if is_deleted(self):
            return
        self.ground_truth.changed.disconnect(self._truth_chosen)
        self.ground_truth.reset_choices()
        if self.ground_truth.value is None and not self._truth_by_user:  # a ground truth opened is picked up
            choices = [value for _name, value in self._truth_choices()]
            if len(choices) > 1 and "truth" in choices[1].name.lower():
                self.ground_truth.value = choices[1]
        self.ground_truth.changed.connect(self._truth_chosen)
        self._update_buttons()

    def _truth_chosen(self, *_args) -> None:
        self._truth_by_user = True

    def _truth_volume(self):
        layer = self.ground_truth.value
        if layer is None or layer not in self.viewer.layers:
            return None
        return layer_to_volume(layer)

    def _current(self):
        return self.session.current

    def _source_layer(self):
        current = self.session.current if hasattr(self, "session") else None
        return None if current is None else self.session.source_layer(current.frame.source_id)

    def blocked_reason(self) -> str:
        """Why Suggest and Refine cannot run now ('' when they can)."""
        current = self._current()
        if current is None:
            return "run a reconstruction first"
        if any(result.prior is None for result in current.structures.results.values()):
            return "this result does not hold its prior: run again"
        if self._source_layer() is None:
            return "the input layer of this result is no longer open"
        return ""

    def _update_buttons(self, *_args) -> None:
        if is_deleted(self):
            return
        reason = self.blocked_reason()
        running = self.session.status.running
        self.suggest_button.setEnabled(not reason)
        self.refine_button.setEnabled(not reason and not running)
        self.refine_button.setToolTip(
            reason or ("a run is going" if running else "refine the result with the input's slices as they are now")
        )
        current = self._current()
        round_ = None if current is None else self.rounds.get(current.frame.source_id)
        self.mark_button.setEnabled(not reason and round_ is not None and round_.axis is not None)
        self.unmark_button.setEnabled(self.empty_list.count() > 0)

    # ------------------------------------------------------------------ the result shown

    def show_result(self, output) -> None:
        """The widget shows ``output`` (None: no result for the selected input): history, suggestions, buttons."""
        self._update_buttons()
        if output is None:
            self._fill_suggestions(None)
            self._fill_history("")
            self._fill_empty("")
            self.info.setStyleSheet("")
            self.info.setText(self.blocked_reason())
            return
        source = output.frame.source_id
        if source not in self.rounds and source not in self._pending:
            self._start_suggest(output)
        self._fill_history(source)
        self._fill_suggestions(self.rounds.get(source))
        self._fill_empty(source)

    def result_placed(self, output) -> None:
        """A new result for ``output.frame``'s input: a run starts the history again, a refinement adds a row."""
        source = output.frame.source_id
        self.rounds.pop(source, None)
        if output.round is None:  # a run from scratch: rank its slices in the background
            self.history[source] = []
            self._start_suggest(output)
        else:  # a refinement: its round came with it; the outlined slice was the last round's
            self._round_ready(source, output, output.round)
            outline = self._outlines.get(source)
            if outline is not None and outline in self.viewer.layers:
                outline.visible = False

    def _start_suggest(self, output) -> None:
        reason = self.blocked_reason() if self.session.current is output else ""
        if reason:
            self.info.setText(reason)
            return
        request = SuggestRequest(output.structures, self._truth_volume(), float(output.threshold))
        self.info.setStyleSheet("")
        self.info.setText("ranking the slices …")
        self._pending[output.frame.source_id] = output
        task = Task(
            partial(suggest_task, request),
            on_progress=_ignore,
            on_finished=partial(self._suggested, output),
            sync=self.session.runner.sync,
        )
        self._suggest_task = task
        task.start()

    def _suggested(self, output, outcome: Outcome) -> None:
        if is_deleted(self):
            return
        source = output.frame.source_id
        if self._pending.get(source) is output:
            del self._pending[source]
        if self.session.results.get(source, output) is not output:
            return  # a newer result came meanwhile
        if outcome.state is not RunState.DONE:
            if outcome.state is RunState.FAILED:
                self.info.setText(f"no suggestion: {outcome.message}")
                self.info.setStyleSheet(WARN_STYLE)
            return
        self._round_ready(source, output, outcome.value)
        if self.session.current is output:
            self._fill_history(source)
            self._fill_suggestions(outcome.value)
            self._fill_empty(source)
            self._update_buttons()
            if self._go_when_ready:
                self._go_when_ready = False
                self.suggest()

    def _round_ready(self, source: str, output, round_: RoundOutput) -> None:
        self.rounds[source] = round_
        self._next[source] = 0
        rows = self.history.setdefault(source, [])
        rows.append(
            (output.structures.rounds, round_.labelled_slices, round_.expected, round_.dice, round_.annotated_empty)
        )
        self._sync_marks(source, round_)
        self.info.setStyleSheet(WARN_STYLE if round_.message else "")
        expected = round_.expected.text if round_.expected is not None else ""
        self.info.setText(round_.message or expected)

    def _fill_suggestions(self, round_: RoundOutput | None) -> None:
        suggestions = [] if round_ is None else round_.suggestions
        self.suggestions.setRowCount(len(suggestions))
        for row, suggestion in enumerate(suggestions):
            what = "annotate" if suggestion.kind == "annotate" else "check the labels on"
            helps = self._structures_text(suggestion)
            _set_row(
                self.suggestions,
                row,
                (
                    str(row + 1),
                    f"{AXIS_NAMES[suggestion.axis]} {suggestion.index}" + (f" ({helps})" if helps else ""),
                    f"{suggestion.score:.0f}",
                ),
                f"{what} slice {suggestion.index} along axis {suggestion.axis} ({suggestion.world_mm:.1f} mm):"
                f" about {suggestion.score:.0f} mislabelled voxels expected to be removed"
                + (f" from {helps}" if helps else ""),
            )

    def _structures_text(self, suggestion) -> str:
        """The structures a suggestion helps, by name ('' for a result of one structure)."""
        labels = getattr(suggestion, "labels", ())
        current = self._current()
        if not labels or current is None or len(current.structures.results) < 2:
            return ""
        names = self.session.names(current.frame.source_id)
        return ", ".join(names.get(label, f"label {label}") for label in labels)

    def _fill_history(self, source: str) -> None:
        rows = self.history.get(source, [])
        self.history_table.setRowCount(len(rows))
        for row, (number, slices, expected, dice, empty) in enumerate(rows):
            marked = f"marked empty: {', '.join(str(i) for i in empty)}" if empty else ""
            _set_row(
                self.history_table,
                row,
                (
                    str(number),
                    str(slices),
                    str(len(empty)),
                    "-" if expected is None else f"{expected.voxels:.0f} vox",
                    "-" if dice is None else f"{dice:.4f}",
                ),
                "; ".join(text for text in ("" if expected is None else expected.text, marked) if text),
            )
        if rows:
            self.history_table.scrollToBottom()

    # ------------------------------------------------------------------ suggest: go to the slice

    def suggest(self) -> None:
        """Go to the next suggested slice (the best first; each press the next one) and outline it."""
        current = self._current()
        if current is None or self.blocked_reason():
            return
        source = current.frame.source_id
        round_ = self.rounds.get(source)
        if round_ is None:  # still ranking: go when it is done
            self._go_when_ready = True
            if source not in self._pending:
                self._start_suggest(current)
            return
        if not round_.suggestions:
            self.info.setText(round_.message or "no slice left to suggest")
            return
        index = self._next.get(source, 0) % len(round_.suggestions)
        self._next[source] = index + 1
        self.go_to(index)

    def _suggestion_clicked(self, row: int, _column: int = 0) -> None:
        self.go_to(row)

    def go_to(self, row: int) -> None:
        """Show suggestion ``row`` of the current result: the viewer on its slice, outlined, the Labels layer active."""
        current = self._current()
        round_ = None if current is None else self.rounds.get(current.frame.source_id)
        if round_ is None or not 0 <= row < len(round_.suggestions):
            return
        suggestion = round_.suggestions[row]
        source = self._source_layer()
        frame = current.frame
        shape = tuple(np.asarray(source.data[0] if getattr(source, "multiscale", False) else source.data).shape[-3:])
        self._move_to(frame, shape, suggestion.axis, suggestion.index)
        self._outline(frame, shape, suggestion.axis, suggestion.index, row)
        self.suggestions.selectRow(row)
        from napari.layers import Labels

        if isinstance(source, Labels):  # ready to paint: the user's Labels layer active, over the heatmap
            raise_to_paint(self.viewer, source, result_layers(self.viewer.layers, current.frame.source_id))
            self.viewer.layers.selection.active = source
        what = "annotate" if suggestion.kind == "annotate" else "check the labels on"
        helps = self._structures_text(suggestion)
        self.info.setText(
            f"#{row + 1}: {what} slice {suggestion.index} ({AXIS_NAMES[suggestion.axis]} ="
            f" {suggestion.world_mm:.1f} mm) on '{source.name}'"
            + (f" ({helps})" if helps else "")
            + ", then press Refine (or Mark slice empty if nothing is there)"
        )

    def _move_to(self, frame: InputFrame, shape: tuple, axis: int, index: int) -> None:
        dims = self.viewer.dims
        offset = dims.ndim - 3
        if dims.ndisplay == 2 and offset + axis in dims.displayed:  # the slice's axis goes on the slider
            order = slice_view_order(axis, dims.ndim)
            dims.order = order
            self.session.viewing_order = tuple(order)
        centre = (np.asarray(shape, float) - 1) / 2
        centre[axis] = index
        world = frame.world_affine[:3, :3] @ centre + frame.world_affine[:3, 3]
        dims.set_point(offset + axis, float(world[axis]))

    def _outline(self, frame: InputFrame, shape: tuple, axis: int, index: int, row: int) -> None:
        """A rectangle around the suggested slice (a plane in 3D), in a Shapes layer made once per input."""
        from napari.layers import Shapes

        rectangle = slice_outline(shape, axis, index)
        layer = self._outlines.get(frame.source_id)
        if layer is not None and layer in self.viewer.layers:
            layer.data = [rectangle]
            layer.metadata[TAG]["slice"] = (axis, index)
            layer.visible = True
            return
        layer = Shapes(
            [rectangle],
            shape_type="rectangle",
            name=f"{frame.name} suggested slice",
            edge_color=OUTLINE_COLOUR,
            face_color="transparent",
            edge_width=max(0.5, 0.006 * max(shape)),
            metadata=result_metadata(frame, "suggestion", slice=(axis, index)),
            **frame.transform,
        )
        with not_activating(self.viewer.layers):
            self.viewer.layers.append(layer)
        self._outlines[frame.source_id] = layer

    # ------------------------------------------------------------------ slices annotated as empty

    def _marks_on(self, source: str, axis: int) -> list[int]:
        """The marks of input ``source`` along ``axis`` (those along another axis are dropped: they meant others)."""
        if self.empty_axis.get(source, axis) != axis:
            self.empty.pop(source, None)
        self.empty_axis[source] = axis
        return self.empty.setdefault(source, [])

    def _sync_marks(self, source: str, round_: RoundOutput) -> None:
        """A new round: the slices it read as annotated empty are marked (a mark already made stays)."""
        if round_.axis is not None:
            marks = self._marks_on(source, round_.axis)
            marks.extend(i for i in round_.annotated_empty if i not in marks)

    def _fill_empty(self, source: str) -> None:
        self.empty_list.clear()
        axis = self.empty_axis.get(source, 2)
        for index in sorted(self.empty.get(source, [])):
            item = QListWidgetItem(f"{AXIS_NAMES[axis]} {index}")
            item.setData(Qt.ItemDataRole.UserRole, index)
            item.setToolTip(f"slice {index} along axis {axis}: annotated as empty (background)")
            self.empty_list.addItem(item)
        self.unmark_button.setEnabled(self.empty_list.count() > 0)

    def shown_slice(self, axis: int) -> int | None:
        """The slice along ``axis`` the viewer shows (2D, that axis on the slider), else the outlined suggestion."""
        current = self._current()
        source = self._source_layer()
        if current is None or source is None:
            return None
        dims = self.viewer.dims
        offset = dims.ndim - 3
        if dims.ndisplay == 2 and offset + axis in dims.not_displayed:
            return int(round(float(np.asarray(source.world_to_data(dims.point))[-3 + axis])))
        outline = self._outlines.get(current.frame.source_id)
        if outline is not None and outline in self.viewer.layers and outline.visible:
            outlined_axis, index = outline.metadata.get(TAG, {}).get("slice", (None, None))
            if outlined_axis == axis:
                return int(index)
        return None

    def mark_empty(self, index: int | None = None) -> int | None:
        """Mark the slice shown (or ``index``) of the slice axis as annotated empty; returns it (None: refused)."""
        current = self._current()
        if current is None or self.blocked_reason():
            return None
        source_id = current.frame.source_id
        round_ = self.rounds.get(source_id)
        if round_ is None or round_.axis is None:
            return self._say("no slice axis to mark along yet (wait for the suggestions)")
        axis = round_.axis
        index = self.shown_slice(axis) if index is None else int(index)
        if index is None:
            return self._say(f"show a slice of axis {AXIS_NAMES[axis]} in 2D (or go to a suggestion) to mark it empty")
        data = np.asarray(layer_to_volume(self._source_layer()).data)
        if not 0 <= index < data.shape[axis]:
            return self._say(f"slice {index} is outside the input (axis {AXIS_NAMES[axis]} has {data.shape[axis]})")
        if self._holds_labels(source_id, np.take(data, index, axis=axis)):
            return self._say(f"slice {AXIS_NAMES[axis]} {index} holds labels: rub them out first to mark it empty")
        marks = self._marks_on(source_id, axis)
        if index in marks:
            return self._say(f"slice {AXIS_NAMES[axis]} {index} is marked empty already")
        marks.append(index)
        self._fill_empty(source_id)
        self.info.setStyleSheet("")
        self.info.setText(f"slice {AXIS_NAMES[axis]} {index} marked empty: Refine reads it as background")
        return index

    def unmark(self) -> list[int]:
        """Take back the selected marks (the last one made when none is selected); returns the slices unmarked."""
        current = self._current()
        if current is None:
            return []
        marks = self.empty.get(current.frame.source_id, [])
        selected = [int(item.data(Qt.ItemDataRole.UserRole)) for item in self.empty_list.selectedItems()]
        gone = selected or marks[-1:]
        for index in gone:
            marks.remove(index)
        self._fill_empty(current.frame.source_id)
        if gone:
            self.info.setStyleSheet("")
            self.info.setText(f"unmarked slice {', '.join(str(i) for i in sorted(gone))}: read as not annotated again")
        return gone

    def marks_for(self, source_id: str, volume=None) -> tuple[int, ...]:
        """The slices of input ``source_id`` marked empty; those that hold labels in ``volume`` now are unmarked."""
        marks = self.empty.get(source_id, [])
        axis = self.empty_axis.get(source_id)
        if volume is not None and axis is not None and marks:
            data = np.asarray(volume.data)
            painted = [
                i for i in marks if i < data.shape[axis] and self._holds_labels(source_id, np.take(data, i, axis=axis))
            ]
            for index in painted:
                marks.remove(index)
            if painted:
                self._fill_empty(source_id)
                self._say(f"slice {', '.join(str(i) for i in painted)} hold labels now: no longer marked empty")
        return tuple(sorted(marks))

    def _holds_labels(self, source_id: str, plane: np.ndarray) -> bool:
        """True when a plane of the input holds what the result of ``source_id`` reads as the object."""
        output = self.session.results.get(source_id)
        first = None if output is None else output.request
        if first is not None and first.image_threshold is not None:
            return bool((plane >= first.image_threshold).any())
        if first is not None and isinstance(first.selection, int):  # one label of a label volume
            return bool((plane == first.selection).any())
        return bool(plane.any())

    def with_marks(self, source_id: str, config: ReconstructionConfig, volume=None) -> ReconstructionConfig:
        """``config`` reading input ``source_id``'s slices marked empty as background (a Run keeps the marks)."""
        marks = self.marks_for(source_id, volume)
        return dataclasses.replace(config, annotated_empty=marks) if marks else config

    def _say(self, text: str) -> None:
        self.info.setStyleSheet(WARN_STYLE)
        self.info.setText(text)
        return None

    # ------------------------------------------------------------------ refine

    def request(self) -> RefineRequest:
        """The refinement's inputs, read on the main thread: the observation layer as it is now (a copy)."""
        reason = self.blocked_reason()
        if reason:
            raise InputError(reason)
        current = self._current()
        source = self._source_layer()
        volume = layer_to_volume(source)
        options = self._options()
        return RefineRequest(
            previous=current,
            volume=volume,
            frame=InputFrame.from_layer(source),
            threshold=options["threshold"],
            member=options["member"],
            ground_truth=self._truth_volume(),
            names=dict(self.session.names(current.frame.source_id)),
            preview_interval_s=options["preview_interval_s"],
            annotated_empty=self.marks_for(current.frame.source_id, volume),
        )

    def refine(self) -> Task | None:
        """Refine the current result with the observation as the user left it (in the background)."""
        if self.session.status.running:
            return self.session.runner.task
        try:
            request = self.request()
        except DropsemblesError as error:
            self.info.setText(str(error))
            self.info.setStyleSheet(WARN_STYLE)
            notify_error(f"Dropsembles: {error}")
            return None
        return self._start_refine(request)


def _ignore(*_args) -> None:
    return None
