"""How good can a slice suggestion be? One-step and greedy oracles beside the suggestion's scores.

The cases and the start are those of ``bench/annotate_next.py`` (every 4th slice drawn along axis 2).

- **One step.** From the start, every slice that could be drawn (within the object, plus one) is drawn
  in turn and the result refined; its Dice gain is the truth of what that slice is worth. Each rule
  picks one slice and the table gives the mean gain of its picks, the regret to the best slice and the
  rank correlation of its score with the gains. Rules: the suggestion's scores (core/jobs/suggest), the
  largest gap, and two bench-only terms: ``interpolation`` (the annotations alone: the voxels that
  differ between the annotated neighbours, spread like a Brownian bridge pinned at both) and
  ``error + interpolation``; ``true error`` uses the truth's per-slice errors (an oracle on errors,
  not on gains).
- **Greedy oracle** (procedural cases by default; ``--greedy-real`` adds the real ones, slow): each
  round tries every candidate and keeps the best Dice. Its reach of the every-2nd-slice Dice bounds
  what any one-slice-at-a-time rule can do with this refine.

    python -m bench.annotate_oracle            # ~20 min on one busy core
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.annotate_next import (
    AXIS,
    CONFIG,
    START,
    VERTEBRAE,
    annotated_config,
    candidates,
    drawn,
    largest_gap,
    load_truth,
    object_slices,
    procedural_truth,
    run_case,
    scores,
    slices_to_reach,
    start_slices,
    suggested,
)
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.jobs.refine import refine
from napari_dropsembles.core.jobs.suggest import SliceErrors, _reduction
from napari_dropsembles.core.networks.checkpoint import load_prior

MODEL_SCORES = ("error", "variance", "mutual_information", "surface")


def interpolation_error(mask: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per slice of AXIS: voxels differing between the annotated neighbours ``a < j < b``, times
    ``sqrt((j - a)(b - j)) / (b - a)`` (a Brownian bridge's displacement); the grid's ends count as empty."""
    mask = np.moveaxis(mask, AXIS, 0)
    count = mask.shape[0]
    bounds = np.concatenate(([-1], np.unique(known), [count]))
    empty = np.zeros(mask.shape[1:], dtype=bool)
    out = np.zeros(count)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b - a > 1:
            differ = np.count_nonzero((mask[a] if a >= 0 else empty) != (mask[b] if b < count else empty))
            j = np.arange(a + 1, b)
            out[a + 1 : b] = differ * np.sqrt((j - a) * (b - j)) / (b - a)
    return out


def one_step(prior, name: str, truth) -> dict:
    """Every candidate of the start drawn in turn: its Dice gain and each rule's score of it."""
    first = set(start_slices(truth, START))
    start = reconstruct(drawn(truth, first), prior, CONFIG, target=(truth.affine, truth.shape))
    dice0 = scores(start, truth)["dice"]
    obs, count = start.observation, truth.shape[AXIS]
    known = start.reading.annotated(count)
    objects = object_slices(truth)
    slices = [g for g in candidates(start) if objects[0] - 1 <= g <= objects[-1] + 1]
    per_slice = {s: SliceErrors.of(start, s).errors for s in MODEL_SCORES}
    per_slice["interpolation"] = interpolation_error(np.asarray(obs.data) > 0, known)
    per_slice["error + interpolation"] = per_slice["error"] + per_slice["interpolation"]
    wrong = (np.asarray(start.maps.mean.data) >= start.config.threshold) != (np.asarray(truth.data) > 0)
    per_slice["true error"] = wrong.sum(axis=tuple(a for a in range(3) if a != AXIS)).astype(float)
    rows = []
    for g in slices:
        refined = refine(start, drawn(truth, first | {g}), annotated_config({g}, truth))
        reduction = _reduction(count, known, g)
        rows.append(
            {
                "slice": g,
                "gain": scores(refined, truth)["dice"] - dice0,
                **{k: float(v @ reduction) for k, v in per_slice.items()},
            }
        )
    gap = largest_gap(start, first, np.random.default_rng(0))
    return {"case": name, "dice0": dice0, "largest_gap": gap, "rows": rows}


def rule_table(cases: list[dict]) -> dict[str, dict[str, float]]:
    """Mean gain of each rule's pick, its regret to the best slice, and its rank correlation with the gains."""
    rules = [*MODEL_SCORES, "interpolation", "error + interpolation", "true error"]
    out = {}
    for rule in [*rules, "largest gap", "best (oracle)"]:
        gains, regrets, rhos = [], [], []
        for case in cases:
            rows, best = case["rows"], max(r["gain"] for r in case["rows"])
            if rule == "largest gap":
                pick = next(r for r in rows if r["slice"] == case["largest_gap"])
            elif rule == "best (oracle)":
                pick = max(rows, key=lambda r: r["gain"])
            else:
                pick = max(rows, key=lambda r: (r[rule], -r["slice"]))
                rhos.append(spearmanr([r[rule] for r in rows], [r["gain"] for r in rows])[0])
            gains.append(pick["gain"])
            regrets.append(best - pick["gain"])
        out[rule] = {"gain": float(np.mean(gains)), "regret": float(np.mean(regrets))}
        if rhos:
            out[rule]["rho"] = float(np.nanmean(rhos))
    return out


def greedy_oracle(truth):
    """A strategy for run_case: each round, the candidate whose drawing gives the best Dice (tried one by one)."""
    added: set[int] = set()
    objects = object_slices(truth)

    def choose(result, annotated: set[int], rng) -> int | None:
        best, best_dice = None, -1.0
        for g in candidates(result):
            if objects[0] - 1 <= g <= objects[-1] + 1:
                refined = refine(result, drawn(truth, annotated | {g}), annotated_config(added | {g}, truth))
                dice = scores(refined, truth)["dice"]
                if dice > best_dice:
                    best, best_dice = g, dice
        if best is not None:
            added.add(best)
        return best

    return choose


def markdown(groups: dict, greedy: dict, seconds: float) -> str:
    lines = [
        "# How good can a slice suggestion be? One-step and greedy oracles",
        "",
        f"Generated by `python -m bench.annotate_oracle` ({seconds / 60:.1f} min on {platform.machine()}, "
        f"{torch.get_num_threads()} torch thread, a machine shared with other jobs). Start: every 4th slice along "
        "axis 2, as docs/ANNOTATE.md. One step: every slice that could be drawn is drawn in turn and the result "
        "refined; a rule's `gain` is the mean Dice gain of the slice it picks, `regret` the mean loss to the best "
        "slice, `rho` the mean rank correlation (Spearman) of its score with the gains over the candidates.",
        "",
    ]
    for group, table in groups.items():
        lines += [f"## One step: {group}", "", "| rule | gain | regret | rho |", "|---|---|---|---|"]
        for rule, row in table.items():
            rho = f"{row['rho']:.2f}" if "rho" in row else ""
            lines.append(f"| {rule} | {row['gain']:+.4f} | {row['regret']:.4f} | {rho} |")
        lines.append("")
    if greedy:
        lines += [
            "## Greedy oracle: added slices to reach the every-2nd-slice Dice",
            "",
            "| group | greedy oracle | suggest | largest gap | oracle fewer than the gap |",
            "|---|---|---|---|---|",
        ]
        for group, row in greedy.items():
            lines.append(
                f"| {group} ({row['cases']} cases) | {row['oracle']:.2f} | {row['suggest']:.2f} | "
                f"{row['largest gap']:.2f} | {100 * (1 - row['oracle'] / row['largest gap']):.0f}% |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(VERTEBRAE), help="real vertebrae")
    parser.add_argument("--procedural", type=int, default=10)
    parser.add_argument("--procedural-mm", type=float, default=2.5)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the greedy oracle")
    parser.add_argument("--greedy-real", action="store_true", help="the greedy oracle on the real cases too (slow)")
    parser.add_argument("--out", type=Path, default=Path("docs/annotate_oracle"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prior = load_prior(None)
    started = time.perf_counter()
    truths = {name: load_truth(name) for name in args.cases}
    procedural = {
        f"procedural {10000 + i}": procedural_truth(10000 + i, args.procedural_mm) for i in range(args.procedural)
    }
    steps = {"real vertebrae": [], "held-out procedural": []}
    for group, items in (("real vertebrae", truths), ("held-out procedural", procedural)):
        for name, truth in items.items():
            steps[group].append(one_step(prior, name, truth))
            print(json.dumps({"one step": name, "seconds": round(time.perf_counter() - started)}), flush=True)
    groups = {g: rule_table(c) for g, c in steps.items() if c}
    greedy, curves = {}, {}
    for group, items in (("held-out procedural", procedural), ("real vertebrae", truths if args.greedy_real else {})):
        reach = {"oracle": [], "suggest": [], "largest gap": []}
        for name, truth in items.items():
            strategies = {"oracle": greedy_oracle(truth), "suggest": suggested("error"), "largest gap": largest_gap}
            row = run_case(prior, name, truth, args.rounds, strategies)
            curves[name] = {k: [p["dice"] for p in c] for k, c in row["curves"].items()}
            for k, c in row["curves"].items():
                reach[k].append(slices_to_reach(c, row["every2"]["dice"], args.rounds))
            print(json.dumps({"greedy": name, "seconds": round(time.perf_counter() - started)}), flush=True)
        if items:
            greedy[group] = {"cases": len(items), **{k: float(np.mean(v)) for k, v in reach.items()}}
    seconds = time.perf_counter() - started
    text = markdown(groups, greedy, seconds)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"groups": groups, "greedy": greedy, "one_step": steps, "greedy_curves": curves, "seconds": seconds}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    args.out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
