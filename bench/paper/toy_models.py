"""Small 2D models for the toy and digits studies, built from the same parts as the 3D methods.

Part of ``bench/paper`` (not of the product). The decoder is the batched
:class:`~napari_dropsembles.core.ensemble.EnsembleDecoder` (ResNet-FC blocks, fixed per-member
masks) fed with points ``(x, y, 0)`` (``ModelConfig.point_features = 0``) and a per-point feature:

- toy 2D: a constant feature (``feature_channels = 1``, value 1): a plain coordinate MLP;
- digits: features of a small 2D conv encoder of the observed image (2 channels: observed values,
  observed mask), sampled bilinearly at the point (the 2D analogue of ConvONet's local features).

Pretraining (BCE with logits, standard dropout on the decoder's hidden units), the EWC Fisher
(``core.ewc.diagonal_fisher``: true Bernoulli Fisher, mean 1), fine-tuning (``core.finetune.finetune_steps``)
and the four methods are the method objects of ``core.methods``; only the encoder and the point
sampling are 2D.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from napari_dropsembles.core.config.configs import FinetuneConfig, ModelConfig
from napari_dropsembles.core.config.progress import drive
from napari_dropsembles.core.fitting.finetune import finetune_steps
from napari_dropsembles.core.fitting.methods import get_method
from napari_dropsembles.core.networks.checkpoint import PretrainedModel, Prior
from napari_dropsembles.core.networks.ensemble import EnsembleDecoder
from napari_dropsembles.core.networks.ewc import diagonal_fisher

ENCODER_INPUT_CHANNELS = 2


def points_3(xy: torch.Tensor) -> torch.Tensor:
    """2D points [..., 2] -> decoder inputs [..., 3] = (x, y, 0)."""
    return torch.cat([xy, torch.zeros_like(xy[..., :1])], -1)


class ImageEncoder2D(nn.Module):
    """[B, 2, H, W] (values, observed mask) -> [B, C, H, W] features (a two-level U-Net-lite)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c1, c2 = config.encoder_channels[0], config.encoder_channels[1]
        self.down = nn.Sequential(nn.Conv2d(ENCODER_INPUT_CHANNELS, c1, 3, padding=1), nn.ReLU(inplace=True))
        self.bottom = nn.Sequential(
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU()
        )
        self.up = nn.Sequential(nn.Conv2d(c1 + c2, c1, 3, padding=1), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(c1, config.feature_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x1 = self.down(image)
        x2 = self.bottom(F.max_pool2d(x1, 2))
        y = self.up(torch.cat([F.interpolate(x2, size=x1.shape[2:], mode="bilinear"), x1], 1))
        return self.out(y)


def sample_features_2d(feature_grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear features [B, N, C] at normalised points [B, N, 2+] (x along W, y along H, in [-0.5, 0.5])."""
    coords = (points[..., :2] * 2.0)[:, :, None, :]
    sampled = F.grid_sample(feature_grid, coords, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[:, :, :, 0].transpose(1, 2)


def pixel_points(height: int, width: int) -> np.ndarray:
    """Normalised (x, y) of the pixel centres of an H x W image, C order: [H*W, 2] float32."""
    ys = (np.arange(height) + 0.5) / height - 0.5
    xs = (np.arange(width) + 0.5) / width - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)


# ----------------------------------------------------------------------------------------- cost model


def decoder_macs_per_point(config: ModelConfig) -> int:
    """Multiply-accumulates of one member's decoder at one point (weights only; biases, ReLU ignored).

    ``(3 + k) h`` (fc_p) + ``blocks (C h + 2 h^2)`` (fc_c, fc0, fc1) + ``h`` (fc_out).
    """
    h, c, k = config.hidden, config.feature_channels, config.blocks
    return (3 + config.point_features) * h + k * (c * h + 2 * h * h) + h


def conv_macs(module: nn.Module, example: torch.Tensor) -> int:
    """MACs of every Conv (1D/2D/3D) layer of ``module`` for one input ``example`` (batch 1), by
    ``out_elements * in_channels / groups * kernel_volume`` counted with forward hooks."""
    total = [0]

    def hook(layer, _inputs, output):
        kernel = int(np.prod(layer.kernel_size))
        total[0] += int(output[0].numel()) * (layer.in_channels // layer.groups) * kernel

    handles = [
        m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ]
    try:
        with torch.no_grad():
            module(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


TRAIN_FACTOR = 3  # one training step = forward + backward ~ 3 forward passes (backward ~ 2x forward)


def finetune_flops(config: ModelConfig, history: dict, steps: int, points_per_step: int, members_trained: int,
                   eval_every: int = 10) -> float:
    """FLOPs (2 x MACs) of fine-tuning ``members_trained`` decoders: training steps + held-out evaluations."""
    dec = 2.0 * decoder_macs_per_point(config)
    train_points = int(history.get("train_points", points_per_step))
    hold = int(history.get("holdout_points", 0))
    batch = min(points_per_step, max(train_points, 1))
    evaluations = (steps // eval_every + 2) if hold else 0
    return members_trained * dec * (TRAIN_FACTOR * steps * batch + evaluations * hold)


# ------------------------------------------------------------------------------------------ pretraining


@dataclass(frozen=True)
class Pretrain2DConfig:
    steps: int = 600
    lr: float = 3e-3
    batch_points: int = 512  # toy: points per step; digits: points per image
    batch_images: int = 16  # digits only
    fisher_points: int = 2048
    seed: int = 0


@dataclass(eq=False)
class Pretrained2D:
    """One pretrained 2D network (encoder may be None) and its measured cost."""

    model: PretrainedModel
    wall_s: float
    flops: float


def _finish(decoder: EnsembleDecoder, encoder, fisher_batches, started: float, flops: float) -> Pretrained2D:
    decoder.eval()
    fisher = diagonal_fisher(decoder, fisher_batches)
    fisher_points = sum(int(p.shape[0]) for p, _ in fisher_batches)
    flops += fisher_points * 2.0 * decoder_macs_per_point(decoder.config) * TRAIN_FACTOR
    state = {name: p.detach().clone() for name, p in decoder.parameter_dict().items()}
    model = PretrainedModel(encoder=encoder, decoder=state, fisher=fisher)
    return Pretrained2D(model=model, wall_s=time.perf_counter() - started, flops=flops)


def pretrain_toy(config: ModelConfig, x: np.ndarray, y: np.ndarray, train: Pretrain2DConfig) -> Pretrained2D:
    """A coordinate MLP (constant feature) trained on dataset A ``(x [N, 2] normalised, y [N])`` with dropout."""
    started = time.perf_counter()
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    decoder = EnsembleDecoder(config, 1, torch.Generator().manual_seed(train.seed))
    optimiser = torch.optim.Adam(decoder.parameters(), lr=train.lr)
    pts = points_3(torch.from_numpy(np.asarray(x, np.float32)))
    labels = torch.from_numpy(np.asarray(y, np.float32))
    ones = torch.ones(pts.shape[0], config.feature_channels)
    batch = min(train.batch_points, pts.shape[0])
    for _ in range(train.steps):
        idx = torch.randint(pts.shape[0], (batch,), generator=gen)
        logits = decoder(pts[idx], ones[idx], random_dropout=config.dropout)[0]
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    flops = train.steps * batch * 2.0 * decoder_macs_per_point(config) * TRAIN_FACTOR
    n_fisher = min(train.fisher_points, pts.shape[0])
    return _finish(decoder, None, [(pts[:n_fisher], ones[:n_fisher])], started, flops)


def pretrain_digits(
    config: ModelConfig,
    images: np.ndarray,
    make_input: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    train: Pretrain2DConfig,
    threshold: float = 0.5,
) -> Pretrained2D:
    """Encoder + decoder trained on complete digits ``images [N, H, W]``: the encoder sees
    ``make_input(image, rng) -> [2, H, W]`` (complete or randomly sparsified), targets are the
    complete digit's occupancy (intensity >= threshold) at the pixel centres."""
    started = time.perf_counter()
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    n, h, w = images.shape
    encoder = ImageEncoder2D(config)
    decoder = EnsembleDecoder(config, 1, torch.Generator().manual_seed(train.seed))
    optimiser = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=train.lr)
    grid_pts = torch.from_numpy(pixel_points(h, w))
    occupancy = torch.from_numpy((images >= threshold).reshape(n, -1).astype(np.float32))
    batch_points = min(train.batch_points, h * w)
    for _ in range(train.steps):
        which = rng.integers(n, size=train.batch_images)
        inputs = torch.from_numpy(np.stack([make_input(images[i], rng) for i in which]))
        pick = torch.randint(h * w, (train.batch_images, batch_points), generator=gen)
        pts = grid_pts[pick]  # [B, P, 2]
        jitter = (torch.rand(pts.shape, generator=gen) - 0.5) / torch.tensor([w, h])  # within the pixel
        pts = pts + jitter
        labels = torch.gather(occupancy[torch.from_numpy(which)], 1, pick)
        feats = sample_features_2d(encoder(inputs), pts)
        logits = decoder(points_3(pts).reshape(-1, 3), feats.reshape(-1, feats.shape[-1]),
                         random_dropout=config.dropout)
        loss = F.binary_cross_entropy_with_logits(logits.view(labels.shape), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    encoder.eval()
    enc_macs = conv_macs(encoder, torch.zeros(1, ENCODER_INPUT_CHANNELS, h, w))
    flops = train.steps * TRAIN_FACTOR * 2.0 * train.batch_images * (
        enc_macs + batch_points * decoder_macs_per_point(config)
    )
    fisher_batches = []
    with torch.no_grad():
        per_image = max(1, train.fisher_points // (h * w))
        for i in range(min(per_image, n)):
            feats = sample_features_2d(encoder(torch.from_numpy(make_input(images[-1 - i], rng))[None]), grid_pts[None])
            fisher_batches.append((points_3(grid_pts), feats[0]))
        flops += len(fisher_batches) * 2.0 * enc_macs
    return _finish(decoder, encoder, fisher_batches, started, flops)


# ------------------------------------------------------------------------------------ the four methods


@dataclass(eq=False)
class Fitted2D:
    method: str
    decoder: EnsembleDecoder
    feature_fn: Callable[[torch.Tensor], torch.Tensor]  # normalised points [N, 2] -> [N, C] or [M, N, C]
    history: dict
    finetune_wall_s: float
    finetune_flops: float

    @torch.no_grad()
    def predict(self, xy: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """Per-member probabilities [M, N] at normalised points [N, 2]."""
        pts = torch.from_numpy(np.asarray(xy, np.float32))
        out = []
        for start in range(0, pts.shape[0], chunk):
            p = pts[start : start + chunk]
            out.append(torch.sigmoid(self.decoder(points_3(p), self.feature_fn(p))))
        return torch.cat(out, 1).numpy()

    def predict_flops(self, n_points: int) -> float:
        return float(n_points) * self.decoder.members * 2.0 * decoder_macs_per_point(self.decoder.config)


def fit_2d(
    method: str,
    members: int,
    models: list[PretrainedModel],
    config: ModelConfig,
    observed_xy: np.ndarray,
    observed_labels: np.ndarray,
    finetune: FinetuneConfig,
    *,
    encoder_input: np.ndarray | None = None,
    seed: int = 0,
) -> Fitted2D:
    """``core.methods.fit_steps`` for 2D models: the same method objects, 2D features.

    ``encoder_input`` [2, H, W] is the observation given to each source model's encoder (digits);
    None means a constant feature (toy).
    """
    recipe = get_method(method)
    started = time.perf_counter()
    members = recipe.effective_members(members)
    generator = torch.Generator().manual_seed(seed)
    sources = recipe.sources(Prior(config, list(models)), members)
    flops = 0.0
    if encoder_input is not None:
        image = torch.from_numpy(np.asarray(encoder_input, np.float32))[None]
        with torch.no_grad():
            grids = torch.cat([m.encoder(image) for m in sources], 0)  # [S, C, H, W]
        flops += len(sources) * 2.0 * conv_macs(sources[0].encoder, image)

        def feature_fn(p: torch.Tensor) -> torch.Tensor:
            feats = sample_features_2d(grids, p[None].expand(grids.shape[0], -1, -1))
            return feats[0] if feats.shape[0] == 1 else feats
    else:

        def feature_fn(p: torch.Tensor) -> torch.Tensor:
            return torch.ones(p.shape[0], config.feature_channels)

    points = torch.from_numpy(np.asarray(observed_xy, np.float32))
    labels = torch.from_numpy(np.asarray(observed_labels, np.float32))
    with torch.no_grad():
        features = feature_fn(points)
    decoder, anchor, fisher = recipe.build(config, sources, members, generator)
    trained_members = decoder.members
    finetune = recipe.finetune_config(finetune, config)
    history = drive(
        finetune_steps(decoder, features, points_3(points), labels, finetune, anchor=anchor, fisher=fisher,
                       generator=generator)
    )
    decoder = recipe.finish(decoder, config, members, generator)
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    flops += finetune_flops(config, history, finetune.steps, finetune.points_per_step, trained_members,
                            finetune.eval_every)
    return Fitted2D(method, decoder, feature_fn, history, time.perf_counter() - started, flops)


def describe(config: ModelConfig, train: Pretrain2DConfig, finetune: FinetuneConfig) -> dict:
    return {"model": config.to_dict(), "pretrain": asdict(train), "finetune": asdict(finetune)}
