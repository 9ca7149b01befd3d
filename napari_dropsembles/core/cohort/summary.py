"""The cohort's summary table: one row per (case, structure), as CSV and Parquet."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..io.atomic import atomic_path
from ..scoring.metrics import REPORTED
from ..slices.baselines import BASELINES
from .manifest import CohortTask
from .task import base_row, read_done_row, read_failed_row

SUMMARY = "summary"
COLUMNS = (
    "task", "case", "label", "status", "error",
    "volume_ml", "volume_ml_std", "band_variance",
    *REPORTED,
    *(f"dice_{name}" for name in BASELINES),
    "method", "members", "device", "worker", "seconds", "cpu_s",
    "prepare_s", "finetune_s", "predict_s", "mesh_s", "evaluate_s",
    "observation", "ground_truth", "output", "input_hash",
)  # fmt: skip


def cohort_rows(tasks: Sequence[CohortTask], out_dir: str | Path) -> list[dict]:
    """Each task's row as it stands on disk: done (inputs unchanged), failed, or pending."""
    rows = []
    for task in tasks:
        row = read_done_row(out_dir, task) or read_failed_row(out_dir, task) or base_row(task)
        rows.append(row)
    return rows


def _label_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if isinstance(value, float) else str(value)


def summary_frame(rows: Sequence[dict]):
    """A pandas DataFrame with the table's columns in a fixed order (missing values empty)."""
    import pandas as pd  # pandas: loaded when a cohort summary is written

    frame = pd.DataFrame(list(rows))
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame = frame[list(COLUMNS)]
    frame["label"] = frame["label"].map(_label_text)  # "" (binary volume), "3", or "all" (merged)
    numeric = [c for c in COLUMNS if c not in ("task", "case", "label", "status", "error", "method", "device",
                                               "worker", "observation", "ground_truth", "output", "input_hash")]
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("error", "ground_truth", "output", "device", "worker"):
        frame[column] = frame[column].fillna("").astype(str)
    return frame


def write_summary(rows: Sequence[dict], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.parquet`` atomically; return their paths."""
    frame = summary_frame(rows)
    out = Path(out_dir)
    csv_path, parquet_path = out / f"{SUMMARY}.csv", out / f"{SUMMARY}.parquet"
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(parquet_path) as tmp:
        frame.to_parquet(tmp, index=False)
    return csv_path, parquet_path


def read_summary(out_dir: str | Path):
    """The summary table of a cohort folder (Parquet when present, else CSV)."""
    import pandas as pd  # pandas: loaded when a cohort summary is written

    out = Path(out_dir)
    parquet_path = out / f"{SUMMARY}.parquet"
    if parquet_path.is_file():
        return pd.read_parquet(parquet_path)
    return pd.read_csv(out / f"{SUMMARY}.csv")
