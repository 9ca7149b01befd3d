"""Pretraining on folders of real dense masks: small masks, empty files, mixing with procedural shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import PretrainConfig
from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.data import MaskShape
from napari_dropsembles.core.data.vertebra import Vertebra
from napari_dropsembles.core.fitting.pretrain import make_training_sample, shape_source, shapes_from_folder
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing
from tests.conftest import TINY

REAL = Path(__file__).parents[3] / "bench" / "data" / "real"


def test_a_small_real_mask_gets_a_slicing_that_keeps_foreground():
    rib = MaskShape(read_volume(REAL / "rib_left_12.nii.gz"))  # 141 voxels of 3 mm: often missed by thick slices
    config = PretrainConfig(points_per_sample=256, slice_factors=(3.0, 5.0), in_plane_mm=(2.5, 3.0))
    for seed in range(6):
        grid, points, labels, descriptors = make_training_sample(rib, np.random.default_rng(seed), TINY, config)
        assert grid[0].sum() > 0 and len(points) == len(labels) == 256


def test_a_mask_too_small_for_any_slicing_is_named():
    data = np.zeros((9, 9, 9), dtype=np.uint8)
    data[4, 4, 4] = 1
    dot = MaskShape(Volume(data, affine_from_spacing((0.2, 0.2, 0.2))))
    dot.name = "dot.nii.gz"
    config = PretrainConfig(points_per_sample=64, slice_factors=(5.0, 5.0), in_plane_mm=(1.4, 1.5))
    with pytest.raises(InputError, match="dot.nii.gz"):
        make_training_sample(dot, np.random.default_rng(0), TINY, config)


def test_an_empty_mask_in_the_training_folder_is_named(tmp_path):
    good = read_volume(REAL / "vertebrae_T12.nii.gz")
    write_volume(tmp_path / "t12.nii.gz", good, dtype=np.uint8)
    write_volume(tmp_path / "blank.nii.gz", good.with_data(np.zeros(good.shape, np.uint8)), dtype=np.uint8)
    with pytest.raises(InputError, match=r"blank\.nii\.gz"):
        shapes_from_folder(tmp_path)
    (tmp_path / "blank.nii.gz").unlink()
    shapes = shapes_from_folder(tmp_path)
    assert [s.name for s in shapes] == ["t12.nii.gz"]


def test_real_masks_mix_with_procedural_vertebrae():
    shapes = [MaskShape(read_volume(REAL / "vertebrae_T12.nii.gz"))]
    rng = np.random.default_rng(0)
    only_real = shape_source(shapes, 0, 0, procedural_share=0.0)
    assert all(only_real(rng) is shapes[0] for _ in range(5))
    only_procedural = shape_source(shapes, 0, 0, procedural_share=1.0)
    assert all(isinstance(only_procedural(rng), Vertebra) for _ in range(3))
    mixed = shape_source(shapes, 0, 0, procedural_share=0.5)
    drawn = [mixed(rng) for _ in range(40)]
    real = sum(d is shapes[0] for d in drawn)
    assert 8 < real < 32
    with pytest.raises(InputError):
        PretrainConfig(procedural_share=1.5)


def test_the_training_folder_takes_every_reader_format(tmp_path):
    t12 = read_volume(REAL / "vertebrae_T12.nii.gz")
    write_volume(tmp_path / "a.nii.gz", t12, dtype=np.uint8)
    write_volume(tmp_path / "b.nrrd", t12, dtype=np.uint8)
    write_volume(tmp_path / "c.mha", t12, dtype=np.uint8)
    (tmp_path / "notes.txt").write_text("not a volume")
    shapes = shapes_from_folder(tmp_path)
    assert [s.name for s in shapes] == ["a.nii.gz", "b.nrrd", "c.mha"]
    assert len({int(s.mask.data.sum()) for s in shapes}) == 1


def test_pretraining_can_start_from_a_prior_and_refuses_another_architecture(tiny_prior):
    from dataclasses import replace

    from napari_dropsembles.core.config.progress import drive
    from napari_dropsembles.core.fitting.pretrain import pretrain_steps

    shapes = [MaskShape(read_volume(REAL / "vertebrae_T12.nii.gz"))]
    config = PretrainConfig(steps=1, batch_size=2, samples=2, points_per_sample=64, lr=1e-9, fisher_samples=1)
    started = drive(pretrain_steps(TINY, config, shapes=shapes, init=tiny_prior))
    fresh = drive(pretrain_steps(TINY, replace(config, seed=5), shapes=shapes))
    before, after = tiny_prior.models[0], started.models[0]
    for name, value in before.decoder.items():  # lr 1e-9: one step leaves the starting weights
        assert np.allclose(after.decoder[name], value, atol=1e-6)
    first = next(iter(before.encoder.state_dict()))
    assert np.allclose(after.encoder.state_dict()[first], before.encoder.state_dict()[first], atol=1e-6)
    assert not np.allclose(fresh.models[0].decoder["out_w"], before.decoder["out_w"], atol=1e-3)
    assert started.training["started_from"] == tiny_prior.name
    wider = replace(TINY, hidden=TINY.hidden * 2)
    with pytest.raises(InputError, match="another architecture: hidden 16"):
        drive(pretrain_steps(wider, config, shapes=shapes, init=tiny_prior))


def test_training_slicings_are_thick_along_the_axes_asked_for():
    from napari_dropsembles.core.fitting.pretrain import random_training_corruption

    rng = np.random.default_rng(0)
    assert {random_training_corruption(rng, PretrainConfig()).slice_axis for _ in range(20)} == {2}
    every = PretrainConfig(slice_axes=(0, 1, 2))
    assert {random_training_corruption(rng, every).slice_axis for _ in range(60)} == {0, 1, 2}
    assert {random_training_corruption(rng, PretrainConfig(slice_axes=(0,))).slice_axis for _ in range(20)} == {0}


@pytest.mark.slow  # worker processes start and make their samples: about 50 s on 2 cores
def test_training_samples_made_by_worker_processes_equal_those_made_here():
    import torch

    from napari_dropsembles.core.config.progress import drive
    from napari_dropsembles.core.fitting.pretrain import training_stream
    from napari_dropsembles.core.fitting.sample_stream import POOL_MIN_SAMPLES

    shapes = [MaskShape(read_volume(REAL / "vertebrae_T12.nii.gz"))]
    config = PretrainConfig(samples=2 * POOL_MIN_SAMPLES, steps=POOL_MIN_SAMPLES // 4, batch_size=8,
                            points_per_sample=64, procedural_share=0.5)
    batches = []
    for workers in (1, 2):
        with training_stream(TINY, config, shapes=shapes, workers=workers) as stream:
            assert stream.parallel == (workers == 2)
            drive(stream.wait_for(config.steps))
            batches.append([stream.batch(step) for step in range(1, config.steps + 1)])
    for here, there in zip(*batches, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(here, there, strict=True))


def test_a_thick_sliced_training_mask_is_labelled_only_on_its_own_slices():
    class Recording(MaskShape):
        """Remembers where it was last asked for occupancy: the query points' labels come last."""

        def occupancy(self, points_mm):
            self.asked = np.asarray(points_mm)
            return super().occupancy(points_mm)

    truth = read_volume(REAL / "vertebrae_L2.nii.gz")
    affine = np.array(truth.affine, dtype=float)
    affine[:3, 2] *= 3
    sparse = Recording(Volume(np.ascontiguousarray(np.asarray(truth.data)[:, :, ::3]), affine))  # 3 x 3 x 9 mm
    config = PretrainConfig(points_per_sample=256, slice_factors=(1.0, 2.0), in_plane_mm=(2.5, 3.0), slice_axes=(0,))
    _, points, labels, descriptors = make_training_sample(sparse, np.random.default_rng(0), TINY, config)
    assert len(sparse.asked) == len(points) == len(labels) == 256 and 0 < labels.sum() < 256
    index = sparse.mask.world_to_index(sparse.asked)
    assert np.allclose(index[:, 2], np.round(index[:, 2]), atol=1e-6)  # every label sits on one of its slices
    assert np.isfinite(descriptors).all()


def test_a_pretrained_prior_describes_its_training_shapes():
    from napari_dropsembles.core.config.progress import drive
    from napari_dropsembles.core.fitting.pretrain import pretrain_steps

    shapes = [MaskShape(read_volume(REAL / f"vertebrae_{name}.nii.gz")) for name in ("L1", "L2", "L3")]
    config = PretrainConfig(steps=6, batch_size=8, samples=16, points_per_sample=64, fisher_samples=1, augment=True)
    prior = drive(pretrain_steps(TINY, config, shapes=shapes, workers=1))
    reference = prior.shape_reference  # every observation trained on (at most the 16 of the pool)
    assert reference is not None and 12 <= reference.count <= 16
    assert reference.provenance == {"observations": reference.count, "shapes": "3 mask shapes"}
    assert prior.training["pretrain"]["augment"] is True
