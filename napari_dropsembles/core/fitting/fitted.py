"""The fine-tuned ensemble: the object every query goes through (maps, previews, scores)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..networks.chunking import choose_chunk, run_chunked
from ..networks.ensemble import EnsembleDecoder
from ..networks.model import sample_features
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
        inputs = torch.from_numpy(self.point_inputs(query.cpu().numpy())).to(points.device)
        feats = sample_features(self.feature_grids, query[None].expand(self.feature_grids.shape[0], -1, -1))
        features = feats[0] if feats.shape[0] == 1 else feats
        probs[:, inside] = torch.sigmoid(self.decoder(inputs, features).float())
        return probs
