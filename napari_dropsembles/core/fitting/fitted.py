"""The fine-tuned ensemble: the object every query goes through (maps, previews, scores)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr

from ..networks.calibration import Calibration
from ..networks.chunking import choose_chunk, run_chunked
from ..networks.ensemble import EnsembleDecoder
from ..networks.model import sample_features
from ..slices.slice_uncertainty import SliceUncertainty
from ..volumes.frame import Frame
from .case import PointInputs


@dataclass(eq=False)
class Fitted:
    """A fine-tuned ensemble, ready to query anywhere in world mm."""

    method: str
    decoder: EnsembleDecoder
    feature_grids: torch.Tensor  # [1 or M, C, G, G, G]
    frame: Frame
    history: dict
    point_inputs: PointInputs
    calibration: Calibration | None = None  # the prior's calibration head (core/networks/calibration)
    # a shape unlike the prior's training shapes: answered by shape-based interpolation with this
    # between-slice uncertainty instead of the network (core/jobs/reconstruct.check_shape)
    fallback: SliceUncertainty | None = None

    @property
    def calibrated(self) -> bool:
        """Whether queries go through the calibration head."""
        return self.fallback is None and self.calibration is not None and self.point_inputs.field is not None

    def answered_by(self) -> str:
        """What answers queries: "calibrated network", "network" or "interpolation" (the fallback)."""
        if self.fallback is not None:
            return "interpolation"
        return "calibrated network" if self.calibrated else "network"

    @property
    def members(self) -> int:
        return self.decoder.members

    @property
    def device(self) -> torch.device:
        return self.feature_grids.device

    def default_chunk(self) -> int:
        """Points per network call when the caller gives none (measured per device, core/chunking)."""
        return choose_chunk(self.device, self.members, self.decoder.config.hidden)

    @torch.no_grad()
    def predict(self, points_mm: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """Per-member probabilities [M, N] (float32); 0 outside the case's unit cube."""
        normalised = torch.from_numpy(self.frame.to_normalised(points_mm).astype(np.float32)).to(self.device)
        out = np.empty((self.members, normalised.shape[0]), dtype=np.float32)
        for start, stop, probs in run_chunked(
            lambda a, b: self.predict_normalised(normalised[a:b]), len(normalised), chunk or self.default_chunk()
        ):
            out[:, start:stop] = probs.cpu().numpy()
        return out

    @torch.no_grad()
    def predict_normalised(self, points: torch.Tensor) -> torch.Tensor:
        """Per-member probabilities [M, N] at normalised points [N, 3]; 0 outside the cube (not queried).

        One network call for all the points: the caller chooses how many (core/predict).
        """
        inside = (points.abs() < 0.5).all(-1)
        probs = torch.zeros(self.members, points.shape[0], device=points.device)
        if not bool(inside.any()):
            return probs
        query = points[inside]
        if self.fallback is not None:
            probs[:, inside] = self._interpolation_members(query.cpu().numpy()).to(points.device)
            return probs
        inputs = torch.from_numpy(self.point_inputs(query.cpu().numpy())).to(points.device)
        feats = sample_features(self.feature_grids, query[None].expand(self.feature_grids.shape[0], -1, -1))
        features = feats[0] if feats.shape[0] == 1 else feats
        member_probs = torch.sigmoid(self.decoder(inputs, features).float())
        if self.calibrated:
            assert self.calibration is not None
            head_inputs = self.point_inputs.calibration_features(query.cpu().numpy())
            member_probs = self.calibration.probabilities(head_inputs, member_probs)
        probs[:, inside] = member_probs
        return probs

    def _interpolation_members(self, points: np.ndarray) -> torch.Tensor:
        """[M, n] members of the fallback: the probit of the shape-based distance. Member m reads the distance
        shifted by its perturbation with the in-plane floor as its width; the members' mean tends to the fitted
        ``Phi(-d / sigma(x))`` (core/slices/slice_uncertainty). Without perturbations every member is that."""
        assert self.fallback is not None and self.point_inputs.field is not None
        world = self.frame.to_world(points[:, :3].astype(np.float64))
        sdf_mm = self.point_inputs.field(world).astype(np.float64)
        perturbation = self.point_inputs.perturbation
        if perturbation is None:
            probability = ndtr(-sdf_mm / np.maximum(self.fallback.sigma_mm(world), 1e-6))
            return torch.from_numpy(np.repeat(probability[None], self.members, 0).astype(np.float32))
        shifted = sdf_mm[None] + perturbation.offsets_mm(world)
        return torch.from_numpy(ndtr(-shifted / max(self.fallback.floor_mm, 1e-6)).astype(np.float32))
