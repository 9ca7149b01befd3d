"""The ensemble statistics on a grid: mean, variance, entropy and mutual information."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..volumes.volume import Volume

EPS = 1e-6
MAP_NAMES = ("mean", "variance", "entropy", "mutual_information")


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of a Bernoulli with probability ``p``."""
    p = p.clamp(EPS, 1 - EPS)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p))


def ensemble_statistics(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """[M, N] member probabilities -> mean, variance, predictive entropy, mutual information."""
    mean = probs.mean(0)
    variance = probs.var(0, unbiased=False)
    entropy = binary_entropy(mean)
    mutual_information = (entropy - binary_entropy(probs).mean(0)).clamp_min(0)
    return {"mean": mean, "variance": variance, "entropy": entropy, "mutual_information": mutual_information}


@dataclass(eq=False)
class EnsembleMaps:
    """Mean, variance, entropy and mutual information on one grid (each a Volume)."""

    mean: Volume
    variance: Volume
    entropy: Volume
    mutual_information: Volume
    members: np.ndarray | None = None  # [M, I, J, K] float16 when kept
    queries: int = 0  # network evaluations (points x members)

    def as_dict(self) -> dict[str, Volume]:
        return {name: getattr(self, name) for name in MAP_NAMES}
