"""Voxel encoder (3D U-Net-lite) and trilinear sampling of its feature grid (ConvONet style)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config.configs import ModelConfig


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    groups = max(1, c_out // 8)
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class VoxelEncoder(nn.Module):
    """2-channel grid (occupancy, observed mask) -> C-channel feature grid of the same size."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.encoder_channels
        self.down1 = _conv_block(2, c1)
        self.down2 = _conv_block(c1, c2)
        self.bottom = _conv_block(c2, c3)
        self.up2 = _conv_block(c3 + c2, c2)
        self.up1 = _conv_block(c2 + c1, c1)
        self.out = nn.Conv3d(c1, config.feature_channels, 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid`` [B, 2, G, G, G] -> features [B, C, G, G, G]."""
        x1 = self.down1(grid)
        x2 = self.down2(F.max_pool3d(x1, 2))
        x3 = self.bottom(F.max_pool3d(x2, 2))
        y2 = self.up2(torch.cat([F.interpolate(x3, size=x2.shape[2:], mode="trilinear"), x2], 1))
        y1 = self.up1(torch.cat([F.interpolate(y2, size=x1.shape[2:], mode="trilinear"), x1], 1))
        return self.out(y1)


def sample_features(feature_grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear features at normalised points.

    ``feature_grid`` [B, C, G0, G1, G2] over the unit cube [-0.5, 0.5]^3 (array axis a <-> coordinate a);
    ``points`` [B, N, 3 (+ extra inputs, ignored)] -> [B, N, C]. Points outside the cube get the
    border features.
    """
    # grid_sample wants (x, y, z) = (W, H, D) = (axis 2, axis 1, axis 0), in [-1, 1] over cell edges.
    coords = (points[..., :3].flip(-1) * 2.0)[:, :, None, None, :]
    sampled = F.grid_sample(feature_grid, coords, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[:, :, :, 0, 0].transpose(1, 2)
