"""The Batch widget: reconstruct a folder of cases (a cohort) in the background; the summary table; open a case.

It is a thin front to :mod:`napari_dropsembles.core.cohort` (the same runs as
``napari-dropsembles reconstruct-many``): the cohort runs on a dask LocalCluster (or in napari's
process with Workers = 0) from a napari thread worker, a row appears per settled case, Cancel
stops at the next case, and clicking a row opens that case's result layers.
``DROPSEMBLES_SYNC_WORKERS=1`` runs it synchronously (tests).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.config import FinetuneConfig, ReconstructionConfig
from ..core.device import DEVICE_CHOICES
from ..core.errors import Cancelled, DropsemblesError
from ..core.progress import CancelToken, Progress, drive

SYNC_ENV = "DROPSEMBLES_SYNC_WORKERS"
TABLE_COLUMNS = ("task", "status", "volume_ml", "volume_ml_std", "band_variance", "dice", "dice_linear", "seconds",
                 "error")  # fmt: skip


def _sync() -> bool:
    return os.environ.get(SYNC_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


class _PathField(QWidget):
    """A line edit with a Browse button (a folder, or a file)."""

    def __init__(self, placeholder: str, *, folder: bool = True) -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("Browse")
        browse.clicked.connect(self._browse)
        self._folder = folder
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
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


class BatchWidget(QWidget):
    """Cohort reconstruction: inputs (folder, glob or CSV), output folder, a few options, Run/Cancel, table."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        base = ReconstructionConfig()
        self.inputs = _PathField("folder, glob or CSV manifest")
        self.out_dir = _PathField("output folder")
        self.prior = _PathField("prior .safetensors (empty: the bundled one)", folder=False)
        self.members = QSpinBox(minimum=1, maximum=64, value=base.members)
        self.steps = QSpinBox(minimum=0, maximum=10_000, value=base.finetune.steps)
        self.resolution = QLineEdit()
        self.resolution.setPlaceholderText("mm (empty: the observation's finest spacing)")
        self.workers = QSpinBox(minimum=0, maximum=256, value=2)
        self.workers.setToolTip("dask worker processes; 0 runs the cases one by one in napari's process")
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self._run_or_cancel)
        self.progress_bar = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.cellClicked.connect(lambda row, _column: self.open_case(row))

        form = QFormLayout()
        for label, field in (("Cases", self.inputs), ("Output", self.out_dir), ("Prior", self.prior),
                             ("Members", self.members), ("Steps", self.steps), ("Output spacing", self.resolution),
                             ("Workers", self.workers), ("Device", self.device)):  # fmt: skip
            form.addRow(label, field)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.table)

        self.rows: list[dict] = []
        self.tasks = []
        self.state = "idle"  # idle, running, done, cancelled, failed
        self._cancel: CancelToken | None = None
        self._worker = None

    # ------------------------------------------------------------------ running
    def config(self) -> ReconstructionConfig:
        text = self.resolution.text().strip()
        try:
            resolution = float(text) if text else None
        except ValueError:
            raise DropsemblesError(f"Output spacing must be a number of mm, got {text!r}") from None
        return ReconstructionConfig(
            members=self.members.value(),
            finetune=FinetuneConfig(steps=self.steps.value()),
            resolution_mm=resolution,
            device=self.device.currentText(),
        )

    def _run_or_cancel(self) -> None:
        if self.state == "running":
            self.cancel()
        else:
            self.run()

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.status.setText("cancelling after the running cases ...")

    def run(self) -> None:
        """Check the fields here; read the manifest, hash the inputs and run the cohort in the background."""
        try:
            if not self.inputs.value or not self.out_dir.value:
                raise DropsemblesError("choose the cases (a folder, glob or CSV) and an output folder")
            config = self.config()
        except DropsemblesError as error:
            self._finish("failed", str(error))
            return
        self.rows = []
        self.tasks = []
        self.table.setRowCount(0)
        self.progress_bar.setValue(0)
        self._cancel = CancelToken()
        self.state = "running"
        self.run_button.setText("Cancel")
        self.status.setText("reading the cases ...")
        steps = self._cohort_steps(
            self.inputs.value, self.out_dir.value, config, self.prior.value, self.workers.value(), self._cancel
        )
        if _sync():
            try:
                result = drive(steps, self._on_progress)
            except Exception as error:  # noqa: BLE001 - shown, not raised, as a thread worker would
                self._on_error(error)
            else:
                self._on_done(result)
            return
        from napari.qt.threading import create_worker

        self._worker = create_worker(lambda: (yield from steps), _start_thread=False)
        self._worker.yielded.connect(self._on_progress)
        self._worker.returned.connect(self._on_done)
        self._worker.errored.connect(self._on_error)
        self._worker.start()

    def _cohort_steps(self, inputs: str, out_dir: str, config, prior: str, workers: int, cancel: CancelToken):
        """Plan (hashing every input: seconds for a large cohort, so not in the GUI thread), then run."""
        from ..core.cohort import plan_tasks, read_manifest, run_cohort_steps

        self.tasks = plan_tasks(read_manifest(inputs), config, priors=[prior] if prior else ())
        return (
            yield from run_cohort_steps(self.tasks, out_dir, workers=workers, cancel=cancel, dashboard_address=":0")
        )

    def _on_progress(self, progress: Progress) -> None:
        self.progress_bar.setRange(0, progress.total)
        self.progress_bar.setValue(progress.step)
        row = progress.extra.get("row")
        if row is not None:
            self.rows.append(row)
            self._add_row(row)
        if progress.extra.get("dashboard"):
            self.status.setText(f"running on dask; dashboard {progress.extra['dashboard']}")
        elif progress.message:
            self.status.setText(f"{progress.step}/{progress.total}: {progress.message}")

    def _on_done(self, result) -> None:
        from ..core.cohort import read_summary

        table = read_summary(self.out_dir.value)
        ids = {task.task_id for task in self.tasks}
        self.rows = [row for row in table.to_dict("records") if row["task"] in ids]
        self.table.setRowCount(0)
        for row in self.rows:
            self._add_row(row)
        self._finish(
            "done",
            f"{result.count('done')} done ({len(result.skipped)} unchanged), "
            f"{result.count('failed')} failed; summary: {result.summary_csv}",
        )

    def _on_error(self, error: BaseException) -> None:
        if isinstance(error, Cancelled):
            self._finish("cancelled", "cancelled; finished cases are kept and skipped on the next run")
        elif isinstance(error, DropsemblesError):
            self._finish("failed", str(error))
        else:
            self._finish("failed", f"{type(error).__name__}: {error}")

    def _finish(self, state: str, message: str) -> None:
        self.state = state
        self.status.setText(message)
        self.run_button.setText("Run")
        self._worker = None

    def _add_row(self, row: dict) -> None:
        index = self.table.rowCount()
        self.table.insertRow(index)
        for column, name in enumerate(TABLE_COLUMNS):
            self.table.setItem(index, column, QTableWidgetItem(_shown(row.get(name))))

    # ------------------------------------------------------------------ results
    def open_case(self, index: int) -> list:
        """Add the result layers (observation, mean, variance, mesh) of the case in table row ``index``."""
        from .._viewer import result_folder_layer_data
        from ..core.cohort import case_dir

        if not 0 <= index < len(self.rows):
            return []
        row = self.rows[index]
        if row.get("status") != "done":
            self.status.setText(f"{row['task']} has no result ({row.get('status')}): {row.get('error', '')}")
            return []
        folder = case_dir(self.out_dir.value, row["task"])
        observation = row.get("observation") or None
        if observation and not Path(observation).is_file():
            observation = None
        added = []
        for data, kwargs, layer_type in result_folder_layer_data(folder, observation):
            name = kwargs.get("name", layer_type)  # named after the observation file, i.e. the case
            kwargs = {**kwargs, "name": name if row["case"] in name else f"{row['task']}: {name}"}
            added.append(getattr(self.viewer, f"add_{layer_type}")(data, **kwargs))
        self.status.setText(f"opened {row['task']} from {folder}")
        return added
