"""A reconstruction request sized before anything is allocated."""

from __future__ import annotations

import math

from ..config.budget import (
    TYPICAL_CHUNK,
    check_grid,
    check_memory,
    check_output_voxels,
    check_reconstruction,
    encoder_bytes,
)
from ..volumes.frame import frame_from_observation


def check_reconstruction_request(observation, prior, config, target=None, ground_truth_shape=None) -> int:
    """Size a reconstruction from its inputs alone, before any fine-tuning: the output grid (``target``
    shape, or the observation's frame at ``config.resolution_mm``), the members and the ground truth's grid."""

    if target is not None:
        shape, spacing = tuple(target[1]), None
    else:
        spacing = float(config.resolution_mm) if config.resolution_mm else float(observation.spacing.min())
        frame = frame_from_observation(observation, prior.config.box_padding)
        size = math.ceil(frame.scale_mm / spacing)
        shape = (size, size, size)
    check_output_voxels(shape, spacing)
    model = prior.config
    encoder = encoder_bytes(model.grid_size, model.encoder_channels, model.feature_channels)
    check_memory(f"the encoder on a {model.grid_size}^3 grid", encoder, "use a prior with a smaller grid")
    estimate = encoder + check_reconstruction(
        shape,
        members=config.members,
        hidden=model.hidden,
        blocks=model.blocks,
        points_per_step=config.finetune.points_per_step,
        keep_members=config.keep_members,
        chunk=config.chunk or TYPICAL_CHUNK,
        feature_channels=model.feature_channels,
    )
    if ground_truth_shape is not None:
        check_grid(
            ground_truth_shape,
            config.members,
            keep_members=False,
            chunk=config.chunk or TYPICAL_CHUNK,
            hidden=model.hidden,
        )
    return estimate
