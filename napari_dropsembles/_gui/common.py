"""Pieces shared by the widgets: run panel (Run/Cancel, progress, status, loss curve), layer pickers,
the list of known priors, notifications and napari's activity-dock progress."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from psygnal import Signal
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .state import RunState, RunStatus

WARN_STYLE = "color: #e8a33d;"
ERROR_STYLE = "color: #e5534b;"


def is_deleted(widget: QWidget) -> bool:
    """True when the Qt side of ``widget`` is gone (its Python wrapper may outlive it)."""
    try:
        widget.objectName()
    except RuntimeError:
        return True
    return False


DOCK_WIDTH = 420  # what a dock asks for: room for the form and the table's columns


def scroll_layout(owner: QWidget, width: int = DOCK_WIDTH) -> QVBoxLayout:
    """A vertical layout inside a scroll area that fills ``owner``: a dock never asks for more height
    than the screen has, and never scrolls sideways."""
    area = QScrollArea(owner)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    inner = QWidget()
    inner.setObjectName("dropsembles_scroll_content")
    area.setWidget(inner)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    owner.scroll_area = area
    owner.setMinimumWidth(width)
    owner.setMinimumHeight(120)
    return QVBoxLayout(inner)


def shrinkable_combos(*combos) -> None:
    """Combo boxes that do not widen the dock to fit a long layer name (the name is elided instead)."""
    from qtpy.QtWidgets import QComboBox

    for combo in combos:
        native = getattr(combo, "native", combo)
        if isinstance(native, QComboBox):
            native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            native.setMinimumContentsLength(12)


# --------------------------------------------------------------------------- notifications


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class ActivityProgress:
    """A bar in napari's activity dock (``napari.utils.progress``) driven by run fractions.

    napari's bar processes all pending events on every value or description change (a full
    repaint): it is updated at most every 5 s (long jobs only: Train a prior), and its description
    only when it changes.
    """

    STEPS = 1000
    INTERVAL_S = 5.0

    def __init__(self, description: str) -> None:
        from napari.utils import progress

        self._bar = progress(total=self.STEPS, desc=description)
        self._n = 0
        self._title = description
        self._phase: str | None = None
        self._last = 0.0

    def update(self, fraction: float, phase: str | None = None) -> None:
        now = time.perf_counter()
        if self._bar is None or now - self._last < self.INTERVAL_S:
            return
        self._last = now
        n = int(max(0.0, min(1.0, fraction)) * self.STEPS)
        if n > self._n:
            self._bar.update(n - self._n)
            self._n = n
        if phase and phase != self._phase:
            self._phase = phase
            self._bar.set_description(f"{self._title} ({phase})")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------- priors


class KnownPriors:
    """Prior files this session knows of (trained or browsed); widgets list them next to the bundled one."""

    changed = Signal(object)  # the path just added

    def __init__(self) -> None:
        self._paths: list[Path] = []

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    def add(self, path: str | Path) -> Path:
        path = Path(path).expanduser().resolve()
        if path not in self._paths:
            self._paths.append(path)
        self.changed.emit(path)
        return path


known_priors = KnownPriors()


# --------------------------------------------------------------------------- loss curve


class LossCurve(QWidget):
    """A small live plot of the training loss (log scale), drawn with QPainter: cheap to repaint."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[float] = []
        self.setMinimumHeight(56)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss (BCE + EWC), log scale")

    def set_losses(self, losses: list[float]) -> None:
        if len(losses) != len(self.losses) or losses[-1:] != self.losses[-1:]:
            self.losses = list(losses)
            self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(2, 2, -2, -14)
        painter.setPen(QPen(QColor(128, 128, 128, 90)))
        painter.drawRect(rect)
        values = [math.log10(v) for v in self.losses if v > 0 and math.isfinite(v)]
        if len(values) >= 2:
            lo, hi = min(values), max(values)
            span = (hi - lo) or 1.0
            n = len(values)
            points = QPolygonF(
                [
                    QPointF(rect.left() + rect.width() * i / (n - 1), rect.bottom() - rect.height() * (v - lo) / span)
                    for i, v in enumerate(values)
                ]
            )
            painter.setPen(QPen(QColor("#e8a33d"), 1.5))
            painter.drawPolyline(points)
        painter.setPen(QPen(QColor(160, 160, 160)))
        text = f"loss {self.losses[-1]:.4f} ({len(self.losses)} steps)" if self.losses else "loss: -"
        painter.drawText(rect.left(), self.rect().bottom() - 1, text)
        painter.end()


# --------------------------------------------------------------------------- run panel


class RunPanel(QWidget):
    """Run button; below it, the progress bar (percentage, time left) with its own Cancel button, the
    status line and the loss curve, all following one :class:`~.run.RunController`.

    Run and Cancel are two buttons in two places: a double-click on Run cannot cancel the run it started.
    """

    def __init__(
        self, controller, on_run: Callable[[], None], *, run_text: str = "Run", loss_curve: bool = True
    ) -> None:
        super().__init__()
        self.controller = controller
        self.status: RunStatus = controller.status
        self.run_text = run_text
        self.button = QPushButton(run_text)
        self.button.setToolTip("start (the fields above are read now)")
        self.button.clicked.connect(on_run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("stop at the next step; no layer is changed")
        self.cancel_button.clicked.connect(controller.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("")
        self.message = QLabel("ready")
        self.message.setWordWrap(True)
        self.loss_curve = LossCurve() if loss_curve else None
        row = QHBoxLayout()
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        layout.addLayout(row)
        layout.addWidget(self.message)
        if self.loss_curve is not None:
            layout.addWidget(self.loss_curve)
        self.status.changed.connect(self.render)
        self.render()

    def render(self) -> None:
        status = self.status
        self.button.setEnabled(not status.running and not status.blocked)
        self.button.setToolTip(status.blocked or "start (the fields above are read now)")
        self.cancel_button.setEnabled(status.running)
        # QProgressBar.setValue repaints at once when the bar moves a pixel: with a GL canvas in the window
        # that is a whole-window composition (30-40 ms) per report; updates off, then one ordinary update
        self.progress_bar.setUpdatesEnabled(False)
        try:
            self.progress_bar.setValue(int(status.fraction * 1000))
            self.progress_bar.setFormat(status.progress_text())
        finally:
            self.progress_bar.setUpdatesEnabled(True)
        blocked = status.blocked and not status.running and status.state is not RunState.FAILED
        self.message.setText(f"Run is unavailable: {status.blocked}" if blocked else status.message)
        self.message.setStyleSheet(ERROR_STYLE if status.state is RunState.FAILED else WARN_STYLE if blocked else "")
        if self.loss_curve is not None:
            self.loss_curve.set_losses(status.losses)


CANVAS_BACKGROUND = (38, 41, 48)  # napari's dark theme canvas: a fading-in colormap is shown over it


class ColourLegend(QWidget):
    """A colour bar with its unit and range, drawn by Qt in the dock (about a millisecond, where napari's
    in-canvas colour bar costs a few hundred ms of shader building under software OpenGL)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = QLabel(unit)
        self.low = QLabel("")
        self.high = QLabel("")
        self.bar = QLabel()
        self.bar.setMinimumWidth(60)
        self.bar.setFixedHeight(12)
        self.bar.setScaledContents(True)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.unit)
        row.addWidget(self.low)
        row.addWidget(self.bar, 1)
        row.addWidget(self.high)
        self.limits: tuple[float, float] | None = None

    def set_colormap(self, colormap, limits: tuple[float, float]) -> None:
        """Show ``colormap`` (a napari Colormap) from ``limits[0]`` to ``limits[1]``."""
        import numpy as np
        from qtpy.QtGui import QImage, QPixmap

        rgba = np.asarray(colormap.map(np.linspace(0.0, 1.0, 128)), np.float32).reshape(128, 4)
        background = np.asarray(CANVAS_BACKGROUND, np.float32) / 255.0
        rgb = rgba[:, :3] * rgba[:, 3:4] + background * (1.0 - rgba[:, 3:4])
        image = np.ascontiguousarray(np.repeat((255 * rgb).astype(np.uint8)[None], 4, axis=0))
        self._image = image  # QImage does not copy
        qimage = QImage(image.data, image.shape[1], image.shape[0], 3 * image.shape[1], QImage.Format.Format_RGB888)
        self.bar.setPixmap(QPixmap.fromImage(qimage))
        self.set_limits(limits)

    def set_limits(self, limits: tuple[float, float]) -> None:
        low, high = (float(v) for v in limits)
        self.limits = (low, high)
        self.low.setText(f"{low:.3g}")
        self.high.setText(f"{high:.3g}")
        self.setToolTip(f"{self.unit.text()}: colours from {low:.3g} to {high:.3g} (the heatmap's contrast limits)")
