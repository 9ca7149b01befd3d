"""Annotate next on several structures (issue 13): each structure refined from its own members with its own
mask, unchanged ones kept, new or vanished labels refused, suggestions ranked across structures, the folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import Cancelled, CheckpointError, InputError
from napari_dropsembles.core.config.progress import CancelToken, drive
from napari_dropsembles.core.jobs.refine import REFINE_STEPS
from napari_dropsembles.core.jobs.structures import (
    StructureSuggestion,
    reconstruct_structures_steps,
    refine_structures_steps,
    structures_expected_error,
    suggest_structure_slices,
)
from napari_dropsembles.core.jobs.suggest import expected_band_error, suggest_slices
from napari_dropsembles.core.networks.checkpoint import load_prior
from napari_dropsembles.core.results.folder import (
    STRUCTURES,
    is_structure_folder,
    read_structure_starts,
    save_structures,
)
from napari_dropsembles.core.results.structures import StructureSet
from napari_dropsembles.core.scoring.metrics import dice
from napari_dropsembles.core.volumes.masks import structure_masks
from napari_dropsembles.core.volumes.volume import Volume
from tests.conftest import make_tiny_prior
from tests.structures_support import GAP, painted, sparse, two_ellipsoids

FAST = ReconstructionConfig(members=2, finetune=FinetuneConfig(steps=8), device="cpu", slice_check=False)


def dice_of(result, truth: Volume, label: int) -> float:
    assert result.maps.mean.shape == truth.shape  # reconstructed on the truth's grid
    return float(dice(np.asarray(result.maps.mean.data) >= 0.5, truth.data == label))


@pytest.fixture(scope="module")
def truth() -> Volume:
    return two_ellipsoids()


@pytest.fixture(scope="module")
def first(truth) -> StructureSet:
    """Both structures reconstructed from the sparse annotation with the bundled (trained) prior."""
    target = (truth.affine, truth.shape)
    return drive(reconstruct_structures_steps(structure_masks(sparse(truth)), load_prior(None), FAST, target=target))


def test_a_changed_structure_is_refined_from_its_members_and_the_other_is_kept(first, truth):
    labels_before = {k: dice_of(r, truth, k) for k, r in first.results.items()}
    updated = painted(sparse(truth), truth, 12, label=2)  # the user draws structure 2 in the gap only
    progress = []
    refined = drive(
        refine_structures_steps(first, structure_masks(updated), target=(truth.affine, truth.shape)), progress.append
    )
    assert isinstance(refined, StructureSet) and refined.labels == [1, 2]
    assert refined.kept == (1,) and refined.rounds == 1
    # structure 1: its mask did not change, its result is kept as it was (not fine-tuned)
    kept = refined.results[1]
    assert kept.fitted is first.results[1].fitted and kept.rounds == 1
    np.testing.assert_array_equal(kept.maps.mean.data, first.results[1].maps.mean.data)
    # structure 2: warm-started on its new mask; its Dice against the truth improves
    changed = refined.results[2]
    assert changed.fitted is not first.results[2].fitted and changed.rounds == 1
    assert 12 not in changed.unobserved_slices and 12 in first.results[2].unobserved_slices
    assert dice_of(changed, truth, 2) > labels_before[2] + 0.01, (labels_before, dice_of(changed, truth, 2))
    # one progress stream: structure 2's fine-tuning, maps and mesh, tagged with its label
    tuned = [p for p in progress if p.phase == "finetune"]
    assert tuned and all(p.extra["label"] == 2 for p in tuned) and tuned[-1].step == REFINE_STEPS
    assert {"finetune", "mesh"} <= {p.phase for p in progress}
    assert any("label 1: unchanged" in p.message for p in progress)
    # the merged maps and the table are made again the way a first run makes them
    assert refined.mean.shape == first.mean.shape and [r.label for r in refined.table()] == [1, 2]
    owner = refined.label_volume(0.5).data
    assert set(np.unique(owner)) == {0, 1, 2}
    assert not np.array_equal(refined.mean.data, first.mean.data)


def test_marking_slices_empty_changes_the_reading_of_every_structure(first, truth):
    observation = sparse(truth)
    config = dataclasses.replace(FAST, annotated_empty=(0,))
    refined = drive(refine_structures_steps(first, structure_masks(observation), config, steps=2))
    assert refined.kept == () and all(r.config.annotated_empty == (0,) for r in refined.results.values())
    assert all(0 not in r.unobserved_slices for r in refined.results.values())
    # nothing changed at all: Refine pressed again refines every structure
    again = drive(refine_structures_steps(first, structure_masks(observation), steps=1))
    assert again.kept == () and all(r.fitted is not first.results[k].fitted for k, r in again.results.items())


def test_a_new_or_vanished_label_is_a_one_line_error_and_cancel_stops_the_round(first, truth):
    observation = sparse(truth)
    extra = np.array(observation.data, copy=True)
    extra[:4, :4, 1] = 7
    with pytest.raises(InputError, match="label 7 is new in the updated annotation") as info:
        drive(refine_structures_steps(first, structure_masks(observation.with_data(extra))))
    assert "reconstruct again" in str(info.value) and "\n" not in str(info.value)
    gone = np.where(observation.data == 1, 0, observation.data).astype(np.uint8)
    with pytest.raises(InputError, match="label 1 of the result is no longer in the updated annotation"):
        drive(refine_structures_steps(first, structure_masks(observation.with_data(gone))))
    token = CancelToken()
    token.set()
    with pytest.raises(Cancelled):
        drive(refine_structures_steps(first, structure_masks(painted(observation, truth, 12, 2)), cancel=token))


def test_suggestions_are_ranked_across_structures(first):
    suggestions = suggest_structure_slices(first, 4)
    assert len(suggestions) == 4 and all(isinstance(s, StructureSuggestion) for s in suggestions)
    assert [s.score for s in suggestions] == sorted((s.score for s in suggestions), reverse=True)
    assert all(s.axis == 2 and s.kind == "annotate" and set(s.labels) <= {1, 2} for s in suggestions)
    assert suggestions[0].index in GAP and suggestions[0].labels == (1, 2)  # the gap both structures share
    # its score: what it removes from both, at least what the best slice of either removes alone
    alone = {k: suggest_slices(r, 4) for k, r in first.results.items()}
    assert suggestions[0].score >= max(plan[0].score for plan in alone.values())
    assert abs(suggestions[1].index - suggestions[0].index) > 1  # a plan over both, not each one's best side by side
    assert suggest_structure_slices({2: first.results[2]}, 2) == [
        StructureSuggestion(s.axis, s.index, s.world_mm, s.score, s.kind, labels=(2,)) for s in alone[2][:2]
    ]
    expected = structures_expected_error(first)
    parts = [expected_band_error(r) for r in first.results.values()]
    assert expected.voxels == pytest.approx(sum(p.voxels for p in parts)) and "2 structures" in expected.text
    with pytest.raises(InputError):
        suggest_structure_slices(first, 0)


def test_a_set_folder_is_written_and_resumed_with_its_members(first, truth, tmp_path):
    paths = save_structures(first, tmp_path / "set")
    folder = tmp_path / "set"
    assert is_structure_folder(folder) and not is_structure_folder(folder / "label1")
    for name in ("mean.nii.gz", "variance.nii.gz", "segmentation.nii.gz", "mesh.ply", STRUCTURES):
        assert (folder / name).is_file(), name
    assert all((folder / f"label{k}" / "members.safetensors").is_file() for k in (1, 2)) and "label2" in paths
    index = json.loads((folder / STRUCTURES).read_text())
    assert index["labels"] == [1, 2] and index["refine_rounds"] == 0 and len(index["table"]) == 2
    prior = load_prior(None)
    starts = read_structure_starts(folder, prior)
    assert sorted(starts) == [1, 2] and all(s.observation_digest for s in starts.values())
    # from the folder: structure 1 unchanged (members kept, maps made again without steps), 2 refined
    updated = structure_masks(painted(sparse(truth), truth, 12, 2))
    progress = []
    refined = drive(
        refine_structures_steps(starts, updated, steps=3, target=(truth.affine, truth.shape)), progress.append
    )
    assert refined.kept == (1,) and refined.rounds == 1
    assert max(p.step for p in progress if p.phase == "finetune" and p.extra["label"] == 2) == 3
    assert not any(p.step > 0 for p in progress if p.phase == "finetune" and p.extra["label"] == 1)
    np.testing.assert_allclose(refined.results[1].maps.mean.data, first.results[1].maps.mean.data, atol=1e-5)
    with pytest.raises(CheckpointError, match="resume with the same prior"):
        read_structure_starts(folder, make_tiny_prior(seed=3))
    (folder / STRUCTURES).write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_structure_starts(folder, prior)
