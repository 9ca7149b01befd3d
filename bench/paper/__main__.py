"""``python -m bench.paper [--quick]``: run the three experiments and write docs/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from .common import single_thread

QUICK = {
    "toy2d": dict(hidden=32, blocks=3, dropout=0.2, pretrain_steps=250, finetune_steps=80, lr=1e-3, n_a=2000, n_b=80,
                  noise=0.1, shift=0.75, members=4, sizes=[2, 4, 8, 16], ewc=0.01,
                  ewc_sweep=[0.0, 0.001, 0.01, 0.1, 1.0], grid=60, repeats=2),
    "digits": dict(upsample=4, train_images=0, channels=8, features=16, hidden=32, blocks=3, dropout=0.2,
                   pretrain_steps=200, batch_points=256, batch_images=8, finetune_steps=60, lr=1e-3, members=4,
                   sizes=[2, 4], ewc=0.01, ewc_sweep=[0.0, 0.01, 0.1, 1.0, 10.0], cases=2, sweep_cases=1),
    "vertebrae": dict(grid=16, encoder_channels=[8, 16, 32], features=16, hidden=32, blocks=3, dropout=0.2,
                      pretrain_steps=150, batch_size=4, points=2048, samples=24, members=4, sizes=[2, 4], ewc=0.01,
                      ewc_sweep=[0.0, 0.001, 0.01, 0.1, 1.0], finetune_steps=40, points_per_step=2048,
                      factors=[2.0, 3.0, 4.0, 5.0], gt_spacing=1.5, cases=4, figure_cases=2, sweep_cases=2,
                      corruption_factor=4.0, corruption_cases=2,
                      corruption_methods=["single", "deep_ensemble", "dropsembles"]),
}
FULL = {  # what this machine can run in about 40 min (vertebrae: the quick architecture, longer pretraining)
    "toy2d": {**QUICK["toy2d"], "pretrain_steps": 600, "finetune_steps": 100, "grid": 100, "repeats": 3},
    "digits": {**QUICK["digits"], "channels": 16, "pretrain_steps": 600, "batch_images": 16, "cases": 6,
               "sweep_cases": 3, "sizes": [2, 4, 8]},
    "vertebrae": {**QUICK["vertebrae"], "pretrain_steps": 400, "samples": 64, "cases": 20, "sweep_cases": 6,
                  "corruption_cases": 4, "figure_cases": 3,
                  "corruption_methods": ["single", "mc_dropout", "deep_ensemble", "dropsembles"]},
}
TINY = {  # the test's configuration: every code path, seconds
    "toy2d": {**QUICK["toy2d"], "pretrain_steps": 30, "finetune_steps": 20, "n_a": 500, "sizes": [2],
              "members": 2, "ewc_sweep": [0.0, 0.01, 0.1], "grid": 16, "repeats": 1},
    "digits": {**QUICK["digits"], "train_images": 32, "channels": 4, "features": 8, "hidden": 16,
               "pretrain_steps": 25, "batch_images": 4, "finetune_steps": 10, "members": 2, "sizes": [2],
               "ewc_sweep": [0.0, 0.01, 0.1], "cases": 1, "sweep_cases": 1},
    "vertebrae": {**QUICK["vertebrae"], "grid": 8, "encoder_channels": [4, 8, 8], "features": 8, "hidden": 16,
                  "blocks": 2, "pretrain_steps": 10, "samples": 3, "points": 1024, "members": 2, "sizes": [2],
                  "ewc_sweep": [0.0, 0.01, 0.1], "finetune_steps": 10, "points_per_step": 1024,
                  "factors": [3.0, 4.0], "gt_spacing": 2.5, "cases": 1, "figure_cases": 1, "sweep_cases": 1,
                  "corruption_cases": 1, "corruption_methods": ["dropsembles"]},
}
MODES = {"quick": QUICK, "full": FULL, "tiny": TINY}


def _finite_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def run(mode: str, out: Path, experiments=("toy2d", "digits", "vertebrae"), command: str | None = None) -> dict:
    """Run ``experiments`` in ``mode``; write ``out/results.json``, ``out/RESULTS.md``, ``out/figures/*.png``."""
    single_thread()
    from . import digits, report, toy2d, vertebrae

    modules = {"toy2d": toy2d, "digits": digits, "vertebrae": vertebrae}
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"mode": mode, "experiments": {}, "experiment_wall_s": {}}
    for name in experiments:
        print(f"[bench.paper] {name} ({mode}) ...", flush=True)
        result = modules[name].run(MODES[mode][name], figures)
        result["figures"].append(report.reliability_figure(name, result, figures / f"{name}_reliability.png"))
        result["figures"].append(report.cost_figure(name, result, figures / f"{name}_cost.png"))
        results["experiments"][name] = result
        results["experiment_wall_s"][name] = result["wall_s"]
        print(f"[bench.paper] {name} done in {result['wall_s']:.0f} s", flush=True)
    results["wall_time_s"] = time.perf_counter() - started
    results["command"] = command or f"OMP_NUM_THREADS=1 python -m bench.paper --{mode} --out {out}"
    results["machine"] = (f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), torch threads 1, "
                          f"Python {platform.python_version()}")
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["headline"] = report.headline(results)
    for exp in results["experiments"].values():
        exp["figures"] = [str(Path(f).relative_to(out)) for f in exp["figures"]]
    (out / "results.json").write_text(json.dumps(_finite_json(results), indent=1))
    for exp in results["experiments"].values():
        exp["figures"] = [str(out / f) for f in exp["figures"]]
    report.write_markdown(results, out / "RESULTS.md", out)
    return results


def rewrite_report(out: Path) -> dict:
    """Regenerate RESULTS.md (tables, headline, reading) from an existing results.json: no experiment runs."""
    from . import report

    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    results["headline"] = report.headline(results)
    (out / "results.json").write_text(json.dumps(_finite_json(results), indent=1))
    for exp in results["experiments"].values():
        exp["figures"] = [str(out / f) for f in exp["figures"]]
    report.write_markdown(results, out / "RESULTS.md", out)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paper", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="reduced run (< 10 min on 2 CPU cores)")
    group.add_argument("--tiny", action="store_true", help="seconds-long configuration used by the tests")
    parser.add_argument("--out", default="docs", help="folder for RESULTS.md, results.json, figures/ (default docs)")
    parser.add_argument("--only", nargs="+", choices=["toy2d", "digits", "vertebrae"], default=None)
    parser.add_argument("--report-only", action="store_true",
                        help="only regenerate RESULTS.md from OUT/results.json (e.g. after editing the reading)")
    args = parser.parse_args(argv)
    if args.report_only:
        rewrite_report(Path(args.out))
        print(f"[bench.paper] rewrote {Path(args.out) / 'RESULTS.md'}")
        return 0
    mode = "quick" if args.quick else "tiny" if args.tiny else "full"
    command = "OMP_NUM_THREADS=1 python -m bench.paper " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run(mode, Path(args.out), tuple(args.only or ("toy2d", "digits", "vertebrae")), command.strip())
    print(f"[bench.paper] wrote {Path(args.out) / 'RESULTS.md'} in {results['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
