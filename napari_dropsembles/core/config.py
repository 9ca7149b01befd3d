"""Frozen configs of the model parts; saved with the weights in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one occupancy network (encoder + local decoder)."""

    grid_size: int = 24  # encoder input cells per axis over the unit cube
    encoder_channels: tuple[int, int, int] = (12, 24, 48)  # U-Net levels G, G/2, G/4
    feature_channels: int = 32  # C of the feature grid the decoder samples
    hidden: int = 64  # decoder width
    blocks: int = 4  # ResNet-FC blocks in the decoder
    dropout: float = 0.1  # rate on the decoder's hidden units (after each block)
    box_padding: float = 0.1  # relative padding of the object box in the unit cube
    point_features: int = 1  # 1: the decoder also reads the shape-based interpolation at each point
    sdf_scale: float = 0.04  # that input is tanh(signed distance / (sdf_scale * cube size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        values = dict(data)
        if "encoder_channels" in values:
            values["encoder_channels"] = tuple(values["encoder_channels"])
        return cls(**values)
