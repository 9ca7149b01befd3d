"""One structure is a set of one: the set's suggestions, stopping signal and folder are the single result's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.progress import drive
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.jobs.structures import reconstruct_structures_steps
from napari_dropsembles.core.jobs.suggest import ExpectedError, expected_band_error, suggest_slices
from napari_dropsembles.core.jobs.suggest_api import next_slices, suggestions_content
from napari_dropsembles.core.results.folder import is_structure_folder, save_structures
from napari_dropsembles.core.results.structures import combine_structures
from tests.conftest import make_tiny_prior, sphere_volume

QUICK = ReconstructionConfig(members=2, finetune=FinetuneConfig(steps=3), slice_check=False, resolution_mm=2.0)


@pytest.fixture(scope="module")
def gapped():
    """A sphere on 3 mm slices with two slices left empty: slices to suggest."""
    volume = sphere_volume()
    data = np.array(volume.data)
    data[:, :, [5, 7]] = 0
    return volume.with_data(data)


@pytest.fixture(scope="module")
def single(gapped):
    return reconstruct(gapped, make_tiny_prior(), QUICK)


def test_a_set_of_one_keeps_its_results_maps(single):
    structures = combine_structures({3: single}, split=False)
    assert structures.mean is single.maps.mean and structures.variance is single.maps.variance
    assert structures.labels == [3] and (structures.owner[np.asarray(single.maps.mean.data) > 0] == 3).all()


def test_a_set_of_one_suggests_and_stops_as_its_result(single):
    structures = combine_structures({1: single}, split=False)
    found = next_slices(structures, 3)
    alone = suggest_slices(single, 3)
    assert [(s.axis, s.index, s.world_mm, s.score, s.kind) for s in found.suggestions] == [
        (s.axis, s.index, s.world_mm, s.score, s.kind) for s in alone
    ]
    assert all(s.labels == (1,) for s in found.suggestions)
    assert found.expected == expected_band_error(single) == ExpectedError.total([expected_band_error(single)])
    content = suggestions_content(structures, found, "obs.nii.gz")
    assert "labels" not in content and all("labels" not in s for s in content["suggestions"])


def test_a_set_of_one_writes_the_single_result_folder(single, tmp_path):
    written = save_structures(combine_structures({1: single}, split=False), tmp_path / "set")
    single.save(tmp_path / "alone")
    names = {folder: sorted(p.name for p in (tmp_path / folder).iterdir()) for folder in ("set", "alone")}
    assert names["set"] == names["alone"]
    assert not is_structure_folder(tmp_path / "set") and set(written) >= {"mean", "report", "members"}


def test_the_set_job_reads_whole_or_per_label(gapped):
    whole = drive(reconstruct_structures_steps({4: gapped}, make_tiny_prior(), QUICK, split=False))
    per_label = drive(reconstruct_structures_steps({4: gapped}, make_tiny_prior(), QUICK))
    assert not whole.split and per_label.split
    assert whole.results[4].config.keep_members is False and per_label.results[4].config.keep_members is True
    assert dataclasses.replace(per_label.results[4].config, keep_members=False) == whole.results[4].config
