"""Members trained together equal members trained one after another; every formulation agrees."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.fitting.case import make_case
from napari_dropsembles.core.fitting.finetune import finetune_steps
from napari_dropsembles.core.fitting.methods import fit_steps
from napari_dropsembles.core.networks.ensemble import DECODER_PARAMS, EnsembleDecoder, sample_member_masks
from napari_dropsembles.core.networks.fused_decoder import FastEnsembleDecoder, choose_formulation
from napari_dropsembles.core.querying.dense import run_to_end
from tests.conftest import TINY, make_tiny_prior, sphere_volume

MEMBERS = 4


def _data(n: int = 600, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 3 + TINY.point_features, generator=gen) - 0.5
    features = torch.randn(n, TINY.feature_channels, generator=gen)
    labels = (points[:, :3].norm(dim=1) < 0.3).float()
    return points, features, labels


def _ensemble(formulation: str, members: int = MEMBERS) -> FastEnsembleDecoder:
    base = EnsembleDecoder(TINY, members, torch.Generator().manual_seed(1))
    with torch.no_grad():
        base.fc1_w.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))  # not the identity start
    base.set_masks(sample_member_masks(members, TINY, torch.Generator().manual_seed(2)))
    return FastEnsembleDecoder.wrap(base, formulation)


@pytest.mark.parametrize("shared", [True, False])
def test_fused_forward_and_gradients_equal_batched(shared):
    batched, fused = _ensemble("batched"), _ensemble("fused")
    points, features, labels = _data()
    if not shared:
        points = points[None].repeat(MEMBERS, 1, 1) + 0.01 * torch.arange(MEMBERS)[:, None, None]
        features = torch.randn(MEMBERS, *features.shape, generator=torch.Generator().manual_seed(9))
    results = []
    for decoder in (batched, fused):
        logits = decoder(points, features)
        F.binary_cross_entropy_with_logits(logits, labels.expand_as(logits)).backward()
        results.append((logits.detach(), {name: p.grad for name, p in decoder.parameter_dict().items()}))
        with torch.no_grad():
            torch.testing.assert_close(decoder(points, features), logits.detach())
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for name in DECODER_PARAMS:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], rtol=1e-4, atol=1e-7, msg=name)


def test_reused_buffers_never_corrupt_gradients():
    """Two forwards before one backward (buffers in use get fresh ones), then steps in a row."""
    batched, fused = _ensemble("batched"), _ensemble("fused")
    points, features, labels = _data()
    for _ in range(2):
        for decoder in (batched, fused):
            decoder.zero_grad()
            first, second = decoder(points, features), decoder(points[:300] * 0.5, features[:300])
            (F.binary_cross_entropy_with_logits(first, labels.expand_as(first)) + second.square().mean()).backward()
        for name in DECODER_PARAMS:
            torch.testing.assert_close(getattr(batched, name).grad, getattr(fused, name).grad, rtol=1e-4, atol=1e-7)
    fused.eval()
    assert not fused._workspace.buffers


def test_fused_falls_back_where_it_does_not_apply():
    fused = _ensemble("fused")
    points, features, _ = _data(50)
    torch.manual_seed(0)
    a = fused(points, features, random_dropout=0.3)  # fresh per-point masks: the batched path
    torch.manual_seed(0)
    b = EnsembleDecoder.forward(fused, points, features, random_dropout=0.3)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="formulation"):
        fused.formulation = "vmap"


@pytest.mark.parametrize("formulation", ["batched", "fused"])
def test_batched_members_equal_members_trained_one_after_another(formulation):
    """Same seed -> same mini-batches; Adam and EWC are per member; early stopping is per member."""
    points, features, labels = _data()
    config = FinetuneConfig(steps=12, lr=5e-3, points_per_step=200, ewc_lambda=0.1, holdout=0.2, eval_every=4)
    together = _ensemble(formulation)
    anchor = {name: p.detach()[:1].clone() for name, p in together.parameter_dict().items()}
    gen = torch.Generator().manual_seed(11)
    fisher = {name: torch.rand(p.shape, generator=gen) + 0.5 for name, p in anchor.items()}

    def train(decoder):
        run_to_end(
            finetune_steps(
                decoder,
                features,
                points,
                labels,
                config,
                anchor=anchor,
                fisher=fisher,
                generator=torch.Generator().manual_seed(7),
            )
        )

    singles = []
    for m in range(MEMBERS):
        single = FastEnsembleDecoder.wrap(EnsembleDecoder.from_members(TINY, [together.member(m)]), formulation)
        single.set_masks(together.member_masks[m : m + 1])
        train(single)
        singles.append(single)
    train(together)
    for name in DECODER_PARAMS:
        stacked = torch.cat([getattr(s, name).detach() for s in singles])
        torch.testing.assert_close(getattr(together, name).detach(), stacked, rtol=1e-4, atol=1e-6, msg=name)


def test_both_formulations_fine_tune_to_the_same_parameters():
    points, features, labels = _data()
    config = FinetuneConfig(steps=10, lr=5e-3, points_per_step=256, ewc_lambda=0.0, holdout=0.1, eval_every=5)
    decoders = [_ensemble(f) for f in ("batched", "fused")]
    for decoder in decoders:
        run_to_end(
            finetune_steps(decoder, features, points, labels, config, generator=torch.Generator().manual_seed(3))
        )
    for name in DECODER_PARAMS:
        torch.testing.assert_close(getattr(decoders[0], name), getattr(decoders[1], name), rtol=1e-4, atol=1e-6)


def test_fit_uses_the_formulation_chosen_for_the_device():
    assert choose_formulation("cpu") == "fused"
    assert choose_formulation(torch.device("cuda")) == "batched"
    prior = make_tiny_prior()
    case = make_case(sphere_volume(), TINY)
    config = ReconstructionConfig(members=2, finetune=FinetuneConfig(steps=2, points_per_step=128))
    fitted = run_to_end(fit_steps(case, prior, config, device="cpu"))
    assert isinstance(fitted.decoder, EnsembleDecoder) and fitted.decoder.formulation == "fused"
    for method in ("mc_dropout", "single"):
        other = ReconstructionConfig(method=method, members=2, finetune=config.finetune)
        fitted = run_to_end(fit_steps(case, prior, other))
        assert fitted.decoder.formulation == "fused"
