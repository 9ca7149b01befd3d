"""What the command line shows: progress on stderr, and the summaries of a result on stdout."""

from __future__ import annotations

import sys
import time

from ..core.config.progress import Progress
from ..core.scoring.metrics import REPORTED
from .parser import cli_setting


def _stderr_call(method: str, *args: object, default: object = None) -> object:
    """Call ``sys.stderr.method(*args)``; ``default`` when stderr is None, closed or broken (2>&-)."""
    stream = sys.stderr
    if stream is None:
        return default
    try:
        return getattr(stream, method)(*args)
    except (OSError, ValueError, AttributeError):
        return default


def say(text: str, end: str = "\n") -> None:
    """A line on stderr when there is one; a run never fails because stderr is closed."""
    _stderr_call("write", text + end)
    _stderr_call("flush")


class ProgressPrinter:
    """A progress bar on stderr: redrawn in a terminal, a line every 30 s in a log; silent with --quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.phase = ""
        self.started = time.perf_counter()
        self.interactive = _stderr_call("isatty", default=False)
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        new_phase = progress.phase != self.phase
        done = progress.step >= progress.total
        if not (new_phase or done or now - self._last > (0.1 if self.interactive else 30.0)):
            return
        if new_phase and self.phase and self.interactive:
            say("", end="")
        self.phase = progress.phase
        self._last = now
        width = 30
        filled = int(width * min(progress.fraction, 1.0))
        loss = f" loss {progress.loss:.4f}" if progress.loss is not None else ""
        note = f" {progress.message}" if progress.message else ""
        line = (
            f"{progress.phase:>9} [{'#' * filled}{'.' * (width - filled)}] "
            f"{progress.step}/{progress.total}{loss}{note} {now - self.started:6.1f}s"
        )
        if self.interactive:
            say("\r" + line, end="\n" if done else "")
        else:
            say(line)


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    header = f"{'method':>14} " + " ".join(f"{k:>10}" for k in REPORTED)
    rows = [header]
    skipped = []
    for name, values in metrics.items():
        if "skipped" in values:
            skipped.append(f"{name}: {values['skipped']}")
            continue
        rows.append(f"{name:>14} " + " ".join(f"{values.get(k, float('nan')):>10.4f}" for k in REPORTED))
    return "\n".join(rows + skipped)


def summary(structures) -> str:
    """A result in a few lines: one object's timings, notes and metrics; or the table of structures read per label."""
    return _table_summary(structures) if structures.split else _object_summary(structures)


def _object_summary(structures) -> str:
    (result,) = structures.results.values()
    t = result.timings
    lines = [
        f"{result.config.method} M={result.fitted.members} on {result.device}: fine-tune {t.get('finetune', 0):.1f}s, "
        f"predict {t.get('predict', 0):.1f}s ({result.maps.mean.shape} grid), total {t.get('total', 0):.1f}s"
    ]
    lines += [f"note: {note}" for note in result.notes(cli_setting)]
    if result.metrics:
        lines.append(metrics_table(result.metrics))
    return "\n".join(lines)


def _table_summary(structures) -> str:
    results = structures.results
    first = results[structures.labels[0]]
    total = sum(r.timings.get("total", 0.0) for r in results.values())
    round_text = f", refine round {structures.rounds}" if structures.rounds else ""
    kept = f" (label {', '.join(map(str, structures.kept))} unchanged: not fine-tuned)" if structures.kept else ""
    lines = [
        f"{first.config.method} M={structures.members} on {structures.device}: {len(results)} structures "
        f"(label {', '.join(map(str, structures.labels))}){round_text}{kept}, total {total:.1f}s",
        f"{'label':>6} {'volume ml':>10} {'+- ml':>8} {'band var':>10}  flag",
    ]
    for row in structures.table():
        lines.append(
            f"{row.label:>6} {row.volume_ml:>10.2f} {row.volume_ml_std:>8.2f} {row.band_variance:>10.5f}  "
            + (row.reason if row.flagged else "")
        )
    for label, result in sorted(results.items()):
        lines += [f"note (label {label}): {note}" for note in result.notes(cli_setting)]
        if result.metrics:
            lines.append(f"label {label}:\n" + metrics_table(result.metrics))
    return "\n".join(lines)


def suggestion_table(suggestions, expected: str, labels: bool) -> str:
    """The ranked slices; ``labels``: with the structures each helps."""
    header = f"{'rank':>4} {'axis':>4} {'index':>5} {'world mm':>9} {'score':>9}  kind"
    lines = [header + ("   labels" if labels else "")]
    for rank, s in enumerate(suggestions, 1):
        helped = f"  {','.join(map(str, s.labels))}" if labels else ""
        lines.append(f"{rank:>4} {s.axis:>4} {s.index:>5} {s.world_mm:>9.2f} {s.score:>9.2f}  {s.kind}{helped}")
    if not suggestions:
        lines.append("  (no slice left to suggest)")
    lines.append(f"expected error: {expected}")
    return "\n".join(lines)
