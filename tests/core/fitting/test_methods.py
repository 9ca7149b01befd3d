"""Methods are objects in one table: each builds, fine-tunes and finishes its members; a new one is one class."""

from __future__ import annotations

import pytest
import torch

from napari_dropsembles.core.config import configs
from napari_dropsembles.core.config.configs import METHODS, FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import ConfigError, InputError
from napari_dropsembles.core.config.progress import drive
from napari_dropsembles.core.fitting.case import make_case
from napari_dropsembles.core.fitting.methods import REGISTRY, Method, check_prior, fit_steps, get_method
from tests.conftest import TINY, make_tiny_prior, sphere_volume

QUICK = FinetuneConfig(steps=2, points_per_step=128)


def test_the_table_names_every_method_once():
    assert METHODS == ("dropsembles", "mc_dropout", "deep_ensemble", "single")
    assert all(REGISTRY[name].name == name for name in METHODS)
    with pytest.raises(InputError, match="unknown method 'bagging'"):
        get_method("bagging")


@pytest.mark.parametrize(
    "method, members, masked, trained",
    [("dropsembles", 3, True, 3), ("mc_dropout", 3, True, 1), ("deep_ensemble", 2, False, 2), ("single", 3, False, 1)],
)
def test_each_method_builds_and_finishes_its_own_members(method, members, masked, trained):
    prior = make_tiny_prior(models=2)
    recipe = get_method(method)
    effective = recipe.effective_members(members)
    generator = torch.Generator().manual_seed(0)
    sources = recipe.sources(prior, effective)
    decoder, anchor, fisher = recipe.build(TINY, sources, effective, generator)
    assert decoder.members == trained
    assert anchor.keys() == fisher.keys() and anchor["fc_p_w"].shape[0] == len(sources)
    tuned = recipe.finetune_config(QUICK, TINY)
    assert tuned.random_dropout == (TINY.dropout if method == "mc_dropout" else 0.0)
    final = recipe.finish(decoder, TINY, effective, generator)
    assert final.members == effective
    assert bool((final.member_masks != 1).any()) == masked


def test_a_deep_ensemble_needs_one_pretrained_model_per_member():
    config = ReconstructionConfig(method="deep_ensemble", members=3)
    with pytest.raises(InputError, match="needs 3 independently pretrained models"):
        check_prior(config, make_tiny_prior(models=2))
    check_prior(config, make_tiny_prior(models=3))
    with pytest.raises(InputError, match="the prior must be a Prior"):
        check_prior(config, None)
    with pytest.raises(InputError, match="the config must be a ReconstructionConfig"):
        check_prior({"members": 3}, make_tiny_prior())


class _FirstTwoMasked(Method):
    """A member-diversity scheme written as one class: masks on the first two members only."""

    name = "first_two_masked"

    def build(self, config, sources, members, generator):
        decoder, anchor, fisher = super().build(config, sources, members, generator)
        masks = torch.ones(members, config.blocks, config.hidden)
        masks[:2, :, ::2] = 0.0
        decoder.set_masks(masks)
        return decoder, anchor, fisher


def test_the_config_accepts_exactly_the_methods_of_the_table():
    assert tuple(REGISTRY) == METHODS


def test_a_new_method_is_one_class_in_the_table(monkeypatch):
    monkeypatch.setitem(REGISTRY, "first_two_masked", _FirstTwoMasked())
    monkeypatch.setattr(configs, "METHODS", (*METHODS, "first_two_masked"))
    config = ReconstructionConfig(method="first_two_masked", members=3, finetune=QUICK)
    fitted = drive(fit_steps(make_case(sphere_volume(), TINY), make_tiny_prior(), config))
    assert fitted.method == "first_two_masked" and fitted.members == 3
    masks = fitted.decoder.member_masks
    assert (masks[:2, :, ::2] == 0).all() and (masks[2] == 1).all()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="method"):
        ReconstructionConfig(method="first_two_masked")


def test_a_fitted_ensemble_answers_the_same_whatever_the_chunk():
    config = ReconstructionConfig(members=2, finetune=QUICK)
    fitted = drive(fit_steps(make_case(sphere_volume(), TINY), make_tiny_prior(), config))
    rng = torch.Generator().manual_seed(1)
    points_mm = (torch.rand(500, 3, generator=rng).numpy() - 0.5) * fitted.frame.scale_mm * 1.2 + fitted.frame.centre_mm
    whole = fitted.predict(points_mm)
    assert whole.shape == (2, 500) and ((whole >= 0) & (whole <= 1)).all()
    outside = (abs(fitted.frame.to_normalised(points_mm)) >= 0.5).any(1)
    assert outside.any() and (whole[:, outside] == 0).all()  # outside the cube: not queried
    torch.testing.assert_close(torch.from_numpy(fitted.predict(points_mm, chunk=7)), torch.from_numpy(whole))
