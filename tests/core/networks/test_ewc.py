"""EWC: the Fisher estimate and the penalty's pull toward the pretrained anchor."""

from __future__ import annotations

import torch

from napari_dropsembles.core.config.configs import FinetuneConfig
from napari_dropsembles.core.fitting.finetune import finetune_steps
from napari_dropsembles.core.networks.ensemble import EnsembleDecoder
from napari_dropsembles.core.networks.ewc import diagonal_fisher, ewc_penalty
from napari_dropsembles.core.querying.dense import run_to_end
from tests.conftest import TINY


def _batches():
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(100, 3 + TINY.point_features, generator=gen) - 0.5,
            torch.randn(100, TINY.feature_channels, generator=gen),
        )
    ]


def test_fisher_is_mean_one_nonnegative_and_matches_a_hand_computed_entry():
    decoder = EnsembleDecoder(TINY, 1)
    batches = _batches()
    fisher = diagonal_fisher(decoder, batches, chunk=37)
    flat = torch.cat([f.flatten() for f in fisher.values()])
    assert (flat >= 0).all()
    assert abs(flat.mean().item() - 1.0) < 1e-5
    # The output bias: d logit / d out_b = 1, so F_raw(out_b) = mean sigma (1 - sigma).
    points, features = batches[0]
    with torch.no_grad():
        p = torch.sigmoid(decoder(points, features)[0])
    raw_bias = (p * (1 - p)).mean()
    raw_mean = raw_bias / fisher["out_b"].item()
    # Recompute one weight entry by autograd, per point.
    total = 0.0
    for i in range(points.shape[0]):
        decoder.zero_grad()
        decoder(points[i : i + 1], features[i : i + 1])[0, 0].backward()
        total += (p[i] * (1 - p[i])) * decoder.fc_p_w.grad[0, 1, 2] ** 2
    expected = total / points.shape[0] / raw_mean
    torch.testing.assert_close(fisher["fc_p_w"][0, 1, 2], expected, rtol=1e-4, atol=1e-6)


def test_penalty_is_zero_at_anchor_and_per_member():
    decoder = EnsembleDecoder(TINY, 2)
    anchor = {name: p.detach().clone() for name, p in decoder.parameter_dict().items()}
    fisher = {name: torch.ones_like(p[:1]) for name, p in anchor.items()}
    assert torch.equal(ewc_penalty(decoder, anchor, fisher), torch.zeros(2))
    with torch.no_grad():
        decoder.out_b[1] += 2.0
    assert torch.allclose(ewc_penalty(decoder, anchor, fisher), torch.tensor([0.0, 4.0]))


def _drift(ewc_lambda: float) -> float:
    decoder = EnsembleDecoder(TINY, 1, torch.Generator().manual_seed(3))
    anchor = {name: p.detach().clone() for name, p in decoder.parameter_dict().items()}
    fisher = {name: torch.ones_like(p) for name, p in anchor.items()}
    gen = torch.Generator().manual_seed(4)
    points = torch.rand(500, 3 + TINY.point_features, generator=gen) - 0.5
    features = torch.randn(500, TINY.feature_channels, generator=gen)
    labels = (points[:, 0] > 0).float()
    config = FinetuneConfig(steps=40, lr=1e-2, points_per_step=256, ewc_lambda=ewc_lambda, holdout=0.0)
    run_to_end(finetune_steps(decoder, features, points, labels, config, anchor=anchor, fisher=fisher))
    return float(ewc_penalty(decoder, anchor, fisher)[0])


def test_ewc_pulls_toward_the_anchor():
    free, held = _drift(0.0), _drift(1.0)
    assert held < 0.5 * free
