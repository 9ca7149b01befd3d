"""The four methods as recipes over the same parts (encoder, batched decoder, EWC, fine-tuning).

- ``dropsembles``: one prior, M fixed dropout masks (thinned networks), each fine-tuned.
- ``mc_dropout``: one prior fine-tuned once with dropout active, predicted with M sampled masks.
- ``deep_ensemble``: M independently pretrained priors, each fine-tuned, no masks.
- ``single``: one prior fine-tuned once, no masks (M = 1).
EWC is on when ``ewc_lambda > 0`` for every method.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .checkpoint import Prior
from .chunking import autocast, choose_chunk, fast_decoder
from .ensemble import EnsembleDecoder, sample_member_masks
from .errors import InputError
from .finetune import FinetuneConfig, finetune_steps
from .frame import Case, Frame, PointInputs
from .model import sample_features
from .progress import CancelFlag, Progress

METHODS = ("dropsembles", "mc_dropout", "deep_ensemble", "single")


@dataclass(frozen=True)
class MethodConfig:
    method: str = "dropsembles"
    members: int = 4
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0

    def validate(self, prior: Prior | None = None) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.members < 1:
            raise InputError(f"--members must be at least 1, got {self.members}")
        if self.finetune.steps < 0:
            raise InputError(f"--steps must be zero or positive, got {self.finetune.steps}")
        if self.finetune.ewc_lambda < 0:
            raise InputError(f"--ewc must be zero or positive, got {self.finetune.ewc_lambda}")
        if prior is not None and self.method == "deep_ensemble" and len(prior.models) < self.members:
            raise InputError(
                f"a deep ensemble of {self.members} members needs {self.members} independently pretrained models; "
                f"the prior {prior.name} holds {len(prior.models)} (pretrain one with --models {self.members})"
            )

    @property
    def effective_members(self) -> int:
        return 1 if self.method == "single" else self.members

    def to_dict(self) -> dict:
        return asdict(self)


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

    @torch.no_grad()
    def predict(self, points_mm: np.ndarray) -> np.ndarray:
        """Per-member probabilities [M, N] (float32); 0 outside the case's unit cube."""
        normalised = torch.from_numpy(self.frame.to_normalised(points_mm).astype(np.float32)).to(self.device)
        return self.predict_normalised(normalised).cpu().numpy()

    @torch.no_grad()
    def predict_normalised(self, points: torch.Tensor) -> torch.Tensor:
        """Per-member probabilities [M, N] at normalised points [N, 3]; 0 outside the cube (not queried)."""
        inside = (points.abs() < 0.5).all(-1)
        probs = torch.zeros(self.members, points.shape[0], device=points.device)
        if not bool(inside.any()):
            return probs
        query = points[inside]
        inputs = torch.from_numpy(self.point_inputs(query.cpu().numpy())).to(points.device)
        feats = sample_features(self.feature_grids, inputs[None].expand(self.feature_grids.shape[0], -1, -1))
        features = feats[0] if feats.shape[0] == 1 else feats
        # On the CPU the decoder runs in cache-sized sub-batches (large ones were up to 3x slower).
        n = inputs.shape[0]
        step = choose_chunk(self.device, self.members, self.decoder.config.hidden) if self.device.type == "cpu" else n
        logits = torch.empty(self.members, n, device=points.device)
        for start in range(0, n, step):
            stop = min(start + step, n)
            part = features[start:stop] if features.dim() == 2 else features[:, start:stop]
            logits[:, start:stop] = self.decoder(inputs[start:stop], part).float()
        probs[:, inside] = torch.sigmoid(logits)
        return probs


def _stack(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.cat([s[name] for s in states], 0) for name in states[0]}


def fit_steps(
    case: Case,
    prior: Prior,
    config: MethodConfig,
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, Fitted]:
    """Fine-tune the method's members on ``case``; yields Progress; returns the Fitted ensemble.

    The decoder runs in the formulation chosen for ``device`` (chunking.choose_formulation);
    ``precision`` ("fp32", "tf32", "bf16") applies on CUDA only.
    """
    config.validate(prior)
    device = torch.device(device)
    model_config = prior.config
    members = config.effective_members
    generator = torch.Generator().manual_seed(config.seed)
    sources = prior.models[:members] if config.method == "deep_ensemble" else prior.models[:1]
    grid = torch.from_numpy(case.encoder_input)[None].to(device)
    with torch.no_grad():
        feature_grids = torch.cat([m.encoder.to(device)(grid) for m in sources], 0)
    points = torch.from_numpy(case.points).to(device)
    labels = torch.from_numpy(case.labels).to(device)
    with torch.no_grad():  # observed-point features: computed once, shared by all steps
        table = sample_features(feature_grids, points[None].expand(len(sources), -1, -1))
    features = table[0] if len(sources) == 1 else table

    train_members = 1 if config.method == "mc_dropout" else members
    if config.method == "deep_ensemble":
        decoder = EnsembleDecoder.from_members(model_config, [m.decoder for m in sources])
        anchor, fisher = _stack([m.decoder for m in sources]), _stack([m.fisher for m in sources])
    else:
        decoder = EnsembleDecoder.replicate(model_config, sources[0].decoder, train_members)
        anchor, fisher = dict(sources[0].decoder), dict(sources[0].fisher)
    if config.method == "dropsembles":
        decoder.set_masks(sample_member_masks(members, model_config, generator))
    decoder = fast_decoder(decoder.to(device), device)
    anchor = {k: v.to(device) for k, v in anchor.items()}
    fisher = {k: v.to(device) for k, v in fisher.items()}
    finetune = config.finetune
    if config.method == "mc_dropout":
        finetune = FinetuneConfig(**{**asdict(finetune), "random_dropout": model_config.dropout})
    steps = finetune_steps(
        decoder,
        features,
        points,
        labels,
        finetune,
        anchor=anchor,
        fisher=fisher,
        generator=generator,
        cancel=cancel,
    )
    live = Fitted(
        method=config.method,
        decoder=decoder,
        feature_grids=feature_grids,
        frame=case.frame,
        history={},
        point_inputs=case.point_inputs,
    )
    while True:
        try:
            with autocast(device, precision):
                progress = next(steps)
        except StopIteration as done:
            history = done.value
            break
        progress.extra["live"] = live  # the members as they are now, for live previews
        yield progress
    if config.method == "mc_dropout":
        single = decoder.member(0)
        decoder = fast_decoder(EnsembleDecoder.replicate(model_config, single, members).to(device), device)
        decoder.set_masks(sample_member_masks(members, model_config, generator))
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    return Fitted(
        method=config.method,
        decoder=decoder,
        feature_grids=feature_grids,
        frame=case.frame,
        history=history,
        point_inputs=case.point_inputs,
    )
