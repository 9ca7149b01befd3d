"""Cohort throughput: cases per minute on a dask LocalCluster of 1 and 2 workers (docs/SCALE.md).

    python bench/cohort_throughput.py --cases 6 --workers 1 2 --out docs/scale.json

Simulated vertebra cases (``simulate``: 1 x 1 x 4 mm observation, 1 mm ground truth), the
bundled prior and the default reconstruction (M=4, 60 steps), scored against the ground truth as
a validation study would. Each worker is one process with one torch thread. Prints a Markdown
table and writes every number to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_dropsembles.core.cohort import plan_tasks, read_manifest, run_cohort  # noqa: E402
from napari_dropsembles.core.cohort.runner import start_local_cluster  # noqa: E402
from napari_dropsembles.core.config.configs import ReconstructionConfig  # noqa: E402
from napari_dropsembles.core.data.simulate import simulate_case  # noqa: E402

PHASES = ("prepare_s", "finetune_s", "predict_s", "mesh_s", "evaluate_s")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def run_once(tasks, out: Path, workers: int) -> dict:
    load_before = load()
    tick = time.perf_counter()
    client, cluster = start_local_cluster(workers, dashboard_address=":0")
    startup_s = time.perf_counter() - tick
    try:
        tick = time.perf_counter()
        result = run_cohort(tasks, out, client=client)
        run_s = time.perf_counter() - tick
    finally:
        client.close()
        cluster.close()
    rows = [r for r in result.rows if r["status"] == "done"]
    per_case = {p: sum(r.get(p) or 0.0 for r in rows) / len(rows) for p in PHASES}
    per_case["task_s"] = sum(r["seconds"] for r in rows) / len(rows)
    per_case["cpu_s"] = sum(r["cpu_s"] for r in rows) / len(rows)
    return {
        "workers": workers,
        "cases": len(rows),
        "failed": result.count("failed"),
        "cluster_start_s": round(startup_s, 2),
        "run_s": round(run_s, 2),
        "cases_per_minute": round(60 * len(rows) / run_s, 2),
        "cases_per_minute_with_start": round(60 * len(rows) / (run_s + startup_s), 2),
        "per_case_s": {k: round(v, 3) for k, v in per_case.items()},
        "load_before": load_before,
        "load_after": load(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "cases"
        for i in range(args.cases):
            simulate_case(inputs / f"case{i:03d}", seed=i, gt_spacing_mm=1.0)
        tasks = plan_tasks(read_manifest(inputs), ReconstructionConfig(device="cpu"))
        runs = [run_once(tasks, Path(tmp) / f"out{w}", w) for w in args.workers]
    report = {"cpu_count": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "runs": runs}
    print("| workers | cases | run (s) | cases/min | cases/min incl. cluster start | task s/case | CPU s/case | "
          "fine-tune | predict | mesh | evaluate | load 1-min before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        c = r["per_case_s"]
        print(f"| {r['workers']} | {r['cases']} | {r['run_s']} | {r['cases_per_minute']} | "
              f"{r['cases_per_minute_with_start']} | {c['task_s']} | {c['cpu_s']} | {c['finetune_s']} | "
              f"{c['predict_s']} | {c['mesh_s']} | {c['evaluate_s']} | {r['load_before']} / {r['load_after']} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
