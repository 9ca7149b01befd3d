"""How responsive is napari while the Reconstruct widget works? (longest gap of a 10 ms main-thread timer)

Opens the sample vertebra in a visible viewer, runs the Reconstruct widget with its default
settings in the background, and records every tick of a 10 ms ``QTimer`` on the main thread.
A gap between ticks is time the event loop could not run (no repaint, no mouse). Reported per
phase: fine-tuning and prediction (worker busy), placing the result layers, and dragging the
threshold slider afterwards.

    xvfb-run -a -s "-screen 0 1600x1000x24" python bench/gui_responsiveness.py [--prior P] [--json OUT]

Placing the layers is reported step by step (``placement_timeline``: each step's main-thread time and
the timer gap that holds it, i.e. the step plus the repaint after it); ``--profile OUT`` writes a cProfile
of the first run's placement (main thread, until the viewer settled).

Without a bundled prior and without ``--prior``, an untrained prior of the default architecture
is used: the cost of a run (what this measures) does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def register_plugin() -> None:
    from npe2 import PluginManager, PluginManifest

    manager = PluginManager.instance()
    if "napari-dropsembles" not in manager:
        manager.register(PluginManifest.from_file(ROOT / "napari.yaml"))


def untrained_prior(path: Path) -> Path:
    """A prior with the default architecture and random weights (same compute as a trained one)."""
    import torch

    from napari_dropsembles.core.config.configs import ModelConfig
    from napari_dropsembles.core.networks.checkpoint import PretrainedModel, Prior, save_prior
    from napari_dropsembles.core.networks.ensemble import EnsembleDecoder
    from napari_dropsembles.core.networks.model import VoxelEncoder

    config = ModelConfig()
    torch.manual_seed(0)
    decoder = EnsembleDecoder(config, 1, torch.Generator().manual_seed(0))
    state = {name: p.detach().clone() for name, p in decoder.parameter_dict().items()}
    model = PretrainedModel(VoxelEncoder(config).eval(), state, {k: torch.ones_like(v) for k, v in state.items()})
    return save_prior(Prior(config, [model], {"data": "none (responsiveness benchmark)"}), path)


class TickRecorder:
    """A 10 ms QTimer on the main thread; gaps between ticks = time the event loop was blocked."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.times: list[float] = []
        self.marks: list[tuple[float, str]] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.stacks: dict[float, list[str]] = {}  # tick time -> where the other threads were (long gaps only)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.times and now - self.times[-1] > 0.05:  # the worker held the GIL, or the main thread was busy
            self.stacks[now] = other_thread_stacks()
        self.times.append(now)

    def start(self) -> None:
        self.times = [time.perf_counter()]
        self.timer.start()

    def mark(self, name: str) -> None:
        self.marks.append((time.perf_counter(), name))

    def stop(self) -> None:
        self.timer.stop()

    def gaps_ms(self, start: float, stop: float) -> np.ndarray:
        t = np.asarray(self.times)
        inside = t[(t >= start) & (t <= stop)]
        return np.diff(inside) * 1000 if len(inside) > 1 else np.zeros(0)


def other_thread_stacks(depth: int = 3) -> list[str]:
    """The innermost frames of every other thread that is in this package's code (or under it)."""
    import threading
    import traceback

    main = threading.main_thread().ident
    found = []
    for ident, frame in sys._current_frames().items():
        if ident == main:
            continue
        frames = traceback.extract_stack(frame)
        ours = [i for i, f in enumerate(frames) if "napari_dropsembles" in f.filename]
        if not ours:
            continue
        inner = frames[ours[-1] : ours[-1] + depth]
        found.append(" > ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in inner))
    return found


def settle(app, seconds: float = 0.3) -> float:
    """Let the event loop run ``seconds`` (the repaint after a change, and the timer's next tick) and say when."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        app.processEvents()
        time.sleep(0.001)
    return until


def wait_for_run(app, widget, task) -> float | None:
    """Run the event loop until the widget's run is over; returns when its computation ended (None: never)."""
    from napari_dropsembles._gui.state import RunState

    done = None
    while widget.status.state is RunState.RUNNING:
        app.processEvents()
        if done is None and task.outcome is not None:
            done = time.perf_counter()
        time.sleep(0.001)
    return done


def summary(gaps: np.ndarray) -> dict:
    if not len(gaps):
        return {"ticks": 0}
    return {
        "ticks": int(len(gaps)),
        "max_gap_ms": round(float(gaps.max()), 1),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "median_gap_ms": round(float(np.median(gaps)), 1),
        "gaps_over_100ms": int((gaps > 100).sum()),
    }


def worst_gaps(recorder, start, stop, phases, callbacks, count: int = 5) -> list[dict]:
    """The longest gaps, with the worker's phase and the widget's progress handling inside them."""
    t = np.asarray(recorder.times)
    t = t[(t >= start) & (t <= stop)]
    if len(t) < 2:
        return []
    gaps = np.diff(t)
    found = []
    for i in np.argsort(gaps)[::-1][:count]:
        begin, end = t[i], t[i + 1]
        phase = next((name for when, name in reversed(phases) if when <= end), "start")
        handled = sum(ms for when, ms in callbacks if begin <= when <= end)
        found.append(
            {
                "at_s": round(begin - start, 2),
                "gap_ms": round(1000 * (end - begin), 1),
                "phase": phase,
                "progress_handling_ms": round(handled, 1),
                "worker_at_the_end": recorder.stacks.get(end, []),
            }
        )
    return found


def placement_timeline(recorder, steps: list[tuple[float, float]]) -> list[dict]:
    """Each placement step: its main-thread time and the timer gap that holds it (the step, the repaint
    after it and whatever else ran in the same event-loop turns), from the previous tick to the next one."""
    t = np.asarray(recorder.times)
    rows = []
    for begin, end in steps:
        before = t[t <= begin]
        after = t[t >= end]
        if not len(before) or not len(after):
            continue
        gap = 1000 * (after[0] - before[-1])
        step = 1000 * (end - begin)
        rows.append({"step_ms": round(step, 1), "gap_ms": round(gap, 1), "rest_of_gap_ms": round(gap - step, 1)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", type=Path, help="prior .safetensors (default: bundled, else untrained)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the widget's)")
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--spacing", type=float, default=0.0, help="output spacing mm (0: the input's finest)")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    parser.add_argument(
        "--reruns",
        type=int,
        default=1,
        help="run again this many times after the threshold drag (results updated in place)",
    )
    parser.add_argument(
        "--refines", type=int, default=0, help="then press Refine (Annotate next) this many times (issue 13)"
    )
    parser.add_argument(
        "--hidden", action="store_true", help="do not show the window: measures the plugin without the cost of drawing"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="cProfile the first run's placement (from the run's end until the viewer settled) into this .prof file",
    )
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dropsembles._gui.state import RunState
    from napari_dropsembles.core.config.paths import bundled_prior_path

    register_plugin()
    prior = args.prior
    if prior is None:
        prior = (
            bundled_prior_path()
            if bundled_prior_path().is_file()
            else untrained_prior(Path("/tmp") / "dropsembles_bench_untrained_prior.safetensors")
        )
    viewer = napari.Viewer(show=not args.hidden)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-dropsembles", "vertebra")
    observation = viewer.layers["vertebra observation"]
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-dropsembles", "Reconstruct with uncertainty")
    widget.sync = False
    widget.add_prior(prior)
    widget.input.value = observation
    widget.spacing.value = args.spacing
    if args.steps is not None:
        widget.steps.value = args.steps
    if args.members is not None:
        widget.members.value = args.members
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)

    recorder = TickRecorder()
    recorder.start()
    idle_start = time.perf_counter()
    while time.perf_counter() < idle_start + 2.0:  # baseline: the same viewer, idle, on this machine
        app.processEvents()
        time.sleep(0.001)
    placements = []
    steps: list[tuple[float, float]] = []  # (start, end) of each placement step on the main thread
    place_next = widget._place_next

    def timed_place_next(*place_args):
        tick = time.perf_counter()
        place_next(*place_args)
        steps.append((tick, time.perf_counter()))
        placements.append(round(1000 * (time.perf_counter() - tick), 1))

    widget._place_next = timed_place_next
    profiler = None
    if args.profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        on_finished = widget._on_finished
        profiling: list[bool] = []

        def profiled_on_finished(outcome):
            if not profiling:
                profiling.append(True)
                profiler.enable()
            on_finished(outcome)

        widget._on_finished = profiled_on_finished
    phases: list[tuple[float, str]] = []  # when each phase's first progress reached the main thread
    callbacks: list[tuple[float, float]] = []  # (when, ms) of the widget's progress handling
    owner = getattr(widget, "runner", None)  # the run controller reports progress (older code: the widget)
    name = "_progress" if owner is not None else "_on_progress"
    owner = owner if owner is not None else widget
    on_progress = getattr(owner, name)

    def timed_on_progress(progress):
        tick = time.perf_counter()
        if not phases or phases[-1][1] != progress.phase:
            phases.append((tick, progress.phase))
        on_progress(progress)
        callbacks.append((tick, 1000 * (time.perf_counter() - tick)))

    setattr(owner, name, timed_on_progress)
    started = time.perf_counter()
    task = widget.run()
    run_call_ms = 1000 * (time.perf_counter() - started)  # pressing Run: the main thread's own work
    computing_done = wait_for_run(app, widget, task)
    placed = time.perf_counter()
    settled = settle(app)  # the repaint after the last layer is part of placing them
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(args.profile))
    first_steps = list(steps)
    if widget.status.state is not RunState.DONE:
        print(f"the run did not finish: {widget.status.state} {widget.status.message}", file=sys.stderr)
        return 1
    # drag the threshold slider across its range (a value every 30 ms), then let it settle
    drag_start = time.perf_counter()
    for value in np.linspace(0.5, 0.2, 20):
        widget.threshold.setValue(float(value))
        settle(app, 0.03)
    settle(app, 1.5)
    drag_stop = time.perf_counter()
    first_placements = list(placements)
    reruns = []
    refine = getattr(getattr(widget, "annotate", None), "refine", None)  # Annotate next's Refine (issue 13)
    passes = [("rerun", widget.run)] * args.reruns + ([("refine", refine)] * args.refines if refine else [])
    for kind, start in passes:  # the same input again: the result layers are updated in place
        placements_before = len(placements)
        steps_before = len(steps)
        again = time.perf_counter()
        rerun_task = start()
        rerun_call_ms = 1000 * (time.perf_counter() - again)
        rerun_done = wait_for_run(app, widget, rerun_task)
        rerun_placed = time.perf_counter()
        rerun_settled = settle(app)
        reruns.append(
            {
                "kind": kind,
                "run_s": round(rerun_placed - again, 2),
                "pressing_run_ms": round(rerun_call_ms, 1),
                "during_the_run": summary(recorder.gaps_ms(again, rerun_done or rerun_placed)),
                "placing_the_layers": summary(recorder.gaps_ms(rerun_done or rerun_placed, rerun_settled)),
                "each_layer_placement_ms": placements[placements_before:],
                "placement_timeline": placement_timeline(recorder, steps[steps_before:]),
                "longest_gaps_during_the_run": worst_gaps(
                    recorder, again, rerun_done or rerun_placed, phases, callbacks, count=3
                ),
            }
        )
    recorder.stop()

    output = widget.current
    report = {
        "prior": str(prior),
        "config": {
            "method": widget.method.value,
            "members": widget.members.value,
            "steps": widget.steps.value,
            "spacing_mm": widget.spacing.value or "input's finest",
        },
        "grid": list(output.structures.mean.shape),
        "window": "hidden" if args.hidden else "shown (1600x1000)",
        "device": output.structures.device,
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "run_s": round(placed - started, 2),
        "pressing_run_ms": round(run_call_ms, 1),
        "idle_baseline": summary(recorder.gaps_ms(idle_start, started)),
        "during_the_run": summary(recorder.gaps_ms(started, computing_done or placed)),
        "placing_the_layers": summary(recorder.gaps_ms(computing_done or placed, settled)),
        "each_layer_placement_ms": first_placements,
        "placement_timeline": placement_timeline(recorder, first_steps),
        "whole_run": summary(recorder.gaps_ms(started, placed)),
        "dragging_the_threshold": summary(recorder.gaps_ms(drag_start, drag_stop)),
        "last_remesh_ms": round(1000 * widget.last_remesh.elapsed_s, 1) if widget.last_remesh else None,
        "progress_handling_ms": summary(np.array([ms for _when, ms in callbacks])),
        "longest_gaps_during_the_run": worst_gaps(recorder, started, placed, phases, callbacks),
        "reruns": reruns,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
