"""Quality on real anatomy: real vertebra masks observed every k-th slice, beside the baselines.

Cases are the real masks in ``bench/data/real/`` (TotalSegmentator test CT, 3 mm voxels, cropped;
see its README): L1-L5 and T12 at k = 2, 3, 4 (6, 9, 12 mm slices) with the thick axis along each
voxel axis asked for, and five shapes that are not vertebrae (kidney, spleen, hip, femur, rib) at
k = 3, whose mean surface-band variance should be well above the vertebrae's. Each configuration in
``CONFIGS`` is scored on the dense mask's grid beside nearest, linear and shape-based interpolation.
Prints markdown and JSON and writes both to ``--out`` (default docs/real_quality.{md,json}; docs/REAL.md reads them).

    python -m bench.real_quality_ts                       # axis 2, both configurations (~15 min, 2 cores)
    python -m bench.real_quality_ts --axes 0 1 2          # every thick-axis direction
    python -m bench.real_quality_ts --prior my.safetensors --cases vertebrae_T12 --no-other   # another prior
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_dropsembles.core.config.configs import ReconstructionConfig
from napari_dropsembles.core.data.slicing import keep_every_kth_slice
from napari_dropsembles.core.io.volumes import read_volume
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.networks.checkpoint import load_prior
from napari_dropsembles.core.scoring.evaluate import score_baselines, score_maps
from napari_dropsembles.core.scoring.metrics import surface_band
from napari_dropsembles.core.volumes.volume import Volume

DATA = Path(__file__).parent / "data" / "real"
PRIOR = Path(__file__).parents[1] / "sample_data" / "lumbar_vertebra_prior.safetensors"
VERTEBRAE = ("vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "vertebrae_L4", "vertebrae_L5", "vertebrae_T12")
OTHER = ("kidney_left", "spleen", "hip_left", "femur_left", "rib_left_12")
CONFIGS = {
    "released": ReconstructionConfig(member_diversity="none", slice_check=False),
    "default": ReconstructionConfig(),
    "default, M=2": ReconstructionConfig(members=2, slice_check=False),
    "default, M=8": ReconstructionConfig(members=8, slice_check=False),
}
KEYS = ("dice", "ece_band", "auroc_band", "variance_band")


def load_truth(name: str) -> Volume:
    truth = read_volume(DATA / f"{name}.nii.gz")
    return truth.with_data((np.asarray(truth.data) > 0).astype(np.uint8))


def run_case(prior, name: str, factor: int, axis: int, configs: dict[str, ReconstructionConfig]) -> dict:
    truth = load_truth(name)
    observation = keep_every_kth_slice(truth, factor, axis, offset=factor // 2)
    band = surface_band(truth.data > 0, truth.spacing)
    row: dict = {"case": name, "slice_factor": factor, "axis": axis, "scores": {}}
    for label, config in configs.items():
        started = time.perf_counter()
        result = reconstruct(observation, prior, config, target=(truth.affine, truth.shape))
        scores = score_maps(result.maps, truth, result.fitted.members, config.threshold)
        scores["variance_band"] = float(result.maps.variance.data[band].mean())
        scores["seconds"] = time.perf_counter() - started
        if result.slice_uncertainty is not None:
            scores["slice_model"] = result.slice_uncertainty.to_dict()
        if result.slice_check is not None:
            scores["held_out_check"] = result.slice_check
        row["scores"][label] = scores
    for method, scores in score_baselines(observation, truth).items():
        row["scores"][method] = {k: v for k, v in scores.items()}
    return row


def mean_table(rows: list[dict], keys=KEYS) -> dict[str, dict[str, float]]:
    methods = list(rows[0]["scores"])
    return {
        method: {
            k: float(np.mean([r["scores"][method][k] for r in rows if k in r["scores"][method]]))
            for k in keys
            if any(k in r["scores"][method] for r in rows)
        }
        for method in methods
    }


def markdown(groups: dict[str, dict[str, dict[str, float]]], rows: list[dict]) -> str:
    lines = ["## Means", ""]
    for title, table in groups.items():
        lines += [
            f"### {title}",
            "",
            "| method | Dice | band ECE | band AUROC | band variance |",
            "|---|---|---|---|---|",
        ]
        for method, s in table.items():
            cells = [f"{s[k]:.4f}" if k in s else "-" for k in KEYS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        ratios = [
            f"{m} x{s['variance_ratio_vs_vertebrae']:.2f}"
            for m, s in table.items()
            if "variance_ratio_vs_vertebrae" in s
        ]
        if ratios:
            lines += ["", "Band variance relative to the vertebrae's at 9 mm: " + ", ".join(ratios) + "."]
        lines.append("")
    lines += [
        "## Per case (default configuration beside the baselines)",
        "",
        "| case | k | axis | Dice ours / shape-based / linear | band ECE ours / linear | band AUROC ours / linear"
        " | held-out check: ours / shape-based Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    pairs = []
    for r in rows:
        s = r["scores"]
        if "default" not in s:
            continue
        ours, sb, lin = s["default"], s["shape_based"], s["linear"]
        check = ours.get("held_out_check")
        if check and not check["held_out_slices"]:
            check = None
        cell = "-" if not check else f"{check['ours_dice']:.3f} / {check['shape_based_dice']:.3f}"
        if check:
            pairs.append((ours["dice"] - sb["dice"], check["ours_dice"] - check["shape_based_dice"]))
        lines.append(
            f"| {r['case']} | {r['slice_factor']} | {r['axis']} | {ours['dice']:.4f} / {sb['dice']:.4f} / "
            f"{lin['dice']:.4f} | {ours['ece_band']:.4f} / {lin['ece_band']:.4f} | {ours['auroc_band']:.4f} / "
            f"{lin['auroc_band']:.4f} | {cell} |"
        )
    if len(pairs) > 2:
        full, check = np.array(pairs).T
        lines += [
            "",
            f"Held-out check against the truth on {len(pairs)} cases: correlation of the check's Dice difference "
            f"(ours - shape-based) with the full case's {np.corrcoef(full, check)[0, 1]:+.2f}; full-case "
            f"differences span {full.min():+.4f} to {full.max():+.4f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(VERTEBRAE))
    parser.add_argument("--factors", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument("--axes", nargs="+", type=int, default=[2])
    parser.add_argument("--other", action=argparse.BooleanOptionalAction, default=True, help="non-vertebra shapes")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("docs/real_quality"))
    parser.add_argument("--prior", type=Path, default=PRIOR, help="prior to reconstruct with (default: bundled)")
    args = parser.parse_args(argv)
    prior = load_prior(args.prior)
    configs = {label: CONFIGS[label] for label in args.configs}
    rows = []
    for name in args.cases:
        for factor in args.factors:
            for axis in args.axes:
                rows.append(run_case(prior, name, factor, axis, configs))
                print(json.dumps({k: rows[-1][k] for k in ("case", "slice_factor", "axis")}), flush=True)
    others = [run_case(prior, name, 3, axis, configs) for name in OTHER for axis in args.axes] if args.other else []
    groups = {}
    for factor in args.factors:
        for subset, title in (
            (("vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "vertebrae_L4", "vertebrae_L5"), "L1-L5"),
            (tuple(args.cases), "all vertebrae asked for"),
        ):
            chosen = [r for r in rows if r["slice_factor"] == factor and r["case"] in subset]
            if chosen:
                groups[f"{title}, k = {factor} ({3 * factor} mm slices)"] = mean_table(chosen)
    if others:
        groups["non-vertebra shapes, k = 3 (9 mm slices)"] = mean_table(others)
        vertebrae = [r for r in rows if r["slice_factor"] == 3]
        for label in configs:
            ratio = mean_table(others)[label]["variance_band"] / max(
                mean_table(vertebrae)[label]["variance_band"], 1e-12
            )
            groups["non-vertebra shapes, k = 3 (9 mm slices)"][label]["variance_ratio_vs_vertebrae"] = ratio
    text = markdown(groups, rows + others)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"groups": groups, "cases": rows + others}, indent=1))
    args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
