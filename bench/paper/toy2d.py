"""Toy 2D: a sinusoidal decision boundary. Dataset A dense and clean; dataset B sparse, from a
shifted region, with a shifted boundary and label noise. Scored on a dense grid of B's true task.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_dropsembles.core.config.configs import (
    FinetuneConfig,  # noqa: E402
    ModelConfig,  # noqa: E402
)

from .common import (  # noqa: E402
    LABELS,
    METHOD_ORDER,
    Reliability,
    cost_fields,
    mean_rows,
    pretrained_count,
    score_probabilities,
    table,
)
from .toy_data import sinusoid_dataset  # noqa: E402
from .toy_models import Pretrain2DConfig, describe, fit_2d, pretrain_toy  # noqa: E402

HALF = 3.0  # the data live in [-3, 3]^2; the network sees x / 6 in [-0.5, 0.5]^2
METRICS = ("accuracy", "ece", "nll", "brier", "auroc")
COST = ("total_gflop", "total_wall_s")


def _norm(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float32) / (2 * HALF)).astype(np.float32)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-HALF, HALF, n, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis)
    return np.stack([xx.ravel(), yy.ravel()], 1), axis


def run(settings: dict, figures: Path) -> dict:
    started = time.perf_counter()
    s = settings
    model = ModelConfig(feature_channels=1, hidden=s["hidden"], blocks=s["blocks"], dropout=s["dropout"],
                        point_features=0)
    train = Pretrain2DConfig(steps=s["pretrain_steps"], batch_points=256, lr=3e-3, fisher_points=1024)
    finetune = FinetuneConfig(steps=s["finetune_steps"], lr=s["lr"], points_per_step=256, ewc_lambda=0.0,
                              holdout=0.1, eval_every=10)
    rng = np.random.default_rng(1)
    xa, ya = sinusoid_dataset(s["n_a"], rng)
    k = max(s["sizes"] + [s["members"]])
    priors = [pretrain_toy(model, _norm(xa), ya, Pretrain2DConfig(**{**train.__dict__, "seed": i})) for i in range(k)]
    pre_flops = float(np.mean([p.flops for p in priors]))
    pre_wall = float(np.mean([p.wall_s for p in priors]))
    models = [p.model for p in priors]
    grid_x, axis = _grid(s["grid"])
    shift = s["shift"]

    def task(rep: int, shifted: bool):
        r = np.random.default_rng(100 + rep)
        if shifted:
            xb, yb = sinusoid_dataset(s["n_b"], r, shift=shift, noise=s["noise"], region=((-1.0, HALF), (-HALF, HALF)))
            truth = grid_x[:, 1] > np.sin(grid_x[:, 0]) + shift
        else:
            xb, yb = sinusoid_dataset(s["n_b"], r)
            truth = grid_x[:, 1] > np.sin(grid_x[:, 0])
        return xb, yb, truth

    cache: dict = {}

    def evaluate(method: str, members: int, lam: float, shifted: bool, reliability: Reliability | None = None,
                 keep: dict | None = None) -> dict:
        key = (method, 1 if method == "single" else members, lam, shifted)
        if key in cache and reliability is None and keep is None:
            return dict(cache[key])
        rows = []
        for rep in range(s["repeats"]):
            xb, yb, truth = task(rep, shifted)
            cfg = FinetuneConfig(**{**finetune.__dict__, "ewc_lambda": lam})
            fitted = fit_2d(method, members, models, model, _norm(xb), yb, cfg, seed=rep)
            probs = fitted.predict(_norm(grid_x))
            row = score_probabilities(probs, truth)
            row.update(cost_fields(pretrained_count(method, members), pre_flops, pre_wall, fitted.finetune_flops,
                                   fitted.finetune_wall_s, fitted.predict_flops(grid_x.shape[0])))
            rows.append(row)
            if reliability is not None:
                reliability.add(LABELS[method] + (" +EWC" if lam else ""), probs.mean(0), truth)
            if keep is not None and rep == 0:
                keep[(method, lam)] = (probs, xb, yb, truth)
        out = mean_rows(rows, rows[0].keys())
        cache[key] = {"method": LABELS[method], "ewc": lam, "M": key[1], **out}
        return dict(cache[key])

    reliability = Reliability()
    kept: dict = {}
    main = [evaluate(m, s["members"], lam, True, reliability, kept) for m in METHOD_ORDER for lam in (0.0, s["ewc"])]
    no_shift = [evaluate(m, s["members"], s["ewc"], False) for m in METHOD_ORDER]
    sizes = [evaluate(m, size, s["ewc"], True) for m in ("mc_dropout", "deep_ensemble", "dropsembles")
             for size in s["sizes"]]
    sizes.append(next(r for r in main if r["method"] == "single" and r["ewc"] == s["ewc"]))
    ewc = [evaluate(m, s["members"], lam, True) for m in ("deep_ensemble", "dropsembles") for lam in s["ewc_sweep"]]

    figure_paths = [_figure(kept, s, axis, figures / "toy2d_methods.png")]
    cols = ["method", "ewc", "M", *METRICS, "auroc_entropy", "pretrained_models", "total_gflop", "total_wall_s"]
    tables = [
        table("toy2d_main", cols, main, 1,
              f"Shifted sparse B ({s['n_b']} points, x0 in [-1, 3], boundary +{shift}, {s['noise']:.0%} label noise); "
              f"scored on a {s['grid']}x{s['grid']} grid of B's noise-free task over [-3, 3]^2; mean of "
              f"{s['repeats']} draws of B."),
        table("toy2d_no_shift", ["method", "ewc", "M", *METRICS, "total_gflop"], no_shift, 1,
              "No distribution shift: B drawn like A (same boundary and region, no noise), only sparser."),
        table("toy2d_ensemble_size", ["method", "M", *METRICS, "total_gflop", "total_wall_s"], sizes, 1,
              f"Ensemble size, EWC {s['ewc']}."),
        table("toy2d_ewc", ["method", "ewc", *METRICS], ewc, 1, f"EWC strength, M={s['members']}."),
    ]
    return {
        "tables": tables,
        "reliability": reliability.to_json(),
        "scatter": [{"method": r["method"], "M": r["M"], "gflop": r["total_gflop"], "ece": r["ece"],
                     "quality": r["accuracy"]} for r in sizes],
        "quality_name": "accuracy",
        "figures": figure_paths,
        "config": {"toy": describe(model, train, finetune), "settings": dict(s),
                   "pretrain_gflop_per_model": pre_flops / 1e9, "pretrain_wall_s_per_model": pre_wall},
        "wall_s": time.perf_counter() - started,
    }


def _figure(kept: dict, s: dict, axis: np.ndarray, path: Path) -> str:
    n = axis.size
    fig, axes = plt.subplots(2, 4, figsize=(14, 6.6), constrained_layout=True)
    for col, method in enumerate(METHOD_ORDER):
        probs, xb, yb, truth = kept[(method, s["ewc"])]
        mean = probs.mean(0).reshape(n, n)
        unc = (probs.var(0) if probs.shape[0] > 1 else -(mean * np.log(mean + 1e-9)
                                                         + (1 - mean) * np.log(1 - mean + 1e-9)).ravel())
        ext = (-HALF, HALF, -HALF, HALF)
        ax = axes[0, col]
        ax.imshow(mean, origin="lower", extent=ext, cmap="RdBu_r", vmin=0, vmax=1)
        ax.contour(axis, axis, mean, levels=[0.5], colors="k")
        ax.plot(axis, np.sin(axis) + s["shift"], "g--", lw=1)
        ax.scatter(xb[:, 0], xb[:, 1], c=yb, cmap="bwr", s=8, edgecolors="k", linewidths=0.3)
        ax.set_title(f"{LABELS[method]}: mean p (EWC {s['ewc']})")
        ax2 = axes[1, col]
        im = ax2.imshow(np.asarray(unc).reshape(n, n), origin="lower", extent=ext, cmap="inferno")
        ax2.plot(axis, np.sin(axis) + s["shift"], "g--", lw=1)
        ax2.set_title("variance" if probs.shape[0] > 1 else "entropy (M=1)")
        fig.colorbar(im, ax=ax2, shrink=0.8)
    fig.suptitle("Toy 2D: decision boundary (black), true B boundary (green dashed), B points; uncertainty below")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)
