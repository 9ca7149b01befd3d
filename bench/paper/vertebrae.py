"""Vertebrae: the procedural vertebra prior fine-tuned on held-out corrupted low-resolution
observations, through the product's own path (``core.pipeline.reconstruct`` + ``core.evaluate``).

Every method gets priors of the same architecture and the same pretraining steps per network,
pretrained here: Dropsembles, MC dropout and single use network 0, a deep ensemble of M uses
networks 0..M-1 (so it pays M pretrainings).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

from napari_dropsembles.core.config.configs import (  # noqa: E402
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,  # noqa: E402
    ReconstructionConfig,
)
from napari_dropsembles.core.data.simulate import simulate_volumes  # noqa: E402
from napari_dropsembles.core.fitting.pretrain import pretrain_steps
from napari_dropsembles.core.jobs.reconstruct import reconstruct  # noqa: E402
from napari_dropsembles.core.networks.model import VoxelEncoder  # noqa: E402
from napari_dropsembles.core.querying.dense import run_to_end  # noqa: E402
from napari_dropsembles.core.scoring.evaluate import score_baselines, score_maps  # noqa: E402
from napari_dropsembles.core.scoring.metrics import surface_band  # noqa: E402

from .common import (  # noqa: E402
    LABELS,
    METHOD_ORDER,
    Reliability,
    cost_fields,
    empty_prediction_hd95,
    mean_rows,
    pretrained_count,
    table,
)
from .toy_models import TRAIN_FACTOR, conv_macs, decoder_macs_per_point  # noqa: E402

METRICS = ("dice", "hd95_mm", "ece", "ece_band", "nll", "brier", "auroc", "auroc_band")
CORRUPTION_TYPES = {
    "thick slices": {},
    "erosion": {"erosion": -1},
    "label noise": {"noise": 0.15},
    "missing slices": {"missing": 0.3},
}


def pretrain_flops_per_model(model: ModelConfig, config: PretrainConfig) -> float:
    """``steps * 3 * (B * encoder + B * P/2 * decoder)`` + Fisher (``3 * points * decoder``), 2 FLOPs per MAC."""
    g = model.grid_size
    enc = conv_macs(VoxelEncoder(model), torch.zeros(1, 2, g, g, g))
    dec = decoder_macs_per_point(model)
    steps = config.steps * TRAIN_FACTOR * config.batch_size * (enc + config.points_per_sample // 2 * dec)
    fisher = config.fisher_samples * (enc + TRAIN_FACTOR * (config.points_per_sample // 4) * dec)
    return 2.0 * (steps + fisher)


def finetune_flops(model: ModelConfig, recon, config: ReconstructionConfig, method: str, members: int) -> float:
    """Encoders (once per source network) + ``S * 3 * batch * M_trained`` decoder passes + held-out checks."""
    g = model.grid_size
    enc = conv_macs(VoxelEncoder(model), torch.zeros(1, 2, g, g, g))
    dec = decoder_macs_per_point(model)
    history = recon.fitted.history
    train_points, hold = int(history["train_points"]), int(history["holdout_points"])
    trained = 1 if method in ("single", "mc_dropout") else members
    sources = members if method == "deep_ensemble" else 1
    tune = config.finetune
    batch = min(tune.points_per_step, train_points)
    evaluations = (tune.steps // 10 + 2) if hold else 0
    return 2.0 * (sources * enc + trained * dec * (TRAIN_FACTOR * tune.steps * batch + evaluations * hold))


def run(settings: dict, figures: Path) -> dict:
    started = time.perf_counter()
    s = settings
    model = ModelConfig(grid_size=s["grid"], encoder_channels=tuple(s["encoder_channels"]),
                        feature_channels=s["features"], hidden=s["hidden"], blocks=s["blocks"], dropout=s["dropout"])
    pre = PretrainConfig(steps=s["pretrain_steps"], batch_size=s["batch_size"], points_per_sample=s["points"],
                         samples=s["samples"], fisher_samples=8, seed=0)
    k = max(s["sizes"] + [s["members"]])
    tick = time.perf_counter()
    prior = run_to_end(pretrain_steps(model, pre, models=k))
    pre_wall = (time.perf_counter() - tick) / k
    pre_flops = pretrain_flops_per_model(model, pre)

    def case(i: int, **overrides):
        factor = s["factors"][i % len(s["factors"])]
        corrupted = i % 2 == 1
        kwargs = {"slice_factor": factor, "erosion": -1 if corrupted else 0, "noise": 0.1 if corrupted else 0.0,
                  "missing": 0.0, "gt_spacing_mm": s["gt_spacing"]}
        kwargs.update(overrides)
        obs, gt, info = simulate_volumes(20000 + i, **kwargs)
        return obs, gt, info["corruption"]

    def recon_config(method: str, members: int, lam: float) -> ReconstructionConfig:
        tune = FinetuneConfig(ewc_lambda=lam, steps=s["finetune_steps"], points_per_step=s["points_per_step"])
        return ReconstructionConfig(method=method, members=members, finetune=tune, device="cpu", seed=0)

    def evaluate(obs, gt, method: str, members: int, lam: float):
        members = 1 if method == "single" else members
        config = recon_config(method, members, lam)
        recon = reconstruct(obs, prior, config, target=(gt.affine, gt.shape))
        row = empty_prediction_hd95(score_maps(recon.maps, gt, recon.fitted.members, config.threshold), gt.shape,
                                    gt.spacing)
        fl = finetune_flops(model, recon, config, method, members)
        predict = 2.0 * recon.maps.queries * decoder_macs_per_point(model)
        row.update(cost_fields(pretrained_count(method, members), pre_flops, pre_wall, fl,
                               recon.timings["finetune"], predict))
        return row, recon

    reliability = Reliability()
    per: dict = {}
    kept = []
    for i in range(s["cases"]):
        obs, gt, corruption = case(i)
        band = surface_band(np.asarray(gt.data) > 0, gt.spacing)
        for method in METHOD_ORDER:
            for lam in (0.0, s["ewc"]):
                row, recon = evaluate(obs, gt, method, s["members"], lam)
                row["slice_factor"] = corruption["slice_factor"]
                per.setdefault((method, lam), []).append(row)
                reliability.add(LABELS[method] + (" +EWC" if lam else ""), recon.maps.mean.data[band],
                                np.asarray(gt.data)[band] > 0)
                if i < s["figure_cases"] and lam == s["ewc"] and method in ("dropsembles", "deep_ensemble"):
                    kept.append((i, method, obs, gt, recon))
        for name, row in score_baselines(obs, gt).items():
            per.setdefault((name, None), []).append(empty_prediction_hd95(row, gt.shape, gt.spacing))

    def summary(method, lam, rows):
        m = 0 if lam is None else (1 if method == "single" else s["members"])
        out = mean_rows(rows, rows[0].keys())
        for key in ("pretrained_models", "pretrain_gflop", "finetune_gflop", "total_gflop", "total_wall_s"):
            out.setdefault(key, 0.0)
        return {"method": LABELS.get(method, method + " (interp.)"), "ewc": -1.0 if lam is None else lam, "M": m,
                **out}

    main = [summary(m, lam, per[(m, lam)]) for m in METHOD_ORDER for lam in (0.0, s["ewc"])]
    main += [summary(b, None, per[(b, None)]) for b in ("nearest", "linear", "shape_based")]

    # ensemble size (M) on the first cases
    sweep_ids = range(min(s["sweep_cases"], s["cases"]))
    sizes = []
    for method in ("mc_dropout", "deep_ensemble", "dropsembles"):
        for size in s["sizes"]:
            if size == s["members"]:
                rows = per[(method, s["ewc"])][: len(sweep_ids)]
            else:
                rows = [evaluate(*case(i)[:2], method, size, s["ewc"])[0] for i in sweep_ids]
            sizes.append({"method": LABELS[method], "M": size, **mean_rows(rows, rows[0].keys())})
    rows = per[("single", s["ewc"])][: len(sweep_ids)]
    sizes.append({"method": "single", "M": 1, **mean_rows(rows, rows[0].keys())})

    # EWC strength (Dropsembles)
    ewc = []
    for lam in s["ewc_sweep"]:
        if lam in (0.0, s["ewc"]):
            rows = per[("dropsembles", lam)][: len(sweep_ids)]
        else:
            rows = [evaluate(*case(i)[:2], "dropsembles", s["members"], lam)[0] for i in sweep_ids]
        ewc.append({"method": "Dropsembles", "ewc": lam, **mean_rows(rows, rows[0].keys())})

    # corruption type vs calibration, at one slice factor
    corruption_rows = []
    for kind, extra in CORRUPTION_TYPES.items():
        overrides = {"slice_factor": s["corruption_factor"], "erosion": 0, "noise": 0.0, "missing": 0.0, **extra}
        cases = [case(100 + j, **overrides)[:2] for j in range(s["corruption_cases"])]
        for method in s["corruption_methods"]:
            rows = [evaluate(obs, gt, method, s["members"], s["ewc"])[0] for obs, gt in cases]
            corruption_rows.append({"corruption": kind, "method": LABELS[method], **mean_rows(rows, rows[0].keys())})
        rows = [empty_prediction_hd95(score_baselines(obs, gt)["linear"], gt.shape, gt.spacing) for obs, gt in cases]
        corruption_rows.append({"corruption": kind, "method": "linear (interp.)", **mean_rows(rows, rows[0].keys())})

    figure_paths = [_figure(kept, figures / "vertebrae_cases.png")]
    note = (f"{s['cases']} held-out procedural vertebrae (seeds 20000+i), slice spacing "
            f"{'/'.join(f'{f:g}' for f in s['factors'])}x the 1 mm in-plane spacing (cycled), odd cases also eroded "
            f"by one voxel + 10% boundary label noise; scored on the {s['gt_spacing']} mm ground-truth grid; "
            "`_band` = within 2 voxels of the true surface; AUROC scores member variance (entropy for M=1); HD95 of an "
            "empty prediction = the grid diagonal. "
            "Interpolation baselines: ewc/M = -1/0 (not applicable), no cost.")
    cols = ["method", "ewc", "M", *METRICS, "pretrained_models", "pretrain_gflop", "finetune_gflop", "total_gflop",
            "total_wall_s"]
    tables = [
        table("vertebrae_main", cols, main, 1, note),
        table("vertebrae_corruption", ["corruption", "method", *METRICS], corruption_rows, 2,
              f"Corruption type at slice spacing {s['corruption_factor']:g}x ({s['corruption_cases']} cases each, "
              f"seeds 20100+j), M={s['members']}, EWC {s['ewc']}."),
        table("vertebrae_ensemble_size", ["method", "M", *METRICS, "total_gflop", "total_wall_s"], sizes, 1,
              f"Ensemble size on the first {len(sweep_ids)} cases, EWC {s['ewc']}."),
        table("vertebrae_ewc", ["method", "ewc", *METRICS], ewc, 1,
              f"EWC strength on the first {len(sweep_ids)} cases, M={s['members']}."),
    ]
    return {
        "tables": tables,
        "reliability": reliability.to_json(),
        "reliability_region": "surface band (2 voxels)",
        "scatter": [{"method": r["method"], "M": r["M"], "gflop": r["total_gflop"], "ece": r["ece_band"],
                     "quality": r["dice"]} for r in sizes],
        "quality_name": "Dice",
        "ece_name": "ECE (surface band)",
        "figures": figure_paths,
        "config": {"model": model.to_dict(), "pretrain": asdict(pre), "settings": dict(s),
                   "reconstruction": asdict(recon_config("dropsembles", s["members"], s["ewc"])),
                   "pretrain_gflop_per_model": pre_flops / 1e9, "pretrain_wall_s_per_model": pre_wall},
        "wall_s": time.perf_counter() - started,
    }


def _figure(kept: list, path: Path) -> str:
    rows = max(1, len(kept))
    fig = plt.figure(figsize=(13, 3.2 * rows), constrained_layout=True)
    for r, (i, method, obs, gt, recon) in enumerate(kept):
        axis = int(np.argmax(obs.spacing))
        mean, var = recon.maps.mean.data, recon.maps.variance.data
        mid = mean.shape[axis] // 2
        truth = np.take(np.asarray(gt.data), mid, axis)
        panels = [(truth, "ground truth", "gray", 1), (np.take(mean, mid, axis), "mean occupancy", "viridis", 1),
                  (np.take(var, mid, axis), "variance", "inferno", None)]
        for c, (img, title, cmap, vmax) in enumerate(panels):
            ax = fig.add_subplot(rows, 4, 4 * r + c + 1)
            ax.imshow(img.T, origin="lower", cmap=cmap, vmin=0, vmax=vmax)
            if c:
                ax.contour(truth.T.astype(float), levels=[0.5], colors="r", linewidths=0.6)
            ax.set_title(f"case {i}, {LABELS[method]}: {title}", fontsize=8)
            ax.axis("off")
        ax = fig.add_subplot(rows, 4, 4 * r + 4, projection="3d")
        mesh = recon.mesh
        if len(mesh.faces):
            faces = mesh.vertices_mm[mesh.faces[:: max(1, len(mesh.faces) // 6000)]]
            vv = mesh.vertex_values if mesh.vertex_values is not None else np.zeros(len(mesh.vertices_mm))
            values = vv[mesh.faces[:: max(1, len(mesh.faces) // 6000)]].mean(1)
            scale = values.max() if values.size and values.max() > 0 else 1.0
            collection = Poly3DCollection(faces, facecolors=plt.cm.inferno(values / scale), linewidths=0)
            ax.add_collection3d(collection)
            lo, hi = mesh.vertices_mm.min(0), mesh.vertices_mm.max(0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_zlim(lo[2], hi[2])
        ax.set_title("mesh at 0.5, colour = variance", fontsize=8)
        ax.set_axis_off()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return str(path)
