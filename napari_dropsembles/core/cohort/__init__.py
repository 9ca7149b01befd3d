"""Cohorts: many (scan, structure) reconstructions on dask.distributed, resumable, with one summary table."""

from .manifest import CaseSpec, CohortTask, parse_labels, plan_tasks, read_manifest, shard
from .runner import CohortResult, default_workers, run_cohort, run_cohort_steps
from .summary import cohort_rows, read_summary, write_summary
from .task import case_dir, run_task

__all__ = [
    "CaseSpec",
    "CohortResult",
    "CohortTask",
    "case_dir",
    "cohort_rows",
    "default_workers",
    "parse_labels",
    "plan_tasks",
    "read_manifest",
    "read_summary",
    "run_cohort",
    "run_cohort_steps",
    "run_task",
    "shard",
    "write_summary",
]
