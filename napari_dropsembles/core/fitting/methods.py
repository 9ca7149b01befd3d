"""The methods as objects over the same parts (encoder, batched decoder, EWC, fine-tuning).

- ``dropsembles``: one prior, M fixed dropout masks (thinned networks), each fine-tuned.
- ``mc_dropout``: one prior fine-tuned once with dropout active, predicted with M sampled masks.
- ``deep_ensemble``: M independently pretrained priors, each fine-tuned, no masks.
- ``single``: one prior fine-tuned once, no masks (M = 1).
EWC is on when ``finetune.ewc_lambda > 0`` for every method.

A method is one :class:`Method` subclass registered in :data:`REGISTRY`: which pretrained models
it starts from, the decoder it fine-tunes, its fine-tuning settings, and how it finishes.
:func:`fit_steps` runs any of them. A new method (or member-diversity scheme) is one class.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from functools import partial

import torch

from ..config.configs import METHODS, FinetuneConfig, ModelConfig, ReconstructionConfig
from ..config.errors import InputError
from ..config.progress import CancelFlag, Progress, relay
from ..networks.checkpoint import PretrainedModel, Prior
from ..networks.chunking import autocast
from ..networks.ensemble import EnsembleDecoder, sample_member_masks
from ..networks.fused_decoder import fast_decoder
from ..networks.model import sample_features
from .case import Case
from .finetune import finetune_steps
from .fitted import Fitted

Tensors = dict[str, torch.Tensor]


class Method:
    """One way to build, fine-tune and finish an ensemble of ``members`` decoders.

    The base class is a plain ensemble: ``members`` copies of the first pretrained decoder, no
    masks, the fine-tuning config as given, nothing to finish.
    """

    name = ""
    label = ""  # how front ends show it

    def effective_members(self, members: int) -> int:
        """How many members the method predicts with when ``members`` are asked for."""
        return members

    def sources(self, prior: Prior, members: int) -> list[PretrainedModel]:
        """The pretrained models the members start from (their encoders give the feature grids)."""
        return prior.models[:1]

    def build(
        self, config: ModelConfig, sources: list[PretrainedModel], members: int, generator: torch.Generator
    ) -> tuple[EnsembleDecoder, Tensors, Tensors]:
        """The decoder to fine-tune, and the EWC anchor and Fisher diagonal it is held to."""
        decoder = EnsembleDecoder.replicate(config, sources[0].decoder, members)
        return decoder, dict(sources[0].decoder), dict(sources[0].fisher)

    def finetune_config(self, finetune: FinetuneConfig, config: ModelConfig) -> FinetuneConfig:
        return finetune

    def finish(
        self, decoder: EnsembleDecoder, config: ModelConfig, members: int, generator: torch.Generator
    ) -> EnsembleDecoder:
        """The decoder that predicts, from the one fine-tuned (a new one is moved to its device by the caller)."""
        return decoder


class Dropsembles(Method):
    """One prior, M fixed dropout masks (thinned networks), each fine-tuned."""

    name = "dropsembles"
    label = "Dropsembles"

    def build(self, config, sources, members, generator):
        decoder, anchor, fisher = super().build(config, sources, members, generator)
        decoder.set_masks(sample_member_masks(members, config, generator))
        return decoder, anchor, fisher


class MCDropout(Method):
    """One network fine-tuned with dropout active, predicted with M sampled masks."""

    name = "mc_dropout"
    label = "MC dropout"

    def build(self, config, sources, members, generator):
        return super().build(config, sources, 1, generator)

    def finetune_config(self, finetune, config):
        return replace(finetune, random_dropout=config.dropout)

    def finish(self, decoder, config, members, generator):
        sampled = EnsembleDecoder.replicate(config, decoder.member(0), members)
        sampled.set_masks(sample_member_masks(members, config, generator))
        return sampled


class DeepEnsemble(Method):
    """M independently pretrained networks, each fine-tuned, no masks."""

    name = "deep_ensemble"
    label = "deep ensemble"

    def sources(self, prior, members):
        if len(prior.models) < members:
            raise InputError(
                f"a deep ensemble of {members} members needs {members} independently pretrained models; "
                f"the prior {prior.name} holds {len(prior.models)} (pretrain one with {members} models)"
            )
        return prior.models[:members]

    def build(self, config, sources, members, generator):
        decoder = EnsembleDecoder.from_members(config, [m.decoder for m in sources])
        return decoder, _stack([m.decoder for m in sources]), _stack([m.fisher for m in sources])


class Single(Method):
    """One network fine-tuned, no masks (M = 1)."""

    name = "single"
    label = "single network"

    def effective_members(self, members):
        return 1


REGISTRY: dict[str, Method] = {m.name: m for m in (Dropsembles(), MCDropout(), DeepEnsemble(), Single())}


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def check_prior(config: ReconstructionConfig, prior: Prior) -> None:
    """Raise when ``prior`` cannot serve ``config`` (a deep ensemble needs M pretrained models)."""
    if not isinstance(config, ReconstructionConfig):
        raise InputError(f"the config must be a ReconstructionConfig, got {type(config).__name__}")
    if not isinstance(prior, Prior):
        raise InputError(f"the prior must be a Prior (load one with load_prior(path)), got {type(prior).__name__}")
    method = get_method(config.method)
    method.sources(prior, method.effective_members(config.members))


def _stack(states: list[Tensors]) -> Tensors:
    return {name: torch.cat([s[name] for s in states], 0) for name in states[0]}


def fit_steps(
    case: Case,
    prior: Prior,
    config: ReconstructionConfig,
    *,
    device: torch.device | str = "cpu",
    cancel: CancelFlag | None = None,
) -> Generator[Progress, None, Fitted]:
    """Fine-tune the method's members on ``case``; yields Progress; returns the Fitted ensemble.

    The decoder runs in the formulation chosen for ``device`` (fused_decoder.choose_formulation);
    ``config.precision`` ("fp32", "tf32", "bf16") applies on CUDA only.
    """
    method = get_method(config.method)
    device = torch.device(device)
    model_config = prior.config
    members = method.effective_members(config.members)
    generator = torch.Generator().manual_seed(config.seed)
    sources = method.sources(prior, members)
    grid = torch.from_numpy(case.encoder_input)[None].to(device)
    with torch.no_grad():
        feature_grids = torch.cat([m.encoder.to(device)(grid) for m in sources], 0)
    points = torch.from_numpy(case.points).to(device)
    labels = torch.from_numpy(case.labels).to(device)
    with torch.no_grad():  # observed-point features: computed once, shared by all steps
        table = sample_features(feature_grids, points[None].expand(len(sources), -1, -1))
    features = table[0] if len(sources) == 1 else table

    decoder, anchor, fisher = method.build(model_config, sources, members, generator)
    decoder = fast_decoder(decoder.to(device), device)
    anchor = {k: v.to(device) for k, v in anchor.items()}
    fisher = {k: v.to(device) for k, v in fisher.items()}
    steps = finetune_steps(
        decoder,
        features,
        points,
        labels,
        method.finetune_config(config.finetune, model_config),
        anchor=anchor,
        fisher=fisher,
        generator=generator,
        cancel=cancel,
    )
    live = Fitted(config.method, decoder, feature_grids, case.frame, {}, case.point_inputs, prior.calibration)

    def show_live(progress: Progress) -> None:
        progress.extra["live"] = live  # the members as they are now, for live previews

    history = yield from relay(steps, show_live, around=partial(autocast, device, config.precision))
    finished = method.finish(decoder, model_config, members, generator)
    if finished is not decoder:
        decoder = fast_decoder(finished.to(device), device)
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    return Fitted(config.method, decoder, feature_grids, case.frame, history, case.point_inputs, prior.calibration)
