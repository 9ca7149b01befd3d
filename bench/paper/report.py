"""Figures (reliability diagrams, cost scatters) and docs/RESULTS.md, generated from results.json."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

EXPERIMENTS = ("toy2d", "digits", "vertebrae")
TITLES = {"toy2d": "Toy 2D (sinusoidal boundary)", "digits": "Digits (2D implicit occupancy)",
          "vertebrae": "Vertebrae (3D, product pipeline)"}
READING = {"quick": Path(__file__).with_name("reading.md"), "full": Path(__file__).with_name("reading_full.md")}


def reliability_figure(name: str, result: dict, path: Path) -> str:
    curves = result["reliability"]
    keys = list(curves)
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), constrained_layout=True)
    axes = np.atleast_2d(axes)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.ravel(), keys, strict=False):
        c = curves[key]
        count = np.array(c["count"], float)
        used = count > 0
        centres = (np.arange(len(count)) + 0.5) / len(count)
        freq = np.array(c["frequency"])
        ax.bar(centres[used], freq[used], width=1 / len(count), edgecolor="k", alpha=0.7, label="observed frequency")
        ax.plot(np.array(c["mean_prob"])[used], freq[used], "r.", ms=4, label="mean p in bin")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("predicted p", fontsize=8)
    axes.ravel()[0].legend(fontsize=6)
    region = result.get("reliability_region", "all evaluation points")
    fig.suptitle(f"{TITLES[name]}: reliability diagrams (15 bins, pooled over cases; {region})", fontsize=10)
    fig.savefig(path, dpi=75)
    plt.close(fig)
    return str(path)


def cost_figure(name: str, result: dict, path: Path) -> str:
    points = result["scatter"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    markers = {"single": "s", "MC dropout": "^", "deep ensemble": "o", "Dropsembles": "D"}
    for ax, key, label in ((axes[0], "ece", result.get("ece_name", "ECE")),
                           (axes[1], "quality", result.get("quality_name", "quality"))):
        for method in markers:
            sel = [p for p in points if p["method"] == method]
            if not sel:
                continue
            x = [p["gflop"] for p in sel]
            y = [p[key] for p in sel]
            ax.plot(x, y, marker=markers[method], ls="-" if len(sel) > 1 else "", label=method)
            for p in sel:
                ax.annotate(f"M={p['M']}", (p["gflop"], p[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("total compute: pretraining + fine-tuning (GFLOP, log)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{TITLES[name]}: cost vs calibration and cost vs quality (one point per method and M)")
    fig.savefig(path, dpi=75)
    plt.close(fig)
    return str(path)


def format_cell(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e6):
        return f"{int(value)}" if not isinstance(value, float) or abs(value) >= 1 or value == 0 else f"{value:.4g}"
    return f"{value:.4g}"


def markdown_table(tab: dict) -> list[str]:
    lines = ["| " + " | ".join(tab["columns"]) + " |", "|" + "---|" * len(tab["columns"])]
    for row in tab["rows"]:
        lines.append("| " + " | ".join(format_cell(v) for v in row) + " |")
    return lines


def headline(results: dict) -> dict:
    """Dropsembles vs deep ensemble at each M of the ensemble-size sweep, per experiment."""
    out = {}
    for name in EXPERIMENTS:
        if name not in results["experiments"]:
            continue
        exp = results["experiments"][name]
        tab = next(t for t in exp["tables"] if t["name"].endswith("ensemble_size"))
        cols = tab["columns"]
        rows = [dict(zip(cols, r, strict=True)) for r in tab["rows"]]
        # at the main M, take the main table (all cases, EWC on) instead of the sweep's subset
        main = next(t for t in exp["tables"] if t["name"].endswith("_main"))
        default_ewc = exp["config"]["settings"]["ewc"]
        main_rows = [dict(zip(main["columns"], r, strict=True)) for r in main["rows"]]
        ensembles = ("Dropsembles", "deep ensemble")
        main_rows = [r for r in main_rows if r["ewc"] == default_ewc and r["method"] in ensembles]
        rows = [r for r in rows if not any(m["M"] == r["M"] and m["method"] == r["method"] for m in main_rows)]
        rows += main_rows
        quality = "accuracy" if "accuracy" in cols else "dice"
        per_m = []
        for m in sorted({r["M"] for r in rows if r["method"] == "Dropsembles"}):
            d = next(r for r in rows if r["method"] == "Dropsembles" and r["M"] == m)
            e = next((r for r in rows if r["method"] == "deep ensemble" and r["M"] == m), None)
            if e is None:
                continue
            ece_key = "ece_band" if "ece_band" in cols else "ece"
            auroc_key = "auroc_band" if "auroc_band" in cols else "auroc"
            per_m.append({
                "M": m, "quality": quality, "source": "main table" if "pretrained_models" in d else "M sweep",
                "dropsembles_quality": d[quality], "deep_ensemble_quality": e[quality],
                "ece": ece_key, "dropsembles_ece": d[ece_key], "deep_ensemble_ece": e[ece_key],
                "auroc": auroc_key, "dropsembles_auroc": d[auroc_key], "deep_ensemble_auroc": e[auroc_key],
                "flop_ratio": d["total_gflop"] / e["total_gflop"],
                "wall_ratio": d["total_wall_s"] / e["total_wall_s"],
            })
        out[name] = per_m
    return out


def headline_table(head: dict) -> dict:
    rows = []
    for name, per_m in head.items():
        for h in per_m:
            rows.append([name, f'{h["quality"]} / {h["ece"]} / {h["auroc"]} ({h["source"]})', h["M"],
                         h["dropsembles_quality"], h["deep_ensemble_quality"], h["dropsembles_ece"],
                         h["deep_ensemble_ece"], h["dropsembles_auroc"], h["deep_ensemble_auroc"], h["flop_ratio"],
                         h["wall_ratio"]])
    columns = ["experiment", "metrics", "M", "DS quality", "DE quality", "DS ECE", "DE ECE", "DS AUROC", "DE AUROC",
               "FLOP ratio DS/DE", "wall ratio DS/DE"]
    return {"name": "headline", "columns": columns, "labels": 2, "rows": rows,
            "note": "DS = Dropsembles, DE = deep ensemble, same M, same architecture and pretraining steps per "
                    "network, EWC on (the experiment's default lambda); ratio = total compute (pretraining + "
                    "fine-tuning) of DS / DE. 'main table' rows average all cases of the experiment, 'M sweep' rows "
                    "the sweep's subset of cases (see each experiment's tables)."}


def write_markdown(results: dict, path: Path, docs: Path) -> str:
    lines = [
        "# Dropsembles vs deep ensembles: the paper's three experiments, reproduced",
        "",
        "Generated by `bench/paper` from `docs/results.json`; every number below is computed by the run, "
        "none typed by hand.",
        "",
        f"- Command: `{results['command']}`",
        f"- Mode: `{results['mode']}`; wall time {results['wall_time_s']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in results['experiment_wall_s'].items())}); "
        f"{results['machine']}; run finished {results['finished']}.",
        "- Methods: single model, MC dropout, deep ensemble, Dropsembles; each with EWC lambda 0 and the "
        "experiment's default lambda. M is the ensemble size (members or dropout samples).",
        "- Cost: FLOPs = 2 x multiply-accumulates of conv and linear layers (forward hooks on the encoder; "
        "decoder per point and member `(3+k)h + blocks(Ch + 2h^2) + h`); a training step counts 3x a forward pass. "
        "Pretraining = steps x batch (encoder + points x decoder) + Fisher; fine-tuning = encoder once per source "
        "network + steps x batch x trained members x decoder + held-out checks; `total` = pretraining of every "
        "network the method needs (deep ensemble: M, others: 1) + fine-tuning. Prediction FLOPs are in "
        "results.json (`predict_gflop`), not in `total`. Wall times: measured per network (pretraining, mean) and "
        "per fine-tuning, on the machine above, single torch thread.",
        "",
    ]
    head = headline_table(results["headline"])
    lines += ["## Headline: Dropsembles vs deep ensemble at the same M", "", head["note"], "",
              *markdown_table(head), ""]
    reading = READING.get(results["mode"])
    if reading is not None and reading.is_file():
        lines += ["## Reading", "", reading.read_text().strip(), ""]
    for name in EXPERIMENTS:
        if name not in results["experiments"]:
            continue
        exp = results["experiments"][name]
        lines += [f"## {TITLES[name]}", "", f"Wall time {exp['wall_s']:.0f} s. "
                  f"Pretraining per network: {exp['config']['pretrain_gflop_per_model']:.4g} GFLOP, "
                  f"{exp['config']['pretrain_wall_s_per_model']:.1f} s. Settings: `{exp['config']['settings']}`.", ""]
        for tab in exp["tables"]:
            lines += [f"### {tab['name']}", "", tab["note"], "", *markdown_table(tab), ""]
        for fig in exp["figures"]:
            rel = Path(fig).relative_to(docs) if Path(fig).is_relative_to(docs) else Path(fig)
            lines += [f"![{Path(fig).stem}]({rel.as_posix()})", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text
