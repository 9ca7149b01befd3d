"""The Batch dock: reconstruct a folder of cases (a cohort) in the background; the summary table; open a case.

A thin front to :mod:`napari_dropsembles.core.cohort` (the same runs as ``napari-dropsembles
reconstruct-many``), run through the same :class:`~.run.RunController` and Run panel as the other
docks: the cohort runs on a dask LocalCluster (or in napari's process with Workers = 0) from a
worker thread; the bar moves as cases advance, the status says what is happening (starting workers,
case k of n), Cancel stops at the next case and bad inputs are refused, each in one line.
``DROPSEMBLES_SYNC_WORKERS=1`` runs it synchronously (tests).
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..core.config.configs import DEVICE_CHOICES, FinetuneConfig, ReconstructionConfig
from ..core.config.errors import InputError
from ..core.config.progress import CancelFlag, Progress, check_cancel, relay
from ..core.config.validation import field_range
from .common import RunPanel, is_deleted, notify_error, scroll_layout
from .gl_context import guard_layer_removal
from .run import RunController, RunnerBacked, shutdown_on_destroy
from .state import RunState
from .workers import Outcome, Task

# (summary column, header, tooltip): the most useful first; the rest stay in summary.csv
TABLE_COLUMNS = (
    ("case", "case", "the case (file or folder name)"),
    ("label", "structure", "the label reconstructed ('' a binary mask, 'all' the labels merged)"),
    ("status", "status", "done, failed, or pending"),
    ("volume_ml", "mL", "volume of the reconstruction (millilitres)"),
    ("volume_ml_std", "± mL", "spread of the volume between the ensemble members"),
    ("band_variance", "band var.", "mean member variance within 2 voxels of the surface"),
    ("dice", "Dice", "Dice against the case's ground truth (when it has one)"),
    ("dice_linear", "Dice linear", "Dice of linear slice interpolation, for comparison"),
    ("seconds", "s", "wall time of the case"),
    ("error", "problem", "why the case failed, in one line"),
)
PLAN_SHARE = 0.02  # of the bar: reading and hashing the cases
START_SHARE = 0.03  # of the bar: starting the worker processes


@dataclass(frozen=True)
class BatchRequest:
    inputs: str  # a folder, a glob or a CSV manifest
    out_dir: str
    config: ReconstructionConfig
    priors: tuple[str, ...] = ()
    workers: int = 2


@dataclass
class BatchProgress:
    """Where the cohort stands, for the bar and the status line (filled from the runner's reports)."""

    total: int = 0
    settled: int = 0
    failed: int = 0
    running: dict = field(default_factory=dict)  # task id -> fraction of that case done
    started: bool = False  # the workers are up (or the cases run in this process)
    shown: float = 0.0  # the fraction last shown

    def fraction(self) -> float:
        """Of the whole run: planning, starting the workers, then the cases (each as far as it reported)."""
        if not self.total:
            return 0.0
        within = sum(min(1.0, max(0.0, f)) for f in self.running.values())
        share = min(1.0, (self.settled + within) / self.total)
        fraction = PLAN_SHARE + (START_SHARE if self.started else 0.0) + (1.0 - PLAN_SHARE - START_SHARE) * share
        self.shown = max(self.shown, fraction)  # never backwards (a case's reports may arrive late)
        return self.shown

    def status(self) -> str:
        busy = len(self.running)
        if not busy and self.settled < self.total and self.started:
            first = "the first case" if not self.settled else f"case {self.settled + 1} of {self.total}"
            return f"{first} is starting (each worker loads torch and the prior once)"
        parts = [f"case {min(self.settled + max(busy, 1), self.total)} of {self.total}"]
        if busy > 1:
            parts = [f"cases {self.settled + 1}-{self.settled + busy} of {self.total} running"]
        if self.settled:
            parts.append(f"{self.settled} finished" + (f" ({self.failed} failed)" if self.failed else ""))
        return ", ".join(parts)


def cohort_task(request: BatchRequest, cancel: CancelFlag) -> Generator[Progress, None, object]:
    """Plan (hashing every input: seconds for a large cohort, so not in the GUI thread), then run the cohort."""
    from ..core.cohort import plan_tasks, read_manifest, run_cohort_steps

    yield Progress("plan", 0, 1, extra={"status": "reading the cases…", "overall": 0.0})
    tasks = plan_tasks(read_manifest(request.inputs), request.config, priors=request.priors)
    if not tasks:
        raise InputError(f"no case to reconstruct in {request.inputs}")
    check_cancel(cancel)
    state = BatchProgress(total=len(tasks))
    what = "in napari's process" if request.workers == 0 else f"on {request.workers} worker process(es)"
    planned = f"{len(tasks)} case(s) to run {what}"
    yield Progress("plan", 1, 1, extra={"status": planned, "overall": PLAN_SHARE})

    def described(progress: Progress) -> None:
        extra = progress.extra
        if "row" in extra:
            state.settled = progress.step
            state.failed += extra["row"].get("status") == "failed"
            state.running.pop(extra["row"].get("task"), None)
        elif "skipped" in extra:  # before anything runs: what was done before, what is left
            state.settled = progress.step
            done = extra["skipped"]
            left = f"{len(tasks) - done} to run {what}"
            extra["status"] = f"{done} case(s) done before and unchanged, {left}" if done else planned
            extra["overall"] = state.fraction()
            return
        state.running.update(extra.get("case_progress", {}))
        state.started = state.started or "dashboard" in extra or "case_progress" in extra or request.workers == 0
        if extra.get("starting"):
            extra["status"] = f"starting {extra['starting']} worker process(es)…"
            extra["overall"] = state.fraction()
            return
        extra["overall"] = state.fraction()
        status = state.status()
        if extra.get("dashboard") and extra.get("dashboard_serves"):
            status += f"; dask dashboard {extra['dashboard']}"
        extra["status"] = status

    steps = run_cohort_steps(tasks, request.out_dir, workers=request.workers, cancel=cancel, dashboard_address=":0")
    return (yield from relay(steps, described))


class _PathField(QWidget):
    """A line edit with a Browse button (a folder, or a file)."""

    def __init__(self, placeholder: str, *, folder: bool = True) -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self._folder = folder
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(browse)

    def _browse(self) -> None:
        if self._folder:
            chosen = QFileDialog.getExistingDirectory(self, "Choose a folder")
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "Choose a file", filter="Prior (*.safetensors)")
        if chosen:
            self.edit.setText(chosen)

    @property
    def value(self) -> str:
        return self.edit.text().strip()

    @value.setter
    def value(self, text: str | os.PathLike) -> None:
        self.edit.setText(str(text))


def _shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


class BatchWidget(RunnerBacked, QWidget):
    """Cohort reconstruction: inputs (folder, glob or CSV), output folder, a few options, Run/Cancel, table."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        from ..core.cohort.runner import default_workers

        self.viewer = napari_viewer
        self.runner = RunController("Dropsembles batch", activity=False)
        guard_layer_removal(napari_viewer)  # napari 0.9: see gl_context
        base = ReconstructionConfig()
        self.inputs = _PathField("folder, glob or CSV manifest")
        self.out_dir = _PathField("output folder")
        self.prior = _PathField("prior .safetensors (empty: the bundled one)", folder=False)
        members = field_range(ReconstructionConfig, "members")
        self.members = QSpinBox(minimum=int(members.lo), maximum=int(members.hi), value=base.members)
        steps = field_range(FinetuneConfig, "steps")
        self.steps = QSpinBox(minimum=int(steps.lo), maximum=int(steps.hi), value=base.finetune.steps)
        self.resolution = QLineEdit()
        self.resolution.setPlaceholderText("mm (empty: the finest spacing)")
        self.workers = QSpinBox(minimum=0, maximum=256, value=default_workers())
        self.workers.setToolTip("dask worker processes, one case each at a time; 0 runs the cases one by one in napari")
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES)
        self.run_panel = RunPanel(self.runner, self.run, loss_curve=False)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels([header for _key, header, _tip in TABLE_COLUMNS])
        for column, (_key, _header, tip) in enumerate(TABLE_COLUMNS):
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setMinimumSectionSize(24)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setMinimumHeight(120)
        self.table.setToolTip("one row per case and structure; click a row to open its result")
        self.table.cellClicked.connect(lambda row, _column: self.open_case(row))

        layout = scroll_layout(self)
        form = QFormLayout()
        for label, widget in (("Cases", self.inputs), ("Output", self.out_dir), ("Prior", self.prior),
                              ("Members", self.members), ("Steps", self.steps), ("Output spacing", self.resolution),
                              ("Workers", self.workers), ("Device", self.device)):  # fmt: skip
            form.addRow(label, widget)
        layout.addLayout(form)
        layout.addWidget(self.run_panel)
        layout.addWidget(self.table, 1)
        self.rows: list[dict] = []
        self._out_dir = ""  # the output folder of the rows shown
        shutdown_on_destroy(self, self.runner)

    @property
    def state(self) -> str:
        """idle, running, done, cancelled or failed."""
        return self.status.state.value

    @property
    def task(self) -> Task | None:
        return self.runner.task

    # ------------------------------------------------------------------ running

    def config(self) -> ReconstructionConfig:
        text = self.resolution.text().strip()
        try:
            resolution = float(text) if text else None
        except ValueError:
            raise InputError(f"'Output spacing' must be a number of mm, got {text!r}") from None
        return ReconstructionConfig(
            members=self.members.value(),
            finetune=FinetuneConfig(steps=self.steps.value()),
            resolution_mm=resolution,
            device=self.device.currentText(),
        )

    def request(self) -> BatchRequest:
        """The run's parameters, checked here (each problem in one line)."""
        if not self.inputs.value:
            raise InputError("choose the cases (a folder, glob or CSV) and an output folder")
        if not self.out_dir.value:
            raise InputError("choose an output folder for the results")
        inputs = self.inputs.value
        if not any(ch in inputs for ch in "*?[") and not Path(inputs).exists():
            raise InputError(f"'Cases': {inputs} does not exist")
        return BatchRequest(
            inputs=inputs,
            out_dir=self.out_dir.value,
            config=self.config(),
            priors=(self.prior.value,) if self.prior.value else (),
            workers=self.workers.value(),
        )

    def run(self) -> Task | None:
        """Start the cohort in the background (None when the fields are refused, said in the status line)."""
        if self.status.running:
            return self.runner.task
        try:
            request = self.request()
        except Exception as error:  # noqa: BLE001 - a bad field is one line, like a worker's error
            self._ended(Outcome(RunState.FAILED, error=error))
            return None
        self.rows = []
        self.table.setRowCount(0)
        self._out_dir = request.out_dir
        return self.runner.start(
            partial(cohort_task, request),
            message="reading the cases…",
            on_progress=self._on_progress,
            on_finished=self._ended,
        )

    def cancel(self) -> None:
        if self.runner.cancel(force=True):
            self.status.message = "cancelling: the cases running now finish first…"
            self.status.changed.emit()

    def _on_progress(self, progress: Progress) -> None:
        row = progress.extra.get("row")
        if row is not None and not is_deleted(self):
            self.rows.append(row)
            self._add_row(row)

    def _ended(self, outcome: Outcome) -> None:
        if is_deleted(self):
            return
        if outcome.state is RunState.DONE:
            result = outcome.value
            self.rows = list(result.rows)
            self.table.setRowCount(0)
            for row in self.rows:
                self._add_row(row)
            failed = result.count("failed")
            self.runner.finish(
                RunState.DONE,
                f"{result.count('done')} done ({len(result.skipped)} unchanged), {failed} failed;"
                f" table: {result.summary_csv}",
            )
        elif outcome.state is RunState.CANCELLED:
            self.runner.finish(RunState.CANCELLED, "cancelled: finished cases are kept and skipped on the next run")
        else:
            self.runner.finish(RunState.FAILED, outcome.message, outcome.error)
            notify_error(f"Dropsembles batch: {outcome.message}")

    def _add_row(self, row: dict) -> None:
        index = self.table.rowCount()
        self.table.insertRow(index)
        for column, (key, _header, _tip) in enumerate(TABLE_COLUMNS):
            item = QTableWidgetItem(_shown(row.get(key)))
            if key == "error" and row.get(key):
                item.setToolTip(str(row[key]))
            self.table.setItem(index, column, item)

    # ------------------------------------------------------------------ results

    def open_case(self, index: int) -> list:
        """Add the layers of the case in table row ``index`` (observation and result, as a run in the
        Reconstruct dock shows them); the case's name leads each layer's name."""
        from .._viewer import add_result_folder
        from ..core.cohort import case_dir

        if not 0 <= index < len(self.rows):
            return []
        row = self.rows[index]
        if row.get("status") != "done":
            self.status.message = f"{row['task']} has no result ({row.get('status')}): {row.get('error', '')}"
            self.status.changed.emit()
            return []
        folder = case_dir(self._out_dir or self.out_dir.value, row["task"])
        observation = row.get("observation") or None
        if observation and not Path(observation).is_file():
            observation = None
        added = add_result_folder(self.viewer, folder, observation)
        for layer in added:
            if row["case"] not in layer.name:
                layer.name = f"{row['task']}: {layer.name}"
        self.status.message = f"opened {row['task']} from {folder}"
        self.status.changed.emit()
        return added
