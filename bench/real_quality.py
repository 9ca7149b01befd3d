"""Quality on real vertebrae of subjects the prior never saw (leave-subject-out), beside the interpolations.

Cases: the dense real vertebrae of ``shared/real`` (bench/real_data: VerSe verse005 L1-L5 and gl003 C1-T5
at 1 mm, TotalSegmentator L1-L5 at 3 mm; its T12 is left out: the starting network saw it), seen through
thick sagittal and axial slices (3, 5 and 6 mm at 1 mm; 6 and 9 mm at 3 mm) at random slice offsets.
Each subject is reconstructed with ``bench/data/priors/lso_<subject>.safetensors``: the network of the
fold that never saw the subject and a calibration head fitted without it (bench/train_real_prior).
Every map is scored on the mask's own grid:

- ``ours``: the default reconstruction (calibrated members; ``auroc_band`` ranks errors by the member
  variance, ``auroc_entropy_band`` by the predictive entropy);
- ``network``: the same members without the calibration head (what the head adds);
- ``nearest``, ``linear``, ``shape_based``, ``contour`` (ITK morphological contour interpolation);
- ``interp_logistic``: the calibrator of interpolation features alone (no network), a logistic map of the
  interpolated distance, the distance to the nearest slice, the linear value and their products, fitted
  on the same rows as the head; ``interp_head``: the head's own architecture without the network inputs.

Also the unusual-shape score: held-out subjects' vertebrae against organs and bones that are not
vertebrae (AUROC), and the share of cases where ours loses to shape-based interpolation by more than
0.005 Dice. Writes ``--out``.json and .md (default docs/real/real_quality_lso).

    python -m bench.real_quality                 # about 40 min on a quiet 2-core CPU
    python -m bench.real_quality --mm 5 9        # the targets' slicings only
    python -m bench.real_quality --subjects gl003 --part /tmp/gl003.json   # one part of a parallel run
    python -m bench.real_quality --parts /tmp/*.json                       # tables of the parts
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_dropsembles.core.config.configs import ReconstructionConfig
from napari_dropsembles.core.config.progress import drive
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.networks.checkpoint import Prior, load_prior
from napari_dropsembles.core.querying.predict import predict_grid_steps
from napari_dropsembles.core.scoring.evaluate import score_baselines, score_maps
from napari_dropsembles.core.scoring.metrics import auroc, evaluate_probabilities
from napari_dropsembles.core.volumes.volume import Volume

from .real_data import DENSE_SUBJECTS, check_real_data, other_shapes, slice_factor, vertebrae
from .real_data import observe as thin

ROOT = Path(__file__).resolve().parents[1]
PRIORS = ROOT / "bench" / "data" / "priors"
SLICINGS = {"dense": (3, 5, 6), "ts": (6, 9)}
ORIENTATIONS = ("sagittal", "axial")
KEYS = ("dice", "hd95_mm", "ece_band", "auroc_band", "auroc_entropy_band", "nll_band", "brier_band", "ece", "nll")
LEFT_OUT = {("ts", "T12")}  # seen by the network every fold started from (bench/train_real_prior)
METHODS = ("ours", "network", "interp_head", "interp_logistic", "shape_based", "linear", "nearest", "contour")


def truth_grid_features(result, truth: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(which of the truth's voxels lie in the case's box [V], the calibration features there [n, F])."""
    fitted = result.fitted
    points = fitted.frame.to_normalised(truth.voxel_centres_mm())
    inside = np.all(np.abs(points) < 0.5, axis=1)
    return inside, fitted.point_inputs.calibration_features(points[inside])


def interpolation_only(result, truth: Volume, features: tuple[np.ndarray, np.ndarray], head: str) -> np.ndarray:
    """A calibration head that reads no network (``logistic`` or ``interpolation``) on the truth's grid, from
    :func:`truth_grid_features` (computed once per case)."""
    inside, interpolation = features
    out = np.zeros(inside.shape, dtype=np.float32)
    out[inside] = result.fitted.calibration.without_network(interpolation, head)
    return out.reshape(truth.shape)


def uncalibrated(result, truth: Volume):
    """The same fitted members queried without the calibration head."""
    fitted = result.fitted
    calibration, fitted.calibration = fitted.calibration, None
    try:
        return drive(predict_grid_steps(fitted, truth.affine, truth.shape, adaptive=False))
    finally:
        fitted.calibration = calibration


def score_case(prior: Prior, truth: Volume, observation: Volume, config: ReconstructionConfig) -> dict:
    started = time.perf_counter()
    result = reconstruct(observation, prior, config, target=(truth.affine, truth.shape))
    seconds = time.perf_counter() - started
    gt = np.asarray(truth.data) > 0
    scores = {"ours": score_maps(result.maps, truth, result.fitted.members, config.threshold)}
    network = uncalibrated(result, truth)
    scores["network"] = score_maps(network, truth, result.fitted.members, config.threshold)
    if result.fitted.calibration is not None:  # the calibrators of interpolation features alone, every case
        features = truth_grid_features(result, truth)
        for name, head in (("interp_logistic", "logistic"), ("interp_head", "interpolation")):
            probability = interpolation_only(result, truth, features, head)
            scores[name] = evaluate_probabilities(probability, gt, truth.spacing)
    scores.update(score_baselines(observation, truth, config.threshold, reading=result.reading))
    unusual = result.unusual_shape or {}
    return {"scores": scores, "seconds": seconds, "unusual_shape": unusual, "answered_by": result.fitted.answered_by()}


def lso_prior(subject: str) -> Prior:
    path = PRIORS / f"lso_{subject}.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run python -m bench.train_real_prior first")
    return load_prior(path)


def run_cases(args) -> list[dict]:
    rng = np.random.default_rng([args.seed, *map(ord, "".join(args.subjects))])
    config = ReconstructionConfig()
    rows = []
    for subject in args.subjects:
        prior = lso_prior(subject)
        for mask in [m for m in vertebrae() if m.subject == subject and (subject, m.name) not in LEFT_OUT]:
            truth = mask.load()
            mms = SLICINGS["ts" if subject == "ts" else "dense"]
            for orientation in ORIENTATIONS[: 1 if args.quick else None]:
                for mm in [m for m in mms if args.mm is None or m in args.mm]:
                    factor = slice_factor(truth, orientation, mm)
                    if not factor:
                        continue
                    offset = int(rng.integers(factor))
                    observation = thin(truth, orientation, factor, offset)
                    row = score_case(prior, truth, observation, config)
                    row.update(
                        subject=subject, vertebra=mask.name, region=mask.region, orientation=orientation, mm=mm,
                        offset=offset,
                    )  # fmt: skip
                    rows.append(row)
                    ours, sb = row["scores"]["ours"], row["scores"]["shape_based"]
                    print(
                        f"{subject} {mask.name} {orientation} {mm} mm: Dice {ours['dice']:.4f} "
                        f"(shape-based {sb['dice']:.4f}), {row['seconds']:.1f} s, {row['answered_by']}",
                        flush=True,
                    )
    return rows


def unusual_auroc(rows: list[dict]) -> dict:
    """The unusual-shape score of held-out vertebrae (from the cases) against shapes that are not vertebrae,
    each scored by every subject's prior reference, at the benchmark's slicings."""
    vertebra_scores = [r["unusual_shape"]["score"] for r in rows if r["unusual_shape"].get("score") is not None]
    others = []
    rng = np.random.default_rng(7)
    for subject in DENSE_SUBJECTS:
        reference = lso_prior(subject).shape_reference
        for name, shape in other_shapes():
            for orientation in ORIENTATIONS:
                factor = max(2, slice_factor(shape, orientation, 5) or 2)
                observation = thin(shape, orientation, factor, int(rng.integers(factor)))
                score = reference.score(observation) if reference is not None else None
                if score is not None:
                    others.append({"shape": name, "orientation": orientation, "prior": subject, "score": score,
                                   "unusual": score > reference.threshold})  # fmt: skip
    scores = np.array(vertebra_scores + [o["score"] for o in others])
    labels = np.r_[np.zeros(len(vertebra_scores)), np.ones(len(others))]
    flagged = [r["unusual_shape"]["unusual"] for r in rows if r["unusual_shape"]]
    return {
        "auroc": float(auroc(scores, labels)),
        "vertebrae": len(vertebra_scores),
        "other_observations": len(others),
        "vertebrae_flagged": float(np.mean(flagged)) if flagged else None,
        "others_flagged": float(np.mean([o["unusual"] for o in others])) if others else None,
        "others": others,
    }


def group_table(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for method in METHODS:
        values = [r["scores"][method] for r in rows if method in r["scores"] and "skipped" not in r["scores"][method]]
        if values:
            out[method] = {k: float(np.nanmean([v[k] for v in values if k in v])) for k in KEYS if k in values[0]}
            out[method]["cases"] = len(values)
    losing = [r["scores"]["ours"]["dice"] < r["scores"]["shape_based"]["dice"] - 0.005 for r in rows]
    out["ours"]["share_losing_to_shape_based"] = float(np.mean(losing))
    return out


def groups(rows: list[dict]) -> dict[str, dict]:
    grouped = defaultdict(list)
    for r in rows:
        grouped[f"{r['mm']} mm, pooled"].append(r)
        grouped[f"{r['mm']} mm, {r['region']}"].append(r)
        grouped[f"{r['mm']} mm, {r['orientation']}"].append(r)
        grouped[f"{r['mm']} mm, answered by {r['answered_by']}"].append(r)
        if r["subject"] == "ts":
            grouped[f"{r['mm']} mm, TotalSegmentator"].append(r)
            grouped[f"{r['mm']} mm, TotalSegmentator L1-L5"].append(r)
        else:
            grouped[f"{r['mm']} mm, 1 mm subjects"].append(r)
    return {
        name: group_table(group)
        for name, group in sorted(grouped.items(), key=lambda kv: (int(kv[0].split()[0]), kv[0]))
    }


def markdown(tables: dict[str, dict], unusual: dict, rows: list[dict]) -> str:
    lines = ["# Real vertebrae, leave-subject-out", ""]
    header = "| method | n | Dice | HD95 mm | band ECE | band AUROC (var / ent.) | band NLL | band Brier | ECE | NLL |"
    for title, table in tables.items():
        lines += [f"## {title}", "", header, "|---" * 10 + "|"]
        for method, s in table.items():
            var = s.get("auroc_band", float("nan"))
            ent = s.get("auroc_entropy_band")
            auc = f"{var:.3f} / {ent:.3f}" if ent is not None else f"{var:.3f}"
            lines.append(
                f"| {method} | {s['cases']} | {s['dice']:.4f} | {s['hd95_mm']:.2f} | {s['ece_band']:.4f} | {auc} | "
                f"{s['nll_band']:.3f} | {s['brier_band']:.4f} | {s['ece']:.4f} | {s['nll']:.4f} |"
            )
        lines += ["", f"Share of cases where ours loses to shape-based by > 0.005 Dice: "
                  f"{table['ours']['share_losing_to_shape_based']:.2f}", ""]  # fmt: skip
    lines += [
        "## Unusual shapes",
        "",
        f"AUROC of the unusual-shape score, held-out vertebrae ({unusual['vertebrae']} observations) against shapes"
        f" that are not vertebrae ({unusual['other_observations']} observations): **{unusual['auroc']:.3f}**. Flagged:"
        f" {unusual['vertebrae_flagged']:.1%} of the vertebrae, {unusual['others_flagged']:.1%} of the others.",
        "",
        f"Mean time per case (reconstruction on the mask's grid, CPU): {np.mean([r['seconds'] for r in rows]):.1f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mm", type=int, nargs="+", default=None, help="only these slice spacings")
    parser.add_argument("--quick", action="store_true", help="sagittal slices only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", nargs="+", choices=DENSE_SUBJECTS, default=list(DENSE_SUBJECTS))
    parser.add_argument("--part", type=Path, help="write only these subjects' cases to this JSON file")
    parser.add_argument("--parts", type=Path, nargs="+", help="tables of cases written by --part runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "real" / "real_quality_lso")
    args = parser.parse_args(argv)
    check_real_data()
    rows = [row for part in args.parts for row in json.loads(part.read_text())] if args.parts else run_cases(args)
    if args.part:
        args.part.write_text(json.dumps(rows, default=float))
        return 0
    tables = groups(rows)
    unusual = unusual_auroc(rows)
    text = markdown(tables, unusual, rows)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"groups": tables, "unusual_shape": unusual, "cases": rows}, indent=1, default=float)
    )
    args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
