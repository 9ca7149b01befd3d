"""Batch in the widget against the command line: throughput with 1 and 2 workers, time to first progress.

    xvfb-run -a python bench/batch_widget_throughput.py --cases 4 --workers 1 2 --out docs/batch_widget.json

Simulated vertebra cases (``simulate``: 1 x 1 x 4 mm observations, no ground truth), the bundled
prior and the default reconstruction (M=4, 60 steps), CPU. Each run is a fresh process: the
widget one opens a shown napari window, docks Batch (cohort), presses Run and waits; the command-line
one runs ``napari-dropsembles reconstruct-many``. Both are timed from the start of the run to the
end (the CLI's time includes its Python start-up). The widget run also records when the progress
bar first moved and the status lines it showed. The 1-minute load average before and after each run
says how busy the machine was. Writes JSON to ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load() -> float:
    return round(os.getloadavg()[0], 2)


def make_cases(folder: Path, count: int) -> Path:
    from napari_dropsembles.core.data.simulate import simulate_case

    for i in range(count):
        paths = simulate_case(folder / f"case{i:03d}", seed=i)
        paths["ground_truth"].unlink()  # throughput of the reconstruction, not of the scoring
    return folder


def widget_run(inputs: Path, out: Path, workers: int, timeout_s: float) -> dict:
    """One Batch run in a shown napari window (this process); the times it measured."""
    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from tests.gui_support import register_plugin

    register_plugin()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    app = QApplication.instance()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-dropsembles", "Batch (cohort)")
    widget.inputs.value = inputs
    widget.out_dir.value = out
    widget.workers.setValue(workers)
    widget.device.setCurrentText("cpu")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    timeline: list[tuple[float, float, str]] = []
    started = time.perf_counter()

    def seen() -> None:
        status = widget.status
        entry = (round(time.perf_counter() - started, 2), round(status.fraction, 4), status.message)
        if not timeline or entry[1:] != timeline[-1][1:]:
            timeline.append(entry)

    widget.status.changed.connect(seen)
    cpu_started = time.process_time()
    widget.run()
    loop = QEventLoop()  # napari's own event loop, as in a session (no polling of ours)
    widget.status.changed.connect(lambda: None if widget.status.running else loop.quit())
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    if widget.status.running:
        loop.exec()
    wall = time.perf_counter() - started
    viewer_cpu = time.process_time() - cpu_started
    first_move = next((t for t, fraction, _m in timeline if fraction > 0), None)
    rows = [row for row in widget.rows if row.get("status") == "done"]
    result = {
        "state": widget.status.state.value,
        "message": widget.status.message,
        "wall_s": round(wall, 2),
        "viewer_cpu_s": round(viewer_cpu, 2),  # napari's own process (the GUI), not the dask workers
        "cases_done": len(rows),
        "first_bar_move_s": first_move,
        "first_status_s": timeline[0][0] if timeline else None,
        "timeline": timeline[:40],
    }
    viewer.close()
    return result


def cli_run(inputs: Path, out: Path, workers: int, timeout_s: float) -> dict:
    command = [sys.executable, "-m", "napari_dropsembles.cli", "reconstruct-many", str(inputs), "--out", str(out),
               "--workers", str(workers), "--device", "cpu", "--quiet"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    wall = time.perf_counter() - started
    return {"exit": done.returncode, "wall_s": round(wall, 2), "stderr_tail": done.stderr[-300:]}


def one(mode: str, inputs: Path, out: Path, workers: int, timeout_s: float) -> dict:
    before = load()
    result = (widget_run if mode == "widget" else cli_run)(inputs, out, workers, timeout_s)
    return {"mode": mode, "workers": workers, "load_before": before, "load_after": load(), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["widget", "cli"], choices=["widget", "cli"])
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--one", nargs=4, metavar=("MODE", "INPUTS", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child process: one run, its JSON on the last line of stdout
        mode, inputs, out, workers = args.one
        print(json.dumps(one(mode, Path(inputs), Path(out), int(workers), args.timeout)))
        return 0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_cases(Path(tmp) / "cases", args.cases)
        for workers in args.workers:
            for mode in args.modes:
                out = Path(tmp) / f"out-{mode}-{workers}"
                child = subprocess.run(
                    [sys.executable, __file__, "--timeout", str(args.timeout), "--one", mode, str(inputs), str(out),
                     str(workers)],
                    capture_output=True, text=True, cwd=ROOT,
                )  # fmt: skip
                lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
                failed = {"mode": mode, "workers": workers, "error": child.stderr[-500:]}
                run = json.loads(lines[-1]) if lines else failed
                run["cases"] = args.cases
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "timeline"}), flush=True)
                shutil.rmtree(out, ignore_errors=True)
    by = {(r["mode"], r["workers"]): r for r in runs}
    report = {"cpu_count": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "cases": args.cases, "runs": runs}  # fmt: skip
    print("\n| mode | workers | wall s | cases/min | vs 1 worker | first bar move s | load before/after |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        if "wall_s" not in r:
            continue
        base = by.get((r["mode"], 1))
        ratio = f"{base['wall_s'] / r['wall_s']:.2f}x" if base and "wall_s" in base else "-"
        print(f"| {r['mode']} | {r['workers']} | {r['wall_s']} | {60 * args.cases / r['wall_s']:.2f} | {ratio} | "
              f"{r.get('first_bar_move_s', '-')} | {r['load_before']} / {r['load_after']} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
