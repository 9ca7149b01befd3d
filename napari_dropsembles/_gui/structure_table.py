"""The Reconstruct dock's structure table: one row per reconstructed structure, named, in its label colour.

Clicking a row selects the structure (the result panel highlights it and centres the view);
double-clicking a name renames it (the session keeps the name: mesh layers and notes follow).
"""

from __future__ import annotations

import math

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ..core.results.structures import StructureRow
from .session import ReconstructSession, structure_text

FLAG_COLOUR = "#e8a33d"


class StructureTable(QTableWidget):
    """Per-structure confidence: name (in its label colour), volume and its spread, band variance, flag.

    The name column stretches and the numbers stay compact, so every column fits the dock's width;
    a flag's full reason is in its tooltip and in the notes below the table.
    """

    HEADERS = ("structure", "mL", "± mL", "band var.", "flag")

    def __init__(self, session: ReconstructSession | None = None) -> None:
        super().__init__(0, len(self.HEADERS))
        self.session = session
        self.rows: list[StructureRow] = []
        self.names: dict[int, str] = {}
        self.setHorizontalHeaderLabels(self.HEADERS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setWordWrap(False)
        header = self.horizontalHeader()
        header.setMinimumSectionSize(24)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(self.HEADERS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeaderItem(1).setToolTip("volume of the reconstruction (millilitres)")
        self.horizontalHeaderItem(2).setToolTip("spread of the volume between the ensemble members (mL)")
        self.horizontalHeaderItem(3).setToolTip("mean member variance within 2 voxels of the surface")
        self.horizontalHeaderItem(4).setToolTip("⚠: a structure not to trust (hover the sign for why)")
        self.setToolTip(
            "one row per reconstructed structure; click a row to highlight it and centre the view on it;"
            " double-click a name to rename it"
        )
        self.itemChanged.connect(self._renamed)
        self.cellClicked.connect(self._clicked)

    def set_rows(
        self, rows: list[StructureRow], names: dict[int, str] | None = None, colours: dict[int, tuple] | None = None
    ) -> None:
        self.rows = list(rows)
        self.names = dict(names or {})
        colours = colours or {}
        self.blockSignals(True)
        self.setRowCount(len(rows))
        for i, row in enumerate(rows):
            cells = (
                structure_text(row.label, self.names),
                f"{row.volume_ml:.1f}",
                "-" if not math.isfinite(row.volume_ml_std) else f"{row.volume_ml_std:.2f}",
                "-" if not math.isfinite(row.band_variance) else f"{row.band_variance:.4f}",
                "⚠" if row.flagged else "",
            )
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j:
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if row.flagged:
                    item.setForeground(QColor(FLAG_COLOUR))
                    item.setToolTip(row.reason)
                self.setItem(i, j, item)
            colour = colours.get(row.label)
            if colour is not None:
                swatch = QColor.fromRgbF(*[float(c) for c in colour[:3]])
                self.item(i, 0).setData(Qt.ItemDataRole.DecorationRole, swatch)
        self.blockSignals(False)
        self.setMinimumHeight(min(200, 30 + 26 * max(len(rows), 1)))

    def _renamed(self, item: QTableWidgetItem) -> None:
        if item.column() != 0 or not 0 <= item.row() < len(self.rows):
            return
        label = self.rows[item.row()].label
        self.names[label] = item.text().strip() or f"label {label}"
        if self.session is not None and self.session.current is not None:
            self.session.rename(self.session.current.frame.source_id, label, self.names[label])

    def _clicked(self, row: int, _column: int = 0) -> None:
        if self.session is not None and 0 <= row < len(self.rows):
            self.session.structure_selected.emit(int(self.rows[row].label))
