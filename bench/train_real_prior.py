"""Train the bundled prior and the benchmark's leave-subject-out priors on the real vertebrae of shared/real.

Stages, each skipped when its output already exists in ``--work`` (so a run can be resumed):

1. ``init``: the starting network, a copy of ``--init`` (default: the bundled prior as found at the
   first run; the prior bundled before this recipe was trained on procedural vertebrae and the
   TotalSegmentator T12, which the benchmark therefore does not score).
2. ``fold_A``, ``fold_B``: ``init`` fine-tuned on the vertebrae of every subject its fold does not hold
   out (bench/real_data.FOLDS); ``final``: fine-tuned on every real vertebra. Thick-sliced masks are
   trained on where they were drawn only; masks are mirrored and rescaled (``--augment``).
3. Out-of-fold rows: every subject's vertebrae seen through thick slices (sagittal, coronal, axial;
   3-9 mm), reconstructed by the network of the fold that holds the subject out, on the mask's own grid;
   the voxels near either surface (and 5 % of the rest) become calibration rows (core/fitting/calibrate).
4. Calibration: one head per dense subject fitted on the other subjects' rows (the benchmark's), and
   one on every subject's rows (the bundled prior's).
5. Writes ``bench/data/priors/lso_<subject>.safetensors`` (the fold's network, the head fitted without
   the subject) and the bundled ``sample_data/lumbar_vertebra_prior.safetensors``.

    python -m bench.train_real_prior --work /tmp/real-prior          # about 2 h on a quiet 2-core CPU

The recipe, the seed and the wall times are in docs/prior.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from napari_dropsembles.core.config.configs import PretrainConfig, ReconstructionConfig
from napari_dropsembles.core.config.progress import drive
from napari_dropsembles.core.fitting.calibrate import CalibrationRows, case_rows, fit_calibration
from napari_dropsembles.core.fitting.pretrain import make_training_sample, shape_reference_from, training_shapes
from napari_dropsembles.core.jobs.pretrain_api import PretrainRequest, pretrain_job_steps
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.networks.calibration import INTERPOLATION_FEATURES
from napari_dropsembles.core.networks.checkpoint import Prior, load_prior, save_prior

from .real_data import DENSE_SUBJECTS, FOLDS, check_real_data, fold_of, slice_factor, training_files, vertebrae
from .real_data import observe as thin
from .real_quality import truth_grid_features

ROOT = Path(__file__).resolve().parents[1]
REAL_TUNE = dict(
    steps=800, samples=640, lr=3e-4, procedural_share=0.2, slice_factors=(1.5, 7.0), slice_axes=(0, 1, 2), augment=True
)
# slicings of the out-of-fold rows: (orientation, mm) for 1 mm dense masks, 3 mm masks, thick-sliced masks
ROW_SLICINGS = {
    "dense": [("sagittal", 5), ("axial", 5), ("sagittal", 3), ("axial", 6)],
    "ts": [("sagittal", 9), ("axial", 9), ("sagittal", 6)],
    "sparse": [("sagittal", 4), ("axial", 5)],
}
REFERENCE_SAMPLES = 8  # training observations per mask for a fold network's unusual-shape reference
ROW_CONFIG = ReconstructionConfig(slice_check=False, keep_members=True, adaptive=False, device="cpu")


def pretrain(out: Path, config: PretrainConfig, data: list[Path] | None, init: Path) -> None:
    if out.exists():
        return
    started = time.perf_counter()
    model_config = load_prior(init).config
    request = PretrainRequest(out=out, model_config=model_config, config=config, data=data, init=init, device="cpu")
    drive(pretrain_job_steps(request), lambda p: _report(out.name, p, started))
    print(f"{out.name}: {time.perf_counter() - started:.0f} s", flush=True)


def _report(name: str, progress, started: float) -> None:
    if progress.step % 50 == 0 or progress.step == progress.total:
        loss = "" if progress.loss is None else f" loss {progress.loss:.4f}"
        print(
            f"{name} {progress.phase} {progress.step}/{progress.total}{loss} {time.perf_counter() - started:.0f} s",
            flush=True,
        )


def with_shape_reference(
    prior: Prior, files: list[Path], config: PretrainConfig, seed: int = 0, force: bool = False
) -> Prior:
    """A network trained elsewhere (without a reference), or any with ``force``, gets the unusual-shape
    reference of its training observations: every training mask through ``REFERENCE_SAMPLES`` random
    training slicings."""
    if prior.shape_reference is not None and not force:
        return prior
    rng = np.random.default_rng(seed)
    shapes = training_shapes(files)
    descriptors = [
        make_training_sample(shape, rng, prior.config, config)[3] for shape in shapes for _ in range(REFERENCE_SAMPLES)
    ]
    prior.shape_reference = shape_reference_from([np.array(descriptors)], shapes)
    if prior.shape_reference is None:
        raise SystemExit(f"{len(shapes)} masks give too few observations for an unusual-shape reference")
    return prior


def slicings(mask) -> list[tuple[str, int]]:
    kind = "ts" if mask.subject == "ts" else "dense" if mask.dense else "sparse"
    return ROW_SLICINGS[kind]


def rows_of_subject(subject: str, prior_path: Path, work: Path, seed: int = 0) -> list[CalibrationRows]:
    """The subject's rows, reconstructed by ``prior_path`` (a network that never saw the subject); cached."""
    cache = work / "rows" / f"{subject}.npz"
    if not cache.exists():
        prior = load_prior(prior_path)
        rng = np.random.default_rng([seed, sum(map(ord, subject))])
        parts = []
        for mask in [m for m in vertebrae() if m.subject == subject]:
            truth = mask.load()
            for orientation, mm in slicings(mask):
                factor = slice_factor(truth, orientation, mm)
                if not factor:
                    continue
                observation = thin(truth, orientation, factor, int(rng.integers(factor)))
                if not np.asarray(observation.data).any():
                    continue
                parts.append(case_rows_of(observation, truth, prior, rng, f"{subject}_{mask.name}"))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            **{f"{i}_{key}": value for i, rows in enumerate(parts) for key, value in _arrays(rows).items()},
        )
        print(f"rows {subject}: {len(parts)} cases", flush=True)
    data = np.load(cache)
    count = len({key.split("_")[0] for key in data.files})
    return [
        CalibrationRows(
            data[f"{i}_interpolation"], data[f"{i}_members"], data[f"{i}_truth"], data[f"{i}_weights"], subject
        )
        for i in range(count)
    ]


def _arrays(rows: CalibrationRows) -> dict[str, np.ndarray]:
    return {"interpolation": rows.interpolation, "members": rows.members, "truth": rows.truth, "weights": rows.weights}


def case_rows_of(observation, truth, prior, rng, name: str) -> CalibrationRows:
    """One thick observation reconstructed on the mask's grid: its calibration rows."""
    result = reconstruct(observation, prior, ROW_CONFIG, target=(truth.affine, truth.shape))
    inside, interpolation = truth_grid_features(result, truth)
    members = result.maps.members.reshape(result.maps.members.shape[0], -1)[:, inside].astype(np.float32)
    mean = members.mean(0)
    near = (np.abs(interpolation[:, INTERPOLATION_FEATURES.index("interpolated")]) < 3) | (
        (mean > 0.01) & (mean < 0.99)
    )
    labels = (np.asarray(truth.data) > 0).reshape(-1)[inside]
    return case_rows(interpolation, members, labels, near, rng, name)


def calibrated(network: Path, files: list[Path], rows: list[CalibrationRows], out: Path, provenance: dict) -> None:
    prior = with_shape_reference(load_prior(network), files, PretrainConfig(**REAL_TUNE))
    prior.calibration = fit_calibration(rows, provenance)
    prior.path = None
    save_prior(prior, out)
    print(f"{out}: calibration from {len(rows)} cases", flush=True)


def _drop_reference(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    if "shape_reference" not in metadata:
        return
    del metadata["shape_reference"]
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("shape_reference.")}
    save_file(tensors, str(path), metadata=metadata)


def refit_references(priors: Path, bundled: Path) -> None:
    """The written priors' unusual-shape references fitted again (after a change of the descriptors)."""
    targets = [(priors / f"lso_{s}.safetensors", training_files(fold_of(s))) for s in DENSE_SUBJECTS]
    for path, files in [*targets, (bundled, training_files(None))]:
        _drop_reference(path)  # one of other descriptors would not load
        prior = with_shape_reference(load_prior(path), files, PretrainConfig(**REAL_TUNE), force=True)
        prior.path = None
        save_prior(prior, path)
        print(f"{path}: reference of {prior.shape_reference.count} training observations", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dropsembles-real-prior"))
    parser.add_argument("--priors", type=Path, default=ROOT / "bench" / "data" / "priors")
    parser.add_argument("--bundled", type=Path, default=ROOT / "sample_data" / "lumbar_vertebra_prior.safetensors")
    parser.add_argument("--init", type=Path, help="the starting network (default: the bundled prior, copied)")
    parser.add_argument(
        "--stage",
        choices=("networks", "rows", "all", "references"),
        default="all",
        help="references: refit the unusual-shape references of the written priors only",
    )
    parser.add_argument("--fold", choices=tuple(FOLDS), help="only this fold's networks and rows (parallel runs)")
    args = parser.parse_args(argv)
    check_real_data()
    torch.set_num_threads(1)
    if args.stage == "references":
        refit_references(args.priors, args.bundled)
        return 0
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    init = work / "init.safetensors"
    if not init.exists():
        shutil.copyfile(args.init or args.bundled, init)
    folds = [args.fold] if args.fold else list(FOLDS)
    for fold in folds:
        pretrain(work / f"fold_{fold}.safetensors", PretrainConfig(**REAL_TUNE), training_files(fold), init)
    if not args.fold:
        pretrain(work / "final.safetensors", PretrainConfig(**REAL_TUNE), training_files(None), init)
    if args.stage == "networks":
        return 0
    subjects = sorted({m.subject for m in vertebrae()})
    rows = {
        s: rows_of_subject(s, work / f"fold_{fold_of(s)}.safetensors", work) for s in subjects if fold_of(s) in folds
    }
    if args.stage == "rows" or args.fold:
        return 0
    slicing_text = {kind: [f"{o} {mm} mm" for o, mm in values] for kind, values in ROW_SLICINGS.items()}
    args.priors.mkdir(parents=True, exist_ok=True)
    for subject in DENSE_SUBJECTS:
        others = [r for s, group in rows.items() if s != subject for r in group]
        provenance = {
            "subjects": sorted(s for s in rows if s != subject),
            "held_out": subject,
            "slicings": slicing_text,
            "network": f"fold {fold_of(subject)} (never saw {', '.join(FOLDS[fold_of(subject)])})",
        }
        calibrated(
            work / f"fold_{fold_of(subject)}.safetensors",
            training_files(fold_of(subject)),
            others,
            args.priors / f"lso_{subject}.safetensors",
            provenance,
        )
    everything = [r for group in rows.values() for r in group]
    provenance = {
        "subjects": sorted(rows),
        "slicings": slicing_text,
        "rows_from": "each subject reconstructed by the fold network that never saw it (out-of-fold)",
    }
    calibrated(
        work / "final.safetensors", training_files(None), everything, work / "final_calibrated.safetensors", provenance
    )
    final = load_prior(work / "final_calibrated.safetensors")
    final.training = {
        **final.training,
        "data": f"{final.training['data']} + {REAL_TUNE['procedural_share']:.0%} procedural",
        "started_from": "the previous bundled prior (procedural + TotalSegmentator T12; docs/prior.md)",
        "recipe": "python -m bench.train_real_prior (docs/prior.md)",
        "real_data": "VerSe (CC BY-SA 4.0; Sekuboyina et al. 2021; Loeffler et al. 2020); TotalSegmentator tests",
    }
    final.path = None
    save_prior(final, args.bundled)
    print(json.dumps({"bundled": str(args.bundled), "training": final.training}, default=str)[:400], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
