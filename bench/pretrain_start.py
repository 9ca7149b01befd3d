"""Pretraining start-up and throughput: samples made while training runs (core/fitting/sample_stream).

    python bench/pretrain_start.py [--recipe-steps 100] [--before REF] [--out docs/pretrain_start]

1. ``napari-dropsembles pretrain --steps 1 --out x.safetensors`` (procedural vertebrae, defaults): wall
   time of the command, and in this process the time to the first step, to the Fisher and to the end.
2. The bundled prior's recipe (docs/prior.md): ``--init bundled --data ../shared/real/verse/vertebrae
   --procedural-share 0.2 --slice-axes 0 1 2 --slice-factors 1.5 7 --augment --lr 3e-4 --samples 640``,
   ``--recipe-steps`` steps (the prior ran 800): time to the first step, steps/s and training samples/s
   over the run and over its second half (when most samples exist), and distinct samples made per second.
3. With ``--before REF``: the same two commands from ``git archive REF`` (the code before, e.g. affb189,
   the last commit before the sample stream and the thread policy), side by side.

Prints Markdown and JSON; writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_case import ROOT, checkout_env, cli, machine_load  # noqa: E402

VERSE = ROOT.parent / "shared" / "real" / "verse" / "vertebrae"
RECIPE = ["--init", "bundled", "--data", str(VERSE), "--procedural-share", "0.2", "--slice-axes", "0", "1", "2",
          "--slice-factors", "1.5", "7", "--augment", "--lr", "3e-4", "--samples", "640"]  # fmt: skip


def command_wall(args: list[str], out: Path, root: Path | None = None) -> dict:
    """Wall time of ``pretrain ARGS --out OUT`` run from this checkout or from ``root``."""
    env = checkout_env()
    if root is not None:
        env["PYTHONPATH"] = str(root)
    tick = time.perf_counter()
    done = subprocess.run(cli("pretrain", *args, "--out", str(out), "--quiet"), env=env, cwd=out.parent,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return {"wall_s": round(wall, 2)}


def in_process(args: list[str], out: Path) -> dict:
    """The pretrain job in this process, every progress report timed."""
    from napari_dropsembles.cli.parser import build_parser, pretrain_configs_from_args
    from napari_dropsembles.core.config.progress import drive
    from napari_dropsembles.core.jobs.pretrain_api import PretrainRequest, pretrain_job_steps
    from napari_dropsembles.core.networks.threads import use_threads

    parsed = build_parser().parse_args(["pretrain", *args, "--out", str(out)])
    model_config, config = pretrain_configs_from_args(parsed)
    request = PretrainRequest(out=out, model_config=model_config, config=config, data=parsed.data, init=parsed.init,
                              device="cpu")  # fmt: skip
    marks: list[tuple[float, str, int, int]] = []  # (seconds, phase, step, samples made)
    started = time.perf_counter()

    def mark(progress) -> None:
        marks.append((time.perf_counter() - started, progress.phase, progress.step,
                      int(progress.extra.get("samples_made", 0))))  # fmt: skip

    with use_threads("cli") as choice:
        drive(pretrain_job_steps(request), mark)
    total = time.perf_counter() - started
    steps = [(t, step, made) for t, phase, step, made in marks if phase == "pretrain"]
    first = steps[0][0]
    fisher = next((t for t, phase, _s, _m in marks if phase == "fisher"), total)
    last_t, last_step, made = steps[-1]
    row = {"threads": choice.threads, "steps": last_step, "batch": config.batch_size, "samples_made": made,
           "first_step_s": round(first, 2), "training_s": round(last_t - first, 2), "fisher_and_save_s":
           round(total - last_t, 2), "to_fisher_s": round(fisher, 2), "total_s": round(total, 2)}  # fmt: skip
    if last_step > 1:
        row["steps_per_s"] = round((last_step - 1) / (last_t - first), 3)
        row["train_samples_per_s"] = round(row["steps_per_s"] * config.batch_size, 2)
        row["samples_made_per_s"] = round(made / last_t, 2)
        half = next(s for s in steps if s[1] >= last_step // 2)
        row["second_half_steps_per_s"] = round((last_step - half[1]) / (last_t - half[0]), 3)
    return row


def archive(ref: str, folder: Path) -> Path:
    """``git archive REF`` of this repository, unpacked under ``folder``."""
    target = folder / "before"
    target.mkdir()
    blob = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(blob)) as tar:
        tar.extractall(target, filter="data")
    return target


def markdown(results: dict) -> str:
    s1, rc = results["steps_1"], results["recipe"]
    lines = [
        "| measure | now | before |",
        "|---|---|---|",
        f"| `pretrain --steps 1`: command wall time (s) | {s1['command'].get('wall_s', s1['command'].get('error'))} | "
        f"{results.get('before', {}).get('steps_1', {}).get('wall_s', '-')} |",
        f"| `pretrain --steps 1`: first step / Fisher starts / done, in process (s) | "
        f"{s1['in_process']['first_step_s']} / {s1['in_process']['to_fisher_s']} / {s1['in_process']['total_s']} "
        f"({s1['in_process']['samples_made']} samples made) | |",
        f"| recipe, {rc['in_process']['steps']} steps: command wall time (s) | "
        f"{rc['command'].get('wall_s', rc['command'].get('error'))} | "
        f"{results.get('before', {}).get('recipe', {}).get('wall_s', '-')} |",
    ]
    r = rc["in_process"]
    lines += [
        f"| recipe: first step (s) | {r['first_step_s']} | |",
        f"| recipe: steps/s, whole run / second half | {r.get('steps_per_s')} / {r.get('second_half_steps_per_s')} | |",
        f"| recipe: training samples/s (batch {r['batch']}) | {r.get('train_samples_per_s')} | |",
        f"| recipe: distinct samples made, per s | {r['samples_made']}, {r.get('samples_made_per_s')} | |",
        f"| recipe: Fisher and checkpoint (s) | {r['fisher_and_save_s']} | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe-steps", type=int, default=100)
    parser.add_argument("--before", help="a git ref of the code before (e.g. HEAD before the change): run it too")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pretrain_start")
    args = parser.parse_args(argv)
    recipe = [*RECIPE, "--steps", str(args.recipe_steps)]
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "recipe": {}, "load_before": machine_load()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("pretrain --steps 1 ...", file=sys.stderr, flush=True)
        results["steps_1"] = {"command": command_wall(["--steps", "1"], folder / "a.safetensors"),
                              "in_process": in_process(["--steps", "1"], folder / "b.safetensors")}  # fmt: skip
        print(f"the recipe, {args.recipe_steps} steps ...", file=sys.stderr, flush=True)
        results["recipe"] = {"args": recipe, "command": command_wall(recipe, folder / "c.safetensors"),
                             "in_process": in_process(recipe, folder / "d.safetensors")}  # fmt: skip
        if args.before:
            print(f"the same from {args.before} ...", file=sys.stderr, flush=True)
            root = archive(args.before, folder)
            results["before"] = {"ref": args.before,
                                 "steps_1": command_wall(["--steps", "1"], folder / "e.safetensors", root),
                                 "recipe": command_wall(recipe, folder / "f.safetensors", root)}  # fmt: skip
    results["load_after"] = machine_load()
    text = markdown(results)
    print(text)
    print(json.dumps(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    note = f"Machine load before {results['load_before']}, after {results['load_after']}."
    args.out.with_suffix(".md").write_text(f"# Pretraining start-up and throughput\n\n{note}\n\n{text}\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
