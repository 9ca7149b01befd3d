"""The calibration head: from where a point lies between the observed slices, what plain interpolation
says there and what each member says, to the member's calibrated probability.

A small MLP learned on real anatomy after the network (stacking: the members' outputs on subjects the
network never saw, leave-subject-out; docs/REAL.md, docs/prior.md). Its inputs per point:

- the in-plane signed distances on the two nearest observed slices on each side, over the gap;
- the shape-based interpolation's signed distance over the gap; the position t between the slices,
  ``4 t (1 - t)`` and the gap (cm); the linear interpolation of the observation;
- with the network: the member's logit and the members' spread (standard deviation of their probabilities).

The head learns a better interpolation than a straight one between slices (the truth bulges past it),
how far to trust the network, and calibrated probabilities. A prior carries its head and its provenance.
A shape unlike the prior's training shapes gets neither network nor head (core/jobs/reconstruct.check_shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from ..config.errors import CheckpointError
from ..slices.neighbours import NeighbourSlices

INTERPOLATION_FEATURES = (
    "slice_below_2",
    "slice_below",
    "slice_above",
    "slice_above_2",
    "interpolated",
    "t",
    "mid_gap",
    "gap_cm",
    "linear",
)
NETWORK_FEATURES = INTERPOLATION_FEATURES + ("member_logit", "member_spread")
DISTANCE_CLIP = 3.0  # distances over the gap beyond +-3 gaps carry no more information
LOGIT_CLIP = 9.21  # logit of 1e-4
LOGISTIC_FEATURES = (
    "interpolated",
    "slice_distance",
    "linear",
    "interpolated_x_slice_distance",
    "interpolated_x_linear",
    "slice_distance_x_linear",
    "tanh_interpolated",
)
HEADS = {"network": NETWORK_FEATURES, "interpolation": INTERPOLATION_FEATURES, "logistic": LOGISTIC_FEATURES}
PREFIX = "calibration"


def interpolation_features(slices: NeighbourSlices, interpolated_mm: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """[N, len(INTERPOLATION_FEATURES)] float32."""
    gap = np.maximum(slices.gap_mm, 1e-3)
    distances = np.clip(slices.distances_mm / gap, -DISTANCE_CLIP, DISTANCE_CLIP)
    t = slices.t
    columns = [
        *distances,
        np.clip(interpolated_mm / gap, -DISTANCE_CLIP, DISTANCE_CLIP),
        t,
        4 * t * (1 - t),
        np.broadcast_to(gap / 10.0, t.shape),
        linear,
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def logistic_features(interpolation: np.ndarray) -> np.ndarray:
    """The baseline calibrator's inputs (no network): the interpolated signed distance over the gap, the
    distance to the nearest observed slice over the gap, the linear interpolation, and their products."""
    column = {name: interpolation[:, i] for i, name in enumerate(INTERPOLATION_FEATURES)}
    d, lin = column["interpolated"], column["linear"]
    r = np.minimum(column["t"], 1 - column["t"])
    return np.stack([d, r, lin, d * r, d * lin, r * lin, np.tanh(d)], axis=1).astype(np.float32)


def member_features(probabilities: torch.Tensor) -> torch.Tensor:
    """[M, N] member probabilities -> [M, N, 2]: the member's logit / 4 and the members' spread x 4."""
    p = probabilities.clamp(1e-4, 1 - 1e-4)
    logit = torch.log(p / (1 - p)) / 4
    spread = probabilities.var(0, unbiased=False).sqrt() * 4
    return torch.stack([logit, spread.expand_as(logit)], dim=-1)


@dataclass(frozen=True, eq=False)
class CalibrationHead:
    """A ReLU MLP over ``features``; ``layers`` are (weight [in, out], bias [out]) pairs."""

    features: tuple[str, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """[..., len(features)] -> logits [...]."""
        x = inputs
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight.to(x) + bias.to(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x[..., 0]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for i, (weight, bias) in enumerate(self.layers):
            out[f"{prefix}.{i}.weight"] = weight.detach().cpu().contiguous()
            out[f"{prefix}.{i}.bias"] = bias.detach().cpu().contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, features: tuple[str, ...]) -> CalibrationHead:
        layers = []
        while f"{prefix}.{len(layers)}.weight" in tensors:
            i = len(layers)
            layers.append((tensors[f"{prefix}.{i}.weight"].float(), tensors[f"{prefix}.{i}.bias"].float()))
        return cls(tuple(features), tuple(layers))


@dataclass(frozen=True, eq=False)
class Calibration:
    """A prior's calibration: the head with the network; optionally, for measuring what the network adds,
    the same head without it and the logistic baseline calibrator; and where they came from."""

    network: CalibrationHead
    interpolation: CalibrationHead | None = None
    logistic: CalibrationHead | None = None
    provenance: dict = field(default_factory=dict)

    def heads(self) -> dict[str, CalibrationHead]:
        heads = {"network": self.network, "interpolation": self.interpolation, "logistic": self.logistic}
        return {name: head for name, head in heads.items() if head is not None}

    def probabilities(self, interpolation: np.ndarray, member_probabilities: torch.Tensor) -> torch.Tensor:
        """Calibrated member probabilities [M, N] from the interpolation features [N, F] and the members'
        own probabilities [M, N]."""
        base = torch.from_numpy(interpolation).to(member_probabilities.device)
        members = member_probabilities.shape[0]
        inputs = torch.cat([base.expand(members, -1, -1), member_features(member_probabilities)], dim=-1)
        return torch.sigmoid(self.network(inputs))

    def without_network(self, interpolation: np.ndarray, head: str = "interpolation") -> np.ndarray:
        """Probabilities [N] of a head that reads no network: ``interpolation`` or ``logistic`` (the
        baseline calibrator); both are kept only to measure what the network adds (bench/real_quality)."""
        inputs = logistic_features(interpolation) if head == "logistic" else interpolation
        with torch.no_grad():
            return torch.sigmoid(self.heads()[head](torch.from_numpy(inputs))).numpy()

    def to_file(self) -> tuple[dict[str, torch.Tensor], str]:
        """Tensors ``calibration.<head>.<layer>.{weight,bias}`` and the metadata JSON."""
        tensors = {}
        for name, head in self.heads().items():
            tensors.update(head.tensors(f"{PREFIX}.{name}"))
        return tensors, json.dumps({"heads": sorted(self.heads()), "provenance": self.provenance})

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], metadata: str, where: str) -> Calibration:
        """Read back what :meth:`to_file` wrote; any inconsistency is one CheckpointError line."""
        try:
            meta = json.loads(metadata)
            names, provenance = list(meta["heads"]), dict(meta.get("provenance", {}))
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{where}: its calibration metadata is not readable ({error})") from None
        if "network" not in names or not set(names) <= set(HEADS):
            raise CheckpointError(f"{where}: its calibration holds heads {names}, expected a network head")
        heads = {}
        for name in names:
            head = CalibrationHead.from_tensors(tensors, f"{PREFIX}.{name}", HEADS[name])
            _check_head(head, name, where)
            heads[name] = head
        return cls(heads["network"], heads.get("interpolation"), heads.get("logistic"), provenance)


def _check_head(head: CalibrationHead, name: str, where: str) -> None:
    """Layers that chain from the head's features to one logit, finite."""
    if not head.layers:
        raise CheckpointError(f"{where}: calibration head {name} has no layers")
    width = len(head.features)
    for i, (weight, bias) in enumerate(head.layers):
        if weight.ndim != 2 or weight.shape[0] != width or bias.shape != (weight.shape[1],):
            raise CheckpointError(
                f"{where}: calibration head {name} layer {i} has shape {tuple(weight.shape)}, expected ({width}, n)"
            )
        if not (bool(torch.isfinite(weight).all()) and bool(torch.isfinite(bias).all())):
            raise CheckpointError(
                f"{where}: calibration head {name} layer {i} has NaN/inf values; refit the calibration"
            )
        width = weight.shape[1]
    if width != 1:
        raise CheckpointError(f"{where}: calibration head {name} ends in {width} outputs, expected 1")
