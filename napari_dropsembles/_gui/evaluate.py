"""The Evaluate widget: a prediction layer against a ground-truth layer -> metrics table + reliability diagram."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.config.errors import DropsemblesError, InputError
from .common import RunPanel, notify_error, scroll_layout, shrinkable_combos
from .gl_context import guard_layer_removal
from .layers import TAG, layer_to_volume, role_of
from .run import RunController, RunnerBacked, shutdown_on_destroy
from .state import RunState
from .tasks import EvaluateOutput, EvaluateRequest, evaluate_task
from .workers import Outcome, Task

METRIC_ROWS = (
    ("dice", "Dice"),
    ("hd95_mm", "HD95 (mm)"),
    ("ece", "ECE (all voxels)"),
    ("ece_band", "ECE (surface band)"),
    ("nll", "NLL"),
    ("nll_band", "NLL (surface band)"),
    ("brier", "Brier"),
    ("brier_band", "Brier (surface band)"),
    ("auroc", "uncertainty-error AUROC"),
    ("auroc_band", "AUROC (surface band)"),
)


class ReliabilityCanvas(QWidget):
    """A matplotlib reliability diagram (observed frequency against mean predicted probability)."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 3.0), dpi=90, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(111)
        self.figure.subplots_adjust(left=0.17, right=0.96, bottom=0.16, top=0.9)  # fixed: no tight_layout per plot
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.canvas.setMinimumHeight(240)
        self.plot(None)

    def plot(self, output: EvaluateOutput | None) -> None:
        ax = self.axes
        ax.clear()
        ax.set_facecolor("#262930")
        for spine in ax.spines.values():
            spine.set_color("#aaaaaa")
        ax.tick_params(colors="#dddddd", labelsize=8)
        ax.plot([0, 1], [0, 1], "--", color="#888888", lw=1, label="perfect calibration")
        if output is not None:
            curves = ((output.curve, "all voxels", "#4fa3e0"), (output.curve_band, "surface band", "#e8a33d"))
            for curve, name, colour in curves:
                used = curve["count"] > 0
                x, y = curve["mean_prob"][used], curve["frequency"][used]
                ax.plot(x, y, "o-", ms=3, lw=1.5, color=colour, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability", color="#dddddd", fontsize=9)
        ax.set_ylabel("observed frequency", color="#dddddd", fontsize=9)
        ax.set_title("reliability diagram", color="#dddddd", fontsize=10)
        legend = ax.legend(fontsize=7, loc="upper left", facecolor="#262930", edgecolor="#555555")
        for text in legend.get_texts():
            text.set_color("#dddddd")
        self.canvas.draw_idle()


class EvaluateWidget(RunnerBacked, QWidget):
    """Evaluate against ground truth: Dice, HD95, ECE, NLL, Brier, uncertainty-error AUROC; reliability."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = RunController("Dropsembles: evaluate", activity=False)
        guard_layer_removal(napari_viewer)  # napari 0.9: see gl_context
        self.output: EvaluateOutput | None = None
        self.prediction = ComboBox(label="Prediction", choices=self._image_choices, tooltip="probabilities in [0, 1]")
        self.uncertainty = ComboBox(
            label="Uncertainty",
            choices=self._uncertainty_choices,
            tooltip="scored by AUROC for the errors; none: the entropy of the prediction",
        )
        self.ground_truth = ComboBox(label="Ground truth", choices=self._truth_choices)
        self.threshold = FloatSpinBox(label="Threshold", value=0.5, min=0.01, max=0.99, step=0.05)
        self.form = Container(widgets=[self.prediction, self.uncertainty, self.ground_truth, self.threshold])
        shrinkable_combos(self.prediction, self.uncertainty, self.ground_truth)
        self.run_panel = RunPanel(self.runner, self.run, run_text="Evaluate", loss_curve=False)
        self.table = QTableWidget(len(METRIC_ROWS), 2)
        self.table.setHorizontalHeaderLabels(("metric", "value"))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        for i, (_key, name) in enumerate(METRIC_ROWS):
            self.table.setItem(i, 0, QTableWidgetItem(name))
            self.table.setItem(i, 1, QTableWidgetItem("-"))
        self.table.setMinimumHeight(30 + 26 * len(METRIC_ROWS))
        self.reliability = ReliabilityCanvas()
        self.note = QLabel("")
        self.note.setWordWrap(True)
        layout = scroll_layout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.run_panel)
        layout.addWidget(self.table)
        layout.addWidget(self.note)
        layout.addWidget(self.reliability)
        layout.addStretch(1)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.reset_choices)
        shutdown_on_destroy(self, self.runner)
        self.reset_choices()

    # ------------------------------------------------------------------ choices

    def _layers(self, kinds) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, kinds) and role_of(layer) != "preview"]

    def _image_choices(self, _widget=None):
        from napari.layers import Image

        layers = self._layers(Image)
        layers.sort(key=lambda layer: role_of(layer) != "mean")  # result means first
        return [(layer.name, layer) for layer in layers]

    def _uncertainty_choices(self, _widget=None):
        from napari.layers import Image

        layers = self._layers(Image)
        layers.sort(key=lambda layer: role_of(layer) != "variance")
        return [("(entropy of the prediction)", None)] + [(layer.name, layer) for layer in layers]

    def _truth_choices(self, _widget=None):
        from napari.layers import Image, Labels

        layers = [layer for layer in self._layers((Labels, Image)) if role_of(layer) is None]
        layers.sort(key=lambda layer: "truth" not in layer.name.lower())
        return [(layer.name, layer) for layer in layers]

    def reset_choices(self, *_args) -> None:
        for combo in (self.prediction, self.uncertainty, self.ground_truth):
            combo.reset_choices()
        prediction = self.prediction.value
        if prediction is not None and role_of(prediction) == "mean" and self.uncertainty.value is None:
            source = prediction.metadata[TAG].get("source")
            for layer in self._layers(type(prediction)):
                if role_of(layer) == "variance" and layer.metadata[TAG].get("source") == source:
                    self.uncertainty.value = layer

    # ------------------------------------------------------------------ run

    def request(self) -> EvaluateRequest:
        prediction, truth = self.prediction.value, self.ground_truth.value
        if prediction is None or truth is None:
            raise InputError("choose a prediction (e.g. the mean occupancy) and a ground-truth layer")
        uncertainty = self.uncertainty.value
        return EvaluateRequest(
            prediction=layer_to_volume(prediction),
            ground_truth=layer_to_volume(truth),
            uncertainty=None if uncertainty is None else layer_to_volume(uncertainty),
            threshold=float(self.threshold.value),
        )

    def run(self) -> Task | None:
        if self.status.running:
            return self.runner.task
        try:
            request = self.request()
        except DropsemblesError as error:
            self._failed(Outcome(RunState.FAILED, error=error))
            return None
        return self.runner.start(partial(evaluate_task, request), message="evaluating", on_finished=self._on_finished)

    @property
    def task(self) -> Task | None:
        return self.runner.task

    def _on_finished(self, outcome: Outcome) -> None:
        if outcome.state is RunState.DONE:
            self.show_output(outcome.value)
            self.status.finish(RunState.DONE, f"Dice {outcome.value.metrics['dice']:.3f}")
        elif outcome.state is RunState.CANCELLED:
            self.status.finish(RunState.CANCELLED, "cancelled")
        else:
            self._failed(outcome)

    def _failed(self, outcome: Outcome) -> None:
        self.status.finish(RunState.FAILED, outcome.message, outcome.error)
        notify_error(f"Dropsembles: {outcome.message}")

    def show_output(self, output: EvaluateOutput) -> None:
        self.output = output
        for i, (key, _name) in enumerate(METRIC_ROWS):
            value = output.metrics.get(key, math.nan)
            self.table.item(i, 1).setText("-" if not np.isfinite(value) else f"{value:.4f}")
        self.note.setText(
            f"{output.voxels:,} voxels of the ground truth grid"
            + ("; the prediction was resampled onto it (trilinear, world mm)" if output.resampled else "")
        )
        self.reliability.plot(output)

    def metric_values(self) -> dict[str, str]:
        """What the table shows, by metric key (for scripts and tests)."""
        return {key: self.table.item(i, 1).text() for i, (key, _name) in enumerate(METRIC_ROWS)}
