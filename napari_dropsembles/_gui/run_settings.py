"""The Reconstruct dock's run panel: method, members, steps, prior, the advanced options, and Run/Cancel.

Every default is read from :class:`ReconstructionConfig`; the fields are read into one config when
Run is pressed (the config checks itself, and the run controller words its errors with the labels here).
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget
from superqt import QCollapsible

from ..core.config.configs import DEVICE_CHOICES, FinetuneConfig, ReconstructionConfig
from ..core.config.errors import InputError
from ..core.config.paths import bundled_prior_path
from ..core.config.validation import field_range
from ..core.fitting.methods import METHODS, REGISTRY
from ..core.networks.device import resolve_device
from .common import ERROR_STYLE, WARN_STYLE, RunPanel, is_deleted, known_priors, shrinkable_combos
from .session import ReconstructSession
from .workers import gui_word

BUNDLED = "bundled"
PREVIEW_INTERVAL_S = 2.0
METHOD_LABELS = {name: method.label or name for name, method in REGISTRY.items()}


def spin_range(config, name: str, step: float = 1.0) -> dict:
    """``min`` and ``max`` of a spin box from the config field's own range."""
    lo, hi = field_range(config, name).closed(step)
    return {"min": lo, "max": hi}


class RunSettings(QWidget):
    """Method, members, steps and prior; advanced options folded away; the Run panel under them."""

    def __init__(self, session: ReconstructSession, on_run) -> None:
        super().__init__()
        self.session = session
        defaults = ReconstructionConfig()
        self.method = ComboBox(label="Method", choices=[(METHOD_LABELS[m], m) for m in METHODS], value=defaults.method)
        self.members = SpinBox(label="Members", value=defaults.members, **spin_range(ReconstructionConfig, "members"))
        self.steps = SpinBox(
            label="Fine-tuning steps", value=defaults.finetune.steps, **spin_range(FinetuneConfig, "steps")
        )
        self.ewc = FloatSpinBox(
            label="EWC strength",
            value=defaults.finetune.ewc_lambda,
            step=0.01,
            **spin_range(FinetuneConfig, "ewc_lambda"),
        )
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
        self.form = Container(widgets=[self.method, self.members, self.steps], labels=True)
        self.advanced_form = Container(
            widgets=[self.ewc, self.seed, self.spacing, self.empty_slices, self.device, self.member_meshes,
                     self.live_preview],
            labels=True,
        )  # fmt: skip
        shrinkable_combos(self.method, self.prior)
        self.run_panel = RunPanel(session.runner, on_run)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
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

        self.method.changed.connect(self._method_changed)
        self.device.changed.connect(self._device_changed)
        self.prior.changed.connect(self._prior_changed)
        known_priors.changed.connect(self._prior_added)
        self._device_changed()
        self._prior_changed()

    def config(self, threshold: float) -> ReconstructionConfig:
        """The run's config from the fields (checked on creation; ConfigError names the field)."""
        return ReconstructionConfig(
            method=self.method.value,
            members=int(self.members.value),
            finetune=FinetuneConfig(steps=int(self.steps.value), ewc_lambda=float(self.ewc.value)),
            resolution_mm=float(self.spacing.value) or None,
            threshold=float(threshold),
            device=self.device.value,
            seed=int(self.seed.value),
            keep_members=True,
            preview_interval_s=PREVIEW_INTERVAL_S if self.live_preview.value else 0.0,
            empty_slices=self.empty_slices.value,
        )

    def prior_choice(self) -> str | None:
        """The prior file chosen (None: the bundled prior)."""
        return None if self.prior.value == BUNDLED else self.prior.value

    # ------------------------------------------------------------------ priors and device

    def _prior_choices(self, _widget=None) -> list[tuple[str, str]]:
        bundled = "bundled vertebra prior" + ("" if bundled_prior_path().is_file() else " (not installed)")
        return [(bundled, BUNDLED)] + [(path.name, str(path)) for path in known_priors.paths]

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
        if not self.session.status.running:
            self.prior.value = str(path)

    def add_prior(self, path: str | Path) -> None:
        """Make a prior file selectable (and select it)."""
        known_priors.add(path)

    def _browse_prior(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a prior", "", "Dropsembles priors (*.safetensors)")
        if path:
            self.add_prior(path)
