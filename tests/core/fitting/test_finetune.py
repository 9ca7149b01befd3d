"""Fine-tuning: members independent, cancel within one step, early stopping on held-out voxels."""

from __future__ import annotations

import pytest
import torch

from napari_dropsembles.core.config.configs import FinetuneConfig
from napari_dropsembles.core.config.errors import Cancelled
from napari_dropsembles.core.config.progress import CancelToken
from napari_dropsembles.core.fitting.finetune import finetune_steps
from napari_dropsembles.core.networks.ensemble import DECODER_PARAMS, EnsembleDecoder, sample_member_masks
from napari_dropsembles.core.querying.dense import run_to_end
from tests.conftest import TINY


def _data(n: int = 800):
    gen = torch.Generator().manual_seed(5)
    points = torch.rand(n, 3 + TINY.point_features, generator=gen) - 0.5
    features = torch.randn(n, TINY.feature_channels, generator=gen)
    labels = (points.norm(dim=1) < 0.3).float()
    return points, features, labels


def _train(labels, steps=15, members=2):
    decoder = EnsembleDecoder(TINY, members, torch.Generator().manual_seed(1))
    decoder.set_masks(sample_member_masks(members, TINY, torch.Generator().manual_seed(2)))
    points, features, _ = _data()
    config = FinetuneConfig(steps=steps, lr=1e-2, points_per_step=128, holdout=0.0, ewc_lambda=0.0)
    run_to_end(finetune_steps(decoder, features, points, labels, config, generator=torch.Generator().manual_seed(0)))
    return decoder


def test_changing_member_0_data_leaves_member_1_unchanged():
    _, _, labels = _data()
    per_member = labels[None].repeat(2, 1)
    changed = per_member.clone()
    changed[0] = 1 - changed[0]
    a, b = _train(per_member), _train(changed)
    for name in DECODER_PARAMS:
        assert torch.equal(getattr(a, name)[1], getattr(b, name)[1]), name
        assert not torch.equal(getattr(a, name)[0], getattr(b, name)[0]) or name == "fc0_w", name


def test_training_lowers_the_loss():
    points, features, labels = _data()
    decoder = EnsembleDecoder(TINY, 2)
    config = FinetuneConfig(steps=60, lr=1e-2, points_per_step=256, holdout=0.0, ewc_lambda=0.0)
    progress = list(_collect(finetune_steps(decoder, features, points, labels, config)))
    assert progress[-1].loss < 0.8 * progress[0].loss
    assert [p.step for p in progress] == list(range(1, 61))


def _collect(steps):
    while True:
        try:
            yield next(steps)
        except StopIteration:
            return


def test_cancel_stops_within_one_step():
    points, features, labels = _data()
    decoder = EnsembleDecoder(TINY, 2)
    cancel = CancelToken()
    steps = finetune_steps(decoder, features, points, labels, FinetuneConfig(steps=100), cancel=cancel)
    seen = [next(steps), next(steps)]
    cancel.set()
    with pytest.raises(Cancelled):
        next(steps)
    assert seen[-1].step == 2


def test_early_stopping_restores_each_members_best_holdout_state():
    points, features, labels = _data()
    decoder = EnsembleDecoder(TINY, 2)
    config = FinetuneConfig(steps=30, lr=5e-2, points_per_step=64, holdout=0.25, eval_every=5, ewc_lambda=0.0)
    history = run_to_end(finetune_steps(decoder, features, points, labels, config))
    evaluated = {step: losses for step, losses in history["holdout"]}
    for m in range(2):
        best_step = history["best_step"][m]
        assert evaluated[best_step][m] == pytest.approx(min(v[m] for v in evaluated.values()))
        assert history["best_holdout"][m] == pytest.approx(evaluated[best_step][m])
    assert history["holdout_points"] == 200
