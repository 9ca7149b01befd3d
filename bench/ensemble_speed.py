"""Fine-tuning cost of the batched decoder: M=1, M=4 batched, and M=4 trained one after another.

Prints a markdown table and a JSON line; all rows measured in the same run on the same case.
Usage: python bench/ensemble_speed.py [--prior CKPT] [--steps 40] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from napari_dropsembles.core.checkpoint import load_prior
from napari_dropsembles.core.ensemble import EnsembleDecoder, sample_member_masks
from napari_dropsembles.core.finetune import FinetuneConfig, finetune_steps
from napari_dropsembles.core.frame import make_case
from napari_dropsembles.core.model import sample_features
from napari_dropsembles.core.predict import run_to_end
from napari_dropsembles.core.simulate import simulate_volumes


def _setup(prior):
    observation, _, _ = simulate_volumes(1000, slice_factor=4.0)
    case = make_case(observation, prior.config)
    model = prior.models[0]
    with torch.no_grad():
        grid = model.encoder(torch.from_numpy(case.encoder_input)[None])
        points = torch.from_numpy(case.points)
        features = sample_features(grid, points[None])[0]
    return model, points, features, torch.from_numpy(case.labels)


def _finetune(prior, model, points, features, labels, members: int, config: FinetuneConfig, seed: int) -> float:
    decoder = EnsembleDecoder.replicate(prior.config, model.decoder, members)
    decoder.set_masks(sample_member_masks(members, prior.config, torch.Generator().manual_seed(seed)))
    started = time.perf_counter()
    run_to_end(
        finetune_steps(
            decoder,
            features,
            points,
            labels,
            config,
            anchor=model.decoder,
            fisher=model.fisher,
            generator=torch.Generator().manual_seed(seed),
        )
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prior", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    model, points, features, labels = _setup(prior)
    config = FinetuneConfig(steps=args.steps, holdout=0.1)
    _finetune(prior, model, points, features, labels, 1, FinetuneConfig(steps=3), 0)  # warm-up
    rows = {"M=1": [], "M=4 batched": [], "M=4 one after another": []}
    for r in range(args.repeats):
        rows["M=1"].append(_finetune(prior, model, points, features, labels, 1, config, r))
        rows["M=4 batched"].append(_finetune(prior, model, points, features, labels, 4, config, r))
        rows["M=4 one after another"].append(
            sum(_finetune(prior, model, points, features, labels, 1, config, 10 * r + m) for m in range(4))
        )
    best = {name: min(times) for name, times in rows.items()}
    one = best["M=1"]
    result = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "points_per_step": config.points_per_step,
        "observed_points": int(points.shape[0]),
        "seconds_best_of": args.repeats,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "ratio_to_one_member": {k: round(v / one, 2) for k, v in best.items()},
        "batched_vs_loop": round(best["M=4 batched"] / best["M=4 one after another"], 2),
    }
    print(f"Fine-tuning {args.steps} steps x {config.points_per_step} points, torch threads {torch.get_num_threads()}")
    print(f"| configuration | seconds (best of {args.repeats}) | x one member |")
    print("|---|---|---|")
    for name, value in best.items():
        print(f"| {name} | {value:.2f} | {value / one:.2f} |")
    print(f"batched / loop = {result['batched_vs_loop']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
