"""M local decoders as one batched module: stacked weights, fixed per-member dropout masks.

Member ``m`` computes (ConvONet ``LocalDecoder`` with ResNet-FC blocks)::

    net = fc_p(x)
    for k in blocks: net = net + fc_c[k](c); net = net + fc1(relu(fc0(relu(net)))); net = net * mask[m, k]
    logit = fc_out(relu(net))

Masks hold 0 or 1/(1-p) (inverted dropout, as in pretraining); all-ones means "no dropout".
Members never share parameters or masks, so their gradients are independent.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config.configs import ModelConfig

DECODER_PARAMS = ("fc_p_w", "fc_p_b", "fc_c_w", "fc_c_b", "fc0_w", "fc0_b", "fc1_w", "fc1_b", "out_w", "out_b")


def _decoder_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Per-member parameter shapes (the leading member axis is added on top)."""
    h, c, k = config.hidden, config.feature_channels, config.blocks
    return {
        "fc_p_w": (3 + config.point_features, h),
        "fc_p_b": (h,),
        "fc_c_w": (k, c, h),
        "fc_c_b": (k, h),
        "fc0_w": (k, h, h),
        "fc0_b": (k, h),
        "fc1_w": (k, h, h),
        "fc1_b": (k, h),
        "out_w": (h, 1),
        "out_b": (1,),
    }


def sample_member_masks(
    members: int, config: ModelConfig, generator: torch.Generator, rate: float | None = None
) -> torch.Tensor:
    """Fixed Bernoulli(1-p) masks [M, blocks, hidden], scaled by 1/(1-p); every layer keeps >= 1 unit."""
    p = config.dropout if rate is None else rate
    if p <= 0:
        return torch.ones(members, config.blocks, config.hidden)
    keep = torch.rand(members, config.blocks, config.hidden, generator=generator) >= p
    empty = ~keep.any(-1)
    keep[..., 0] |= empty  # never drop a whole layer
    return keep.float() / (1.0 - p)


class EnsembleDecoder(nn.Module):
    """``members`` decoders with parameters stacked on a leading axis."""

    def __init__(self, config: ModelConfig, members: int = 1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.members = members
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        for name, shape in _decoder_shapes(config).items():
            fan_in = shape[-2] if name.endswith("_w") else shape[-1]
            bound = 1.0 / math.sqrt(fan_in)
            value = (torch.rand((members, *shape), generator=gen) * 2 - 1) * bound
            if name == "fc1_w":
                value.zero_()  # ResNet blocks start as identity (ConvONet init)
            self.register_parameter(name, nn.Parameter(value))
        self.register_buffer("member_masks", torch.ones(members, config.blocks, config.hidden))

    def set_masks(self, masks: torch.Tensor) -> None:
        """Fix the members' dropout masks [M, blocks, hidden] (values 0 or 1/(1-p))."""
        self.member_masks.copy_(masks.to(self.member_masks))

    def conditioning(self, features: torch.Tensor) -> torch.Tensor:
        """Per-block feature terms ``fc_c[k](c)`` -> [blocks, M, N, hidden].

        ``features`` is [N, C] (shared by all members: one matmul for all) or [M, N, C].
        """
        m, k, h = self.members, self.config.blocks, self.config.hidden
        weight = self.fc_c_w.permute(2, 1, 0, 3)  # [C, K, M, H]
        if features.dim() == 2:
            out = features @ weight.reshape(features.shape[1], k * m * h)  # [N, K*M*H]
            out = out.view(-1, k, m, h).permute(1, 2, 0, 3)
        else:
            per_member = self.fc_c_w.permute(0, 2, 1, 3).reshape(m, -1, k * h)  # [M, C, K*H]
            out = torch.bmm(features, per_member).view(m, -1, k, h).permute(2, 0, 1, 3)
        return out + self.fc_c_b.permute(1, 0, 2)[:, :, None, :]

    def forward(self, points: torch.Tensor, features: torch.Tensor, random_dropout: float = 0.0) -> torch.Tensor:
        """Logits [M, N] for ``points`` ([N, 3 + point_features] shared or [M, N, ...]) and their features.

        ``random_dropout`` > 0 draws fresh per-point masks (standard dropout, used in pretraining
        and MC-dropout fine-tuning) instead of the fixed member masks.
        """
        cond = self.conditioning(features)
        # [M, N, H]: one matmul shared by all members, or one per member
        net = torch.matmul(points, self.fc_p_w) if points.dim() == 2 else torch.bmm(points, self.fc_p_w)
        net = net + self.fc_p_b[:, None, :]
        for k in range(self.config.blocks):
            net = net + cond[k]
            hidden = torch.baddbmm(self.fc0_b[:, k, None, :], F.relu(net), self.fc0_w[:, k])
            net = net + torch.baddbmm(self.fc1_b[:, k, None, :], F.relu(hidden), self.fc1_w[:, k])
            if random_dropout > 0:
                net = F.dropout(net, random_dropout, training=True)
            else:
                net = net * self.member_masks[:, k, None, :]
        logits = torch.baddbmm(self.out_b[:, None, :], F.relu(net), self.out_w)
        return logits[..., 0]

    def parameter_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in DECODER_PARAMS}

    def member(self, index: int) -> dict[str, torch.Tensor]:
        """Detached copy of one member's parameters (leading axis of size 1)."""
        return {name: p[index : index + 1].detach().clone() for name, p in self.parameter_dict().items()}

    @classmethod
    def from_members(cls, config: ModelConfig, states: list[dict[str, torch.Tensor]]) -> EnsembleDecoder:
        """Stack single-member parameter dicts (each with leading axis 1) into one ensemble."""
        decoder = cls(config, members=len(states))
        with torch.no_grad():
            for name in DECODER_PARAMS:
                getattr(decoder, name).copy_(torch.cat([s[name] for s in states], 0))
        return decoder

    @classmethod
    def replicate(cls, config: ModelConfig, state: dict[str, torch.Tensor], members: int) -> EnsembleDecoder:
        """M copies of one decoder (the starting point of Dropsembles and MC dropout)."""
        return cls.from_members(config, [state] * members)
