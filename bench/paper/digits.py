"""Digits: 2D implicit occupancy of scikit-learn's bundled handwritten digits (8x8, upsampled).

Pretraining (dataset A): complete digits as targets; the encoder sees the complete digit or a
randomly occluded / sparsely sampled one (a prior must complete partial inputs). Fine-tuning
(dataset B): one held-out digit's corrupted observation, labels = its observed pixels. Erosion is
never seen in pretraining (a systematic shift). Scored against the complete digit's pixels.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import interpolate, ndimage  # noqa: E402

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
from .toy_data import corrupt_digit, digits_shapes  # noqa: E402
from .toy_models import (  # noqa: E402
    Pretrain2DConfig,
    describe,
    fit_2d,
    pixel_points,
    pretrain_digits,
)

THRESHOLD = 0.5
CORRUPTIONS = ("occlude", "erode", "sparse")
METRICS = ("dice", "hd95_px", "ece", "nll", "brier", "auroc")


def encoder_input(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[2, H, W]: binarised observed values (0 where unknown), observed mask."""
    return np.stack([(values >= THRESHOLD) & mask, mask]).astype(np.float32)


def pretrain_input(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random()
    if u < 0.4:
        return encoder_input(image, np.ones(image.shape, bool))
    values, mask = corrupt_digit(image, rng, "sparse" if u < 0.7 else "occlude")
    return encoder_input(values, mask)


def baselines(values: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Foreground probabilities of nearest / linear / shape-based filling of the observed pixels."""
    labels = ((values >= THRESHOLD) & mask).astype(np.float32)
    h, w = labels.shape
    if mask.all():
        nearest = linear = labels
    else:
        _, (iy, ix) = ndimage.distance_transform_edt(~mask, return_indices=True)
        nearest = labels[iy, ix]
        known = np.argwhere(mask)
        grid = np.argwhere(np.ones((h, w), bool))
        linear = interpolate.griddata(known, labels[mask], grid, method="linear", fill_value=0.0).reshape(h, w)
    # shape-based: signed distance (px) of the nearest-filled mask, interpolated at the pixel, logistic
    inside = nearest >= 0.5
    sdf = np.where(inside, -ndimage.distance_transform_edt(inside) + 0.5, ndimage.distance_transform_edt(~inside) - 0.5)
    shape_based = 1.0 / (1.0 + np.exp(np.clip(sdf, -60, 60)))
    return {"nearest": nearest.astype(np.float32), "linear": np.clip(linear, 0, 1).astype(np.float32),
            "shape_based": shape_based.astype(np.float32)}


def run(settings: dict, figures: Path) -> dict:
    started = time.perf_counter()
    s = settings
    images, _ = digits_shapes(s["upsample"])
    n_train = int(len(images) * 0.8)
    train_images, test_images = images[:n_train], images[n_train:]
    if s["train_images"]:
        train_images = train_images[: s["train_images"]]
    h, w = images.shape[1:]
    model = ModelConfig(encoder_channels=(s["channels"], 2 * s["channels"], 2 * s["channels"]),
                        feature_channels=s["features"], hidden=s["hidden"], blocks=s["blocks"], dropout=s["dropout"],
                        point_features=0)
    train = Pretrain2DConfig(steps=s["pretrain_steps"], lr=2e-3, batch_points=s["batch_points"],
                             batch_images=s["batch_images"], fisher_points=2048)
    finetune = FinetuneConfig(steps=s["finetune_steps"], lr=s["lr"], points_per_step=512, ewc_lambda=0.0,
                              holdout=0.1, eval_every=10)
    k = max(s["sizes"] + [s["members"]])
    priors = [pretrain_digits(model, train_images, pretrain_input, Pretrain2DConfig(**{**train.__dict__, "seed": i}))
              for i in range(k)]
    pre_flops = float(np.mean([p.flops for p in priors]))
    pre_wall = float(np.mean([p.wall_s for p in priors]))
    models = [p.model for p in priors]
    pix = pixel_points(h, w)

    cases = []
    for i in range(s["cases"]):
        rng = np.random.default_rng(500 + i)
        image = test_images[(i * 7) % len(test_images)]
        for kind in CORRUPTIONS:
            values, mask = corrupt_digit(image, rng, kind)
            cases.append({"id": len(cases), "index": i, "kind": kind, "image": image, "values": values, "mask": mask})

    cache: dict = {}

    def evaluate(case: dict, method: str, members: int, lam: float) -> tuple[dict, np.ndarray]:
        key = (case["id"], method, 1 if method == "single" else members, lam)
        if key not in cache:
            cache[key] = _evaluate(case, method, members, lam)
        return cache[key]

    def _evaluate(case: dict, method: str, members: int, lam: float) -> tuple[dict, np.ndarray]:
        values, mask = case["values"], case["mask"]
        observed = mask.ravel()
        labels = (values.ravel() >= THRESHOLD)[observed].astype(np.float32)
        cfg = FinetuneConfig(**{**finetune.__dict__, "ewc_lambda": lam})
        fitted = fit_2d(method, members, models, model, pix[observed], labels, cfg,
                        encoder_input=encoder_input(values, mask), seed=case["index"])
        probs = fitted.predict(pix)
        gt = case["image"].ravel() >= THRESHOLD
        row = score_probabilities(probs, gt, image_shape=(h, w))
        row.update(cost_fields(pretrained_count(method, members), pre_flops, pre_wall, fitted.finetune_flops,
                               fitted.finetune_wall_s, fitted.predict_flops(pix.shape[0])))
        return row, probs

    reliability = Reliability()
    per_case: dict = {}
    kept: dict = {}
    for c, case in enumerate(cases):
        for method in METHOD_ORDER:
            for lam in (0.0, s["ewc"]):
                row, probs = evaluate(case, method, s["members"], lam)
                per_case.setdefault((method, lam, case["kind"]), []).append(row)
                reliability.add(LABELS[method] + (" +EWC" if lam else ""), probs.mean(0), case["image"] >= THRESHOLD)
                if lam == s["ewc"] and case["index"] == 0:
                    kept[(c, method)] = probs
        gt = case["image"] >= THRESHOLD
        for name, prob in baselines(case["values"], case["mask"]).items():
            row = score_probabilities(prob.ravel()[None], gt.ravel(), image_shape=(h, w))
            per_case.setdefault((name, None, case["kind"]), []).append(row)

    def summary(method, lam, kinds=CORRUPTIONS, members=None):
        rows = [r for kind in kinds for r in per_case.get((method, lam, kind), [])]
        out = mean_rows(rows, rows[0].keys())
        m = members if members is not None else (1 if method in ("single",) else s["members"])
        label = LABELS.get(method, method + " (interp.)")
        return {"method": label, "ewc": -1.0 if lam is None else lam, "M": m if lam is not None else 0, **out}

    main = [summary(m, lam) for m in METHOD_ORDER for lam in (0.0, s["ewc"])]
    main += [summary(b, None) for b in ("nearest", "linear", "shape_based")]
    for row in main:
        for key in ("pretrained_models", "total_gflop", "total_wall_s"):
            row.setdefault(key, 0.0)
    corruption = []
    for kind in CORRUPTIONS:
        for method in (*METHOD_ORDER, "linear"):
            lam = None if method == "linear" else s["ewc"]
            corruption.append({"corruption": kind, **summary(method, lam, (kind,))})

    # ensemble size and EWC sweeps on a subset of cases (one per corruption of the first digits)
    sweep_cases = [c for c in cases if c["index"] < s["sweep_cases"]]

    def sweep(method, members, lam):
        rows = [evaluate(case, method, members, lam)[0] for case in sweep_cases]
        return {"method": LABELS[method], "M": 1 if method == "single" else members, "ewc": lam,
                **mean_rows(rows, rows[0].keys())}

    sizes = [sweep(m, size, s["ewc"]) for m in ("mc_dropout", "deep_ensemble", "dropsembles") for size in s["sizes"]]
    sizes.append(sweep("single", 1, s["ewc"]))
    ewc = [sweep("dropsembles", s["members"], lam) for lam in s["ewc_sweep"]]
    ewc += [sweep("deep_ensemble", s["members"], lam) for lam in s["ewc_sweep"]]

    figure_paths = [_figure(cases, kept, s, h, w, figures / "digits_reconstructions.png")]
    note = (f"{s['cases']} held-out digits x {len(CORRUPTIONS)} corruptions ({', '.join(CORRUPTIONS)}), "
            f"{h}x{w} pixels; Dice/HD95 (pixels) of mean >= 0.5 vs the complete digit; ECE/NLL/Brier/AUROC over "
            "all pixels; HD95 of an empty prediction = the image diagonal. Interpolation baselines: ewc/M = -1/0 (not "
            "applicable).")
    tables = [
        table("digits_main", ["method", "ewc", "M", *METRICS, "auroc_entropy", "pretrained_models", "total_gflop",
                              "total_wall_s"], main, 1, note),
        table("digits_corruption", ["corruption", "method", *METRICS], corruption, 2,
              f"Per corruption type, EWC {s['ewc']}, M={s['members']}."),
        table("digits_ensemble_size", ["method", "M", *METRICS, "total_gflop", "total_wall_s"], sizes, 1,
              f"Ensemble size on {len(sweep_cases)} cases, EWC {s['ewc']}."),
        table("digits_ewc", ["method", "ewc", *METRICS], ewc, 1,
              f"EWC strength on {len(sweep_cases)} cases, M={s['members']}."),
    ]
    return {
        "tables": tables,
        "reliability": reliability.to_json(),
        "scatter": [{"method": r["method"], "M": r["M"], "gflop": r["total_gflop"], "ece": r["ece"],
                     "quality": r["dice"]} for r in sizes],
        "quality_name": "Dice",
        "figures": figure_paths,
        "config": {"digits": describe(model, train, finetune), "settings": dict(s),
                   "pretrain_images": len(train_images), "test_images": len(test_images),
                   "pretrain_gflop_per_model": pre_flops / 1e9, "pretrain_wall_s_per_model": pre_wall},
        "wall_s": time.perf_counter() - started,
    }


def _figure(cases: list[dict], kept: dict, s: dict, h: int, w: int, path: Path) -> str:
    shown = [c for c in range(len(cases)) if cases[c]["index"] == 0]
    cols = 2 + 2 * len(METHOD_ORDER)
    fig, axes = plt.subplots(len(shown), cols, figsize=(1.6 * cols, 1.8 * len(shown)), constrained_layout=True)
    axes = np.atleast_2d(axes)
    for r, c in enumerate(shown):
        case = cases[c]
        obs = np.where(case["mask"], (case["values"] >= THRESHOLD).astype(float), 0.5)
        panels = [(case["image"] >= THRESHOLD, "ground truth", "gray", 1),
                  (obs, f"observed ({case['kind']})", "gray", 1)]
        top = max(1e-4, max(float(kept[(c, m)].var(0).max()) for m in METHOD_ORDER))  # one scale per row
        for method in METHOD_ORDER:
            probs = kept[(c, method)]
            panels.append((probs.mean(0).reshape(h, w), f"{LABELS[method]} mean", "viridis", 1))
            panels.append((probs.var(0).reshape(h, w), f"variance (max {top:.2g})", "inferno", top))
        for ax, (img, title, cmap, vmax) in zip(axes[r], panels, strict=True):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"Digits: reconstructions (mean) and member variance, M={s['members']}, EWC {s['ewc']}", fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)
