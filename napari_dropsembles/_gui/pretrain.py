"""The Train-a-prior widget: pretrain on procedural vertebrae or a folder of dense masks, in the background."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from qtpy.QtWidgets import QLabel, QWidget

from ..core.config.configs import DEVICE_CHOICES, ModelConfig, PretrainConfig
from ..core.config.errors import DropsemblesError, InputError
from .common import RunPanel, known_priors, notify_error, notify_info, scroll_layout
from .run import RunController, RunnerBacked, shutdown_on_destroy
from .state import RunState
from .tasks import PretrainOutput, PretrainRequest, pretrain_task
from .workers import Outcome, Task

PROCEDURAL = "procedural"
FOLDER = "folder"


class TrainPriorWidget(RunnerBacked, QWidget):
    """Pretrain a prior (with its EWC Fisher) and make it selectable in the Reconstruct widget."""

    def __init__(self, napari_viewer=None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = RunController("Dropsembles: train a prior")
        self.last_output: PretrainOutput | None = None
        self.base_model = ModelConfig()
        defaults, model = PretrainConfig(), ModelConfig()
        self.source = ComboBox(
            label="Training data",
            choices=[("procedural vertebrae", PROCEDURAL), ("folder of dense masks", FOLDER)],
            value=PROCEDURAL,
        )
        self.data_folder = FileEdit(label="Mask folder", mode="d", tooltip="dense 3D masks (.nii.gz, .tif, .npy)")
        self.steps = SpinBox(label="Steps", value=defaults.steps, min=1, max=1_000_000)
        self.samples = SpinBox(
            label="Training samples",
            value=defaults.samples,
            min=1,
            max=1_000_000,
            tooltip="sliced, corrupted examples made up front from the shapes",
        )
        self.batch_size = SpinBox(label="Batch size", value=defaults.batch_size, min=1, max=256)
        self.shapes = SpinBox(label="Shape pool (0 = new each time)", value=defaults.shapes, min=0, max=100_000)
        self.models = SpinBox(label="Networks (deep ensemble: M)", value=1, min=1, max=16)
        self.dropout = FloatSpinBox(label="Dropout", value=model.dropout, min=0.01, max=0.9, step=0.05)
        self.grid_size = SpinBox(label="Encoder grid", value=model.grid_size, min=8, max=128)
        self.hidden = SpinBox(label="Decoder width", value=model.hidden, min=4, max=1024)
        self.blocks = SpinBox(label="Decoder blocks", value=model.blocks, min=1, max=16)
        self.fisher_samples = SpinBox(label="Fisher samples", value=defaults.fisher_samples, min=1, max=10_000)
        self.seed = SpinBox(label="Seed", value=defaults.seed, min=0, max=2**31 - 1)
        self.device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto")
        self.out_path = FileEdit(
            label="Save as", mode="w", filter="*.safetensors", value=str(Path.home() / "dropsembles_prior.safetensors")
        )
        self.form = Container(
            widgets=[
                self.source,
                self.data_folder,
                self.steps,
                self.samples,
                self.batch_size,
                self.shapes,
                self.models,
                self.dropout,
                self.grid_size,
                self.hidden,
                self.blocks,
                self.fisher_samples,
                self.seed,
                self.device,
                self.out_path,
            ],
            labels=True,
        )
        self.data_folder.visible = False
        self.source.changed.connect(lambda *_: setattr(self.data_folder, "visible", self.source.value == FOLDER))
        self.run_panel = RunPanel(self.runner, self.run, run_text="Train")
        self.info = QLabel("")
        self.info.setWordWrap(True)
        layout = scroll_layout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.run_panel)
        layout.addWidget(self.info)
        layout.addStretch(1)
        shutdown_on_destroy(self, self.runner)

    def model_config(self) -> ModelConfig:
        """The architecture: ``base_model`` (encoder widths etc.) with the form's grid, width, blocks, dropout."""
        return replace(
            self.base_model,
            grid_size=int(self.grid_size.value),
            hidden=int(self.hidden.value),
            blocks=int(self.blocks.value),
            dropout=float(self.dropout.value),
        )

    def request(self) -> PretrainRequest:
        folder = None
        if self.source.value == FOLDER:
            folder = Path(self.data_folder.value)
            if not folder.is_dir():
                raise InputError(f"choose a folder of dense masks (got {folder})")
        config = PretrainConfig(
            steps=int(self.steps.value),
            samples=int(self.samples.value),
            batch_size=int(self.batch_size.value),
            shapes=int(self.shapes.value),
            fisher_samples=int(self.fisher_samples.value),
            seed=int(self.seed.value),
        )
        return PretrainRequest(
            out_path=Path(self.out_path.value),
            model_config=self.model_config(),
            config=config,
            models=int(self.models.value),
            data_folder=folder,
            device=self.device.value,
        )

    def run(self) -> Task | None:
        if self.status.running:
            return self.runner.task
        try:
            request = self.request()
        except (DropsemblesError, TypeError, ValueError) as error:
            self._failed(Outcome(RunState.FAILED, error=error))
            return None
        return self.runner.start(
            partial(pretrain_task, request),
            message="pretraining",
            activity_name="train a prior",
            on_finished=self._on_finished,
        )

    def cancel(self) -> None:
        self.runner.cancel()

    @property
    def task(self) -> Task | None:
        return self.runner.task

    def _on_finished(self, outcome: Outcome) -> None:
        if outcome.state is RunState.DONE:
            output: PretrainOutput = outcome.value
            self.last_output = output
            known_priors.add(output.path)
            wall = output.training.get("wall_time_s", "?")
            self.info.setText(f"saved {output.path} ({wall} s on {output.device}); selectable in Reconstruct")
            self.status.finish(RunState.DONE, f"prior saved: {output.path.name}")
            notify_info(f"Dropsembles: prior saved to {output.path}")
        elif outcome.state is RunState.CANCELLED:
            self.status.finish(RunState.CANCELLED, "cancelled: nothing was saved")
        else:
            self._failed(outcome)

    def _failed(self, outcome: Outcome) -> None:
        self.status.finish(RunState.FAILED, outcome.message, outcome.error)
        notify_error(f"Dropsembles: {outcome.message}")
