"""Does the thread policy hold under load? Quiet, one busy core and two busy cores, side by side.

    python bench/thread_policy.py [--cases demo real gui] [--policies policy before one] [--repeats 1]

Cases (each a fresh process of this checkout, the default settings):
- ``demo``: ``napari-dropsembles demo --no-view`` (the bundled sample);
- ``real``: ``napari-dropsembles reconstruct`` of a real lumbar vertebra at 1 mm seen through 5 mm
  slices (bench/real_case.py);
- ``gui``: the Reconstruct widget's run with the window shown under Xvfb (bench/gui_responsiveness.py,
  software OpenGL; skipped without ``xvfb-run``).

Policies: ``policy`` (what ships: core/networks/threads), ``before`` (the defaults before it: torch on
every core, or every core but one in napari, OpenMP threads that spin 300,000 times before they sleep,
numpy's OpenBLAS on every core), ``one`` (torch on one thread, the rest of the policy as shipped). Busy
cores are ``while True: pass`` processes started for the duration of a load level. Each time is a
ratio to the same case and policy when quiet, from the same run.
Prints Markdown and JSON; writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_case import NAME, ROOT, BusyCores, checkout_env, cli, machine_load, write_observation  # noqa: E402

from napari_dropsembles.core.networks.threads import THREADS_ENV, available_cores, thread_cap  # noqa: E402

LOADS = (0, 1, 2)
GUI_COMMAND = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"]


def policy_env(policy: str, case: str) -> dict[str, str]:
    """The child's environment for a policy (the bench's own thread settings removed: bench/real_case.py)."""
    env = checkout_env()
    cores = available_cores()
    if policy == "before":
        threads = str(max(1, cores - 1) if case == "gui" else cores)
        env.update({THREADS_ENV: threads, "GOMP_SPINCOUNT": "300000", "OPENBLAS_NUM_THREADS": str(cores)})
    elif policy == "one":
        env[THREADS_ENV] = "1"
    return env


def run_cli(args: list[str], out: Path, env: dict[str, str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    tick = time.perf_counter()
    done = subprocess.run(cli(*args, "--out", str(out), "--quiet"), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    report = json.loads((out / "report.json").read_text())
    timings = report["timings_s"]
    threads = report.get("execution", {}).get("cpu_threads", {})
    return {"wall_s": round(wall, 2), "in_program_s": round(timings["total"] + timings.get("evaluate", 0.0), 2),
            "threads": threads.get("threads"), "why": threads.get("policy")}  # fmt: skip


def run_gui(out: Path, env: dict[str, str], threads: int) -> dict:
    target = out.with_suffix(".json")
    command = [*GUI_COMMAND, sys.executable, str(ROOT / "bench" / "gui_responsiveness.py"), "--reruns", "0",
               "--json", str(target)]  # fmt: skip
    tick = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if done.returncode != 0 or not target.is_file():
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    report = json.loads(target.read_text())
    return {"wall_s": round(wall, 2), "in_program_s": report["run_s"], "threads": threads,
            "max_gap_ms": report["during_the_run"].get("max_gap_ms")}  # fmt: skip


def run_case(case: str, policy: str, folder: Path, observation: Path) -> dict:
    out = folder / f"{case}-{policy}"
    env = policy_env(policy, case)
    if case == "demo":
        return run_cli(["demo", "--no-view"], out, env)
    if case == "real":
        return run_cli(["reconstruct", str(observation)], out, env)
    viewer = int(env[THREADS_ENV]) if THREADS_ENV in env else thread_cap("viewer", env)  # the policy's cap here
    return run_gui(out, env, viewer)


def summarise(runs: list[dict]) -> dict:
    """Median of the repeats (the measure is the in-program time: the run itself, without start-up)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"]}
    row = {key: round(statistics.median(r[key] for r in good), 2) for key in ("wall_s", "in_program_s")}
    row["threads"] = sorted({r.get("threads") for r in good if r.get("threads") is not None})
    if any("max_gap_ms" in r for r in good):
        row["max_gap_ms"] = round(max(r.get("max_gap_ms") or 0.0 for r in good), 1)
    return row


def markdown(results: dict) -> str:
    lines = [
        "| case | policy | quiet (s) | 1 busy core (s, x quiet) | 2 busy cores (s, x quiet) | threads quiet / 1 / 2 |",
        "|---|---|---|---|---|---|",
    ]
    for case, policies in results["table"].items():
        for policy, by_load in policies.items():
            quiet = by_load["0"]
            cells = []
            for load in ("0", "1", "2"):
                row = by_load.get(load, {})
                if "error" in row or "in_program_s" not in row:
                    cells.append(f"error: {row['error']}" if "error" in row else "not run")
                    continue
                text = f"{row['in_program_s']:.1f}"
                if load != "0" and "in_program_s" in quiet:
                    text += f" ({row['in_program_s'] / quiet['in_program_s']:.2f}x)"
                if "max_gap_ms" in row:
                    text += f", longest event-loop gap {row['max_gap_ms']:.0f} ms"
                cells.append(text)
            used = [by_load.get(k, {}).get("threads") or ["-"] for k in ("0", "1", "2")]
            threads = " / ".join(",".join(map(str, t)) for t in used)
            lines.append(f"| {case} | {policy} | {' | '.join(cells)} | {threads} |")
    return "\n".join(lines)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["demo", "real", "gui"], choices=["demo", "real", "gui"])
    policies = ["policy", "before", "one"]
    parser.add_argument("--policies", nargs="+", default=policies, choices=policies)
    parser.add_argument("--loads", nargs="+", type=int, default=list(LOADS), help="busy cores (0 = quiet, always run)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "thread_policy")
    args = parser.parse_args(argv)
    loads = sorted(set(args.loads) | {0})
    if "gui" in args.cases and shutil.which("xvfb-run") is None:
        print("xvfb-run not found: the window-shown case is skipped", file=sys.stderr)
        args.cases = [c for c in args.cases if c != "gui"]
    runs: dict = {}
    results = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": available_cores(), "cases": args.cases,
               "real_case": NAME, "policies": args.policies, "repeats": args.repeats, "load_before": machine_load(),
               "loads_seen": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        observation = write_observation(folder / "real")
        for repeat in range(args.repeats):
            for case in args.cases:
                for load in loads:
                    with BusyCores(load):
                        seen = machine_load()
                        results["loads_seen"].append({"case": case, "busy": load, "repeat": repeat, **seen})
                        for policy in args.policies:
                            say(f"{case} / {policy} / {load} busy (repeat {repeat + 1})")
                            row = run_case(case, policy, folder, observation)
                            runs.setdefault(case, {}).setdefault(policy, {}).setdefault(str(load), []).append(row)
    results["load_after"] = machine_load()
    results["runs"] = runs
    results["table"] = {
        case: {policy: {load: summarise(v) for load, v in by.items()} for policy, by in per.items()}
        for case, per in runs.items()
    }
    text = markdown(results)
    print(text)
    print(json.dumps(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    note = (
        f"{results['cores']} cores; machine load before {results['load_before']}, after {results['load_after']} "
        "(busy_cores: other processes' CPU use over 0.5 s). Times: the run inside the program (median of repeats)."
    )
    args.out.with_suffix(".md").write_text(f"# Thread policy under load\n\n{note}\n\n{text}\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
