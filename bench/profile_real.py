"""Where the time of a real-resolution case goes: time and cProfile per stage of ``reconstruct``.

    python bench/profile_real.py [--prior CKPT] [--out docs/profile_real]

The case: a real lumbar vertebra at 1 mm seen through 5 mm slices (bench/real_case.py), the
default ``napari-dropsembles reconstruct OBS --out D``. Three runs of this checkout, one after another:

1. the command as users run it (a subprocess, no profiler): wall time and the program's own timings;
2. the same under ``python -m cProfile``: the top costs of the whole process;
3. the same command in this process with one cProfile per stage (prepare, fit, member diversity,
   held-out slice check, prediction, mesh, save): each stage's time and its own top costs.

Prints a Markdown table and JSON; writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_case import NAME, ROOT, checkout_env, cli, machine_load, write_observation  # noqa: E402

STAGES = ("prepare", "fit", "member diversity", "held-out slice check", "prediction", "mesh", "save")


class Stage:
    """The time spent in one stage and its cProfile (enabled only while the stage runs)."""

    def __init__(self, name: str) -> None:
        self.name, self.profile, self.seconds, self.calls = name, cProfile.Profile(), 0.0, 0

    @contextlib.contextmanager
    def on(self):
        tick = time.perf_counter()
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()
            self.seconds += time.perf_counter() - tick
            self.calls += 1

    def function(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.on():
                return fn(*args, **kwargs)

        return timed

    def generator(self, fn: Callable) -> Callable:
        """A generator function whose every resumption runs inside the stage (what it yields to does not)."""

        def timed(*args, **kwargs):
            steps = fn(*args, **kwargs)
            sent = None
            while True:
                try:
                    with self.on():
                        item = steps.send(sent)
                except StopIteration as stop:
                    return stop.value
                sent = yield item

        return timed


def top_functions(stats: pstats.Stats, count: int, key: str = "tottime") -> list[dict]:
    """The ``count`` functions with the most own (``tottime``) or cumulative time."""
    column = 2 if key == "tottime" else 3
    rows = sorted(stats.stats.items(), key=lambda item: item[1][column], reverse=True)[:count]
    out = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in rows:
        where = Path(filename)
        short = "/".join(where.parts[-3:]) if "napari_dropsembles" in where.parts else where.name
        out.append({"function": f"{short}:{line}({name})", "calls": calls, "own_s": round(tottime, 3),
                    "cumulative_s": round(cumtime, 3)})  # fmt: skip
    return out


def prior_option(prior: str | None) -> list[str]:
    return ["--prior", prior] if prior else []


def run_plain(observation: Path, out: Path, prior: str | None) -> dict:
    command = cli("reconstruct", str(observation), "--out", str(out), "--quiet", *prior_option(prior))
    tick = time.perf_counter()
    subprocess.run(command, check=True, env=checkout_env(), cwd=out.parent)
    wall = time.perf_counter() - tick
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": round(wall, 2), "timings_s": report["timings_s"], "grid": report["grid"]["shape"],
            "execution": report.get("execution", {})}  # fmt: skip


def run_whole_profile(observation: Path, out: Path, prior: str | None, count: int) -> dict:
    dump = out.parent / "whole.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(dump), "-m", "napari_dropsembles.cli", "reconstruct",
               str(observation), "--out", str(out), "--quiet", *prior_option(prior)]  # fmt: skip
    tick = time.perf_counter()
    subprocess.run(command, check=True, env=checkout_env(), cwd=out.parent)
    stats = pstats.Stats(str(dump), stream=io.StringIO())
    return {"wall_s": round(time.perf_counter() - tick, 2), "top_own": top_functions(stats, count),
            "top_cumulative": top_functions(stats, count, "cumtime")}  # fmt: skip


def run_staged(observation: Path, out: Path, prior: str | None, count: int) -> dict:
    """The command in this process with the stage functions of core/jobs/reconstruct wrapped."""
    from napari_dropsembles.cli import main
    from napari_dropsembles.core.jobs import reconstruct as job
    from napari_dropsembles.core.results.reconstruction import Reconstruction

    stages = {name: Stage(name) for name in STAGES}
    surface_class = job.IsoSurface

    def isosurface(*args, **kwargs):
        with stages["mesh"].on():
            surface = surface_class(*args, **kwargs)
        surface.extract = stages["mesh"].function(surface.extract)
        return surface

    patches = {
        "case_for": stages["prepare"].function(job.case_for),
        "fit_steps": stages["fit"].generator(job.fit_steps),
        "diversify_members": stages["member diversity"].function(job.diversify_members),
        "slice_check_steps": stages["held-out slice check"].generator(job.slice_check_steps),
        "predict_grid_steps": stages["prediction"].generator(job.predict_grid_steps),
        "IsoSurface": isosurface,
    }
    originals = {name: getattr(job, name) for name in patches}
    save = Reconstruction.save
    try:
        for name, value in patches.items():
            setattr(job, name, value)
        Reconstruction.save = stages["save"].function(save)
        tick = time.perf_counter()
        code = main(["reconstruct", str(observation), "--out", str(out), "--quiet", *prior_option(prior)])
        wall = time.perf_counter() - tick
    finally:
        for name, value in originals.items():
            setattr(job, name, value)
        Reconstruction.save = save
    if code != 0:
        raise SystemExit(f"reconstruct exited with {code}")
    rows = {}
    for name, stage in stages.items():
        stats = pstats.Stats(stage.profile, stream=io.StringIO()) if stage.calls else None
        rows[name] = {"seconds": round(stage.seconds, 3), "share": round(stage.seconds / wall, 3),
                      "top_own": top_functions(stats, count) if stats else []}  # fmt: skip
    rest = wall - sum(stage.seconds for stage in stages.values())
    return {"wall_s": round(wall, 2), "stages": rows, "outside_the_stages_s": round(rest, 3)}


def markdown(results: dict) -> str:
    plain, staged, whole = results["plain"], results["staged"], results["whole"]
    t = plain["timings_s"]
    lines = [
        f"Case: {results['case']}; output grid {' x '.join(map(str, plain['grid']))}; "
        f"load before {results['load_before']}, after {results['load_after']}.",
        "",
        "| stage | program's own timing, no profiler (s) | in-process run with a profiler per stage (s) | share |",
        "|---|---|---|---|",
    ]
    own = {"prepare": t.get("prepare"), "fit": t.get("finetune"), "held-out slice check": t.get("slice_check"),
           "prediction": t.get("predict"), "mesh": t.get("mesh")}  # fmt: skip
    for name, row in staged["stages"].items():
        mine = own.get(name)
        note = " (fit + member diversity)" if name == "fit" and mine is not None else ""
        cell = "-" if mine is None else f"{mine:.2f}{note}"
        lines.append(f"| {name} | {cell} | {row['seconds']:.2f} | {row['share']:.0%} |")
    lines += [
        f"| outside the stages (imports, reading, prior, checks) | - | {staged['outside_the_stages_s']:.2f} | "
        f"{staged['outside_the_stages_s'] / staged['wall_s']:.0%} |",
        f"| **whole command** | {plain['wall_s']:.2f} wall (pipeline total {t.get('total', 0):.2f}) | "
        f"{staged['wall_s']:.2f} (in process, torch already loaded) | |",
        "",
        f"Top own-time functions of the whole process (cProfile, {whole['wall_s']:.1f} s under the profiler):",
        "",
        "| function | calls | own s | cumulative s |",
        "|---|---|---|---|",
    ]
    for r in whole["top_own"]:
        lines.append(f"| `{r['function']}` | {r['calls']} | {r['own_s']:.2f} | {r['cumulative_s']:.2f} |")
    lines += ["", "Per stage, the top own-time functions:", ""]
    for name, row in staged["stages"].items():
        if row["top_own"]:
            tops = "; ".join(f"`{r['function']}` {r['own_s']:.2f}" for r in row["top_own"][:6])
            lines.append(f"- **{name}** ({row['seconds']:.2f} s): {tops}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", help="prior .safetensors (default: the bundled one)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per table")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "profile_real")
    args = parser.parse_args(argv)
    machine = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    results: dict = {"case": NAME, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine,
                     "load_before": machine_load()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        observation = write_observation(folder)
        print("1/3 the command, no profiler ...", file=sys.stderr, flush=True)
        results["plain"] = run_plain(observation, folder / "plain", args.prior)
        print("2/3 the command under cProfile ...", file=sys.stderr, flush=True)
        results["whole"] = run_whole_profile(observation, folder / "whole", args.prior, args.top)
        print("3/3 in process, a profiler per stage ...", file=sys.stderr, flush=True)
        results["staged"] = run_staged(observation, folder / "staged", args.prior, args.top)
    results["load_after"] = machine_load()
    text = markdown(results)
    print(text)
    print(json.dumps(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(f"# Profile of the 1 mm lumbar case\n\n{text}\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
