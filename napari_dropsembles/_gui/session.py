"""The Reconstruct dock's one shared state, read and written by its panels (micro-sam's ``AnnotatorState``).

The panels (input, run settings, result, structure table, annotate next) never reach into each
other: each reads what it needs here and listens to the signals below. The run itself lives in
``runner`` (a :class:`~.run.RunController`: idle, running, done, cancelled, failed).
"""

from __future__ import annotations

from psygnal import Signal

from .layers import label_names, result_layers
from .run import RunController


def source_id_of(layer) -> str:
    """The id results use to name the input layer they came from."""
    return str(getattr(layer, "unique_id", None) or id(layer))


def structure_text(label: int, names: dict[int, str]) -> str:
    return names.get(int(label), f"label {int(label)}")


class ReconstructSession:
    """Inputs, results, structure names and the run of one Reconstruct dock."""

    input_changed = Signal(object)  # the input layer chosen (None: none open)
    result_changed = Signal(object)  # the result the views describe (a ReconstructOutput; None: none yet)
    result_placed = Signal(object)  # a new result's layers are in place (its ReconstructOutput)
    rows_changed = Signal(object)  # the current result's structure table changed (a new threshold)
    names_changed = Signal(str)  # the structure names of an input changed (its source id)
    structure_selected = Signal(int)  # a structure picked in the table (its label)

    def __init__(self, viewer, runner: RunController) -> None:
        self.viewer = viewer
        self.runner = runner
        self.results: dict = {}  # input source id -> its last ReconstructOutput
        self.current = None  # the result of the selected input (what the result views act on)
        self.input_layer = None  # the input chosen in the input panel
        self.run_frame = None  # the InputFrame of the run in progress (None between runs)
        self.viewing_order: tuple[int, ...] | None = None  # the 2D axis order chosen for the input
        self._names: dict[str, dict[int, str]] = {}  # input id -> label -> structure name (edits kept)

    @property
    def status(self):
        return self.runner.status

    # ------------------------------------------------------------------ layers

    def source_layer(self, source_id: str | None):
        """The open layer with id ``source_id`` (None when it was closed)."""
        for layer in self.viewer.layers:
            if source_id_of(layer) == source_id:
                return layer
        return None

    def selected_source_id(self) -> str | None:
        return None if self.input_layer is None else source_id_of(self.input_layer)

    def layers_of(self, source_id: str | None = None) -> dict:
        """key -> result layer of input ``source_id`` (default: the current result's)."""
        if source_id is None:
            source_id = None if self.current is None else self.current.frame.source_id
        return {} if source_id is None else result_layers(self.viewer.layers, source_id)

    def running_on(self, source_id: str) -> bool:
        return self.status.running and self.run_frame is not None and self.run_frame.source_id == source_id

    # ------------------------------------------------------------------ results

    def show(self, output) -> None:
        """The result views describe ``output`` (None: the selected input has none)."""
        self.current = output
        self.result_changed.emit(output)

    def show_selected(self) -> None:
        self.show(self.results.get(self.selected_source_id() or ""))

    def forget(self, source_id: str) -> None:
        """An input was closed: its result is no longer offered."""
        self.results.pop(source_id, None)
        if self.current is not None and self.current.frame.source_id == source_id:
            self.show(None)

    # ------------------------------------------------------------------ structure names

    def names(self, source_id: str | None = None) -> dict[int, str]:
        """label -> structure name of input ``source_id`` (default: the current result's): the user's
        edits, else the layer's own names (file segment names, known label tables)."""
        if source_id is None:
            source_id = None if self.current is None else self.current.frame.source_id
        if source_id is None:
            return {}
        if source_id not in self._names:
            layer = self.source_layer(source_id)
            self._names[source_id] = label_names(layer) if layer is not None else {}
        return self._names[source_id]

    def name_of(self, label: int, source_id: str | None = None) -> str:
        return structure_text(label, self.names(source_id))

    def rename(self, source_id: str, label: int, name: str) -> None:
        names = self.names(source_id)
        name = name.strip() or f"label {int(label)}"
        if names.get(int(label)) != name:
            names[int(label)] = name
            self.names_changed.emit(source_id)
