"""Per-structure results, results -> layer data, and the worker wrapper: all without a display."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_dropsembles._gui.layers import (
    TAG,
    InputFrame,
    reconstruction_to_layer_data,
    world_affine_from_state,
)
from napari_dropsembles._gui.state import RunState
from napari_dropsembles._gui.tasks import observation_masks
from napari_dropsembles._gui.workers import Task, guarded_steps
from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import Cancelled, InputError, setting
from napari_dropsembles.core.config.progress import CancelToken, Progress, drive
from napari_dropsembles.core.jobs.structures import reconstruct_structures_steps
from napari_dropsembles.core.querying.isosurface import extract_mesh, sample_volume
from napari_dropsembles.core.querying.maps import EnsembleMaps
from napari_dropsembles.core.results.reconstruction import Reconstruction
from napari_dropsembles.core.results.structures import StructureRow, combine_structures, flag_rows, surface_shell
from napari_dropsembles.core.volumes.masks import structure_masks
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

from .conftest import make_tiny_prior
from .gui_support import two_spheres

napari_layers = pytest.importorskip("napari.layers")


def fake_result(centre, radius, *, spread=1.0, spacing=1.0, origin_shift=0.0, members=3) -> Reconstruction:
    """A Reconstruction of a ball whose members disagree on the radius by +-spread mm (no network)."""
    n = int(np.ceil(2.6 * radius / spacing))
    origin = np.asarray(centre, float) - (n - 1) / 2 * spacing + origin_shift
    grid = Volume(np.zeros((n, n, n), np.float32), affine_from_spacing((spacing,) * 3, origin))
    axes = [(origin[i] + spacing * np.arange(n) - centre[i]).astype(np.float32) ** 2 for i in range(3)]
    distance = np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
    deltas = np.linspace(-spread, spread, members, dtype=np.float32)
    probs = np.stack([1 / (1 + np.exp(distance - np.float32(radius) - d)) for d in deltas])
    mean, variance = probs.mean(0), probs.var(0)
    maps = EnsembleMaps(
        mean=grid.with_data(mean), variance=grid.with_data(variance), entropy=grid.with_data(variance),
        mutual_information=grid.with_data(variance), members=probs.astype(np.float16),
    )
    return Reconstruction(
        maps=maps, mesh=extract_mesh(maps.mean, 0.5, maps.variance), fitted=None,
        config=ReconstructionConfig(threshold=0.5), observation=grid.with_data((distance <= radius).astype(np.uint8)),
        prior_name="analytic", device="cpu",
    )


def test_merged_grid_samples_every_structure_where_it_is():
    results = {
        2: fake_result((-12.0, 0.0, 0.0), 8.0, origin_shift=0.3),
        5: fake_result((12.0, 1.0, -2.0), 7.0, origin_shift=-0.45),
    }
    merged = combine_structures(results)
    points = merged.mean.voxel_centres_mm()
    expected = np.zeros(len(points))
    compared = np.ones(len(points), bool)  # leave out the one-voxel rims where a grid fades to 0
    for result in results.values():
        grid = result.maps.mean
        index = grid.world_to_index(points)
        last = np.asarray(grid.shape) - 1
        inside = np.all((index >= 0) & (index <= last), axis=1)
        rim = np.all((index > -1) & (index < last + 1), axis=1) & ~inside
        compared &= ~rim
        expected[inside] = np.maximum(expected[inside], sample_volume(grid, points[inside]))
    assert compared.mean() > 0.8
    assert np.abs(merged.mean.data.reshape(-1) - expected)[compared].max() < 1e-5
    labels = merged.label_volume(0.5)
    assert set(np.unique(labels.data)) == {0, 2, 5}
    centre_2 = np.round(labels.world_to_index(np.array([[-12.0, 0.0, 0.0]]))[0]).astype(int)
    assert labels.data[tuple(centre_2)] == 2


def test_structure_table_gives_member_volumes_and_flags_the_uncertain_one():
    results = {1: fake_result((0, 0, 0), 8.0, spread=0.1), 2: fake_result((30, 0, 0), 8.0, spread=0.15),
               3: fake_result((60, 0, 0), 8.0, spread=3.0)}
    merged = combine_structures(results)
    rows = merged.table()
    assert [r.label for r in rows] == [1, 2, 3]
    ball_ml = 4 / 3 * math.pi * 8.0**3 / 1000
    assert rows[0].volume_ml == pytest.approx(ball_ml, rel=0.08)
    assert rows[2].volume_ml_std > rows[0].volume_ml_std > 0
    assert rows[2].band_variance > rows[0].band_variance
    assert [r.flagged for r in rows] == [False, False, True]
    assert np.allclose(rows[2].centre_mm, (60, 0, 0), atol=0.6)


def test_surface_shell_is_the_band_two_voxels_either_side_of_the_boundary():
    inside = np.zeros((20, 20, 20), bool)
    inside[5:15, 5:15, 5:15] = True
    shell = surface_shell(inside, 2)
    assert shell.sum() == 14**3 - 6**3
    assert shell[3, 10, 10] and shell[6, 10, 10] and not shell[2, 10, 10] and not shell[7, 10, 10]
    assert not surface_shell(np.zeros((4, 4, 4), bool)).any()


def test_flag_rows_marks_missing_surfaces_and_outliers():
    rows = [StructureRow(i, 10.0, 0.1, v, (0, 0, 0)) for i, v in enumerate([0.01, 0.011, 0.012, 0.05], 1)]
    rows.append(StructureRow(9, 0.0, 0.0, math.nan, (0, 0, 0)))
    flags = flag_rows(rows)
    assert [r.flagged for r in flags] == [False, False, False, True, True]
    assert "no surface" in flags[-1].reason


def test_structures_are_reconstructed_one_label_at_a_time():
    volume = two_spheres(labels=(2, 5))
    masks = structure_masks(volume)
    assert sorted(masks) == [2, 5]
    config = ReconstructionConfig(
        members=2, finetune=FinetuneConfig(steps=2, points_per_step=512), resolution_mm=3.0, device="cpu"
    )
    steps = reconstruct_structures_steps(masks, make_tiny_prior(), config)
    seen = set()
    structures = drive(steps, lambda progress: seen.add(progress.extra["label"]))
    assert seen == {2, 5} and structures.labels == [2, 5]
    assert [row.label for row in structures.table()] == [2, 5]
    assert structures.members == 2


@pytest.mark.parametrize(
    ("selection", "threshold", "message"),
    [(None, None, "choose one in 'Label'"), ("each", None, None), ("all", None, None), (5, None, None)],
)
def test_observation_masks_follow_the_label_choice(selection, threshold, message):
    volume = two_spheres(labels=(2, 5))
    if message:
        with pytest.raises(InputError, match=message):
            observation_masks(volume, "spine", selection, threshold)
        return
    masks = observation_masks(volume, "spine", selection, threshold)
    assert sorted(masks) == {"each": [2, 5], "all": [1], 5: [5]}[selection]


def test_continuous_image_without_threshold_is_refused_with_the_field_name():
    volume = Volume(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    with pytest.raises(InputError, match="Threshold image"):
        observation_masks(volume, "probabilities", None, None)
    assert observation_masks(volume, "probabilities", None, 0.5)[1].data.any()


def test_world_affine_matches_napari_data_to_world():
    layer = napari_layers.Image(
        np.zeros((4, 5, 6)), scale=(0.5, 1.5, 3.0), translate=(10.0, -4.0, 2.0), rotate=30,
        affine=np.diag([1.0, 2.0, 1.0, 1.0]),
    )
    affine = world_affine_from_state(
        {"scale": layer.scale, "translate": layer.translate, "rotate": layer.rotate, "shear": layer.shear,
         "affine": layer.affine.affine_matrix}
    )
    for point in ([0, 0, 0], [1, 2, 3], [3.5, 0.5, 5]):
        assert np.allclose(affine[:3, :3] @ point + affine[:3, 3], layer.data_to_world(point))


def test_result_layer_data_sits_on_the_input_in_world_mm():
    result = fake_result((5.0, -3.0, 20.0), 8.0)
    observation = np.zeros((30, 30, 8), np.uint8)
    layer = napari_layers.Labels(observation, name="vertebra", scale=(1.0, 1.0, 4.0), translate=(-9.5, -17.5, 6.0))
    layer_data = reconstruction_to_layer_data(result, layer, member=1)
    roles = [kwargs["metadata"][TAG]["role"] for _data, kwargs, _kind in layer_data]
    assert roles == ["mean", "variance", "thresholded", "mesh", "members"]  # the outline above the heatmap
    kinds = [kind for _data, _kwargs, kind in layer_data]
    assert kinds == ["image", "image", "labels", "surface", "surface"]
    mean, variance, _thresholded, mesh, _members = layer_data
    assert mean[1]["name"] == "vertebra mean occupancy" and mean[1]["rendering"] == "iso"
    assert variance[1]["colormap"].name.startswith("inferno") and variance[1]["blending"] == "translucent"
    assert mesh[1]["contrast_limits"] == variance[1]["contrast_limits"]
    # images carry their own grid in world mm; the mesh carries the input's own scale and translate
    assert np.allclose(mean[1]["scale"], result.maps.mean.spacing)
    assert np.allclose(mean[1]["translate"], result.maps.mean.origin)
    assert mesh[1]["scale"] == tuple(layer.scale) and mesh[1]["translate"] == tuple(layer.translate)
    vertices, _faces, values = mesh[0]
    world = vertices * np.asarray(layer.scale) + np.asarray(layer.translate)
    assert np.allclose(world, result.mesh.vertices_mm, atol=1e-3)
    assert np.allclose(values, result.mesh.vertex_values)
    assert all(kwargs["metadata"][TAG]["source"] == str(layer.unique_id) for _d, kwargs, _k in layer_data)


def test_frame_from_a_layer_with_an_affine_keeps_it():
    layer = napari_layers.Labels(np.zeros((5, 5, 5), np.uint8), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    frame = InputFrame.from_layer(layer)
    assert np.allclose(np.diag(frame.world_affine)[:3], 2.0)
    assert "affine" in frame.transform


def _steps(n, fail=None):
    def factory(cancel):
        for step in range(1, n + 1):
            if cancel.is_set():
                raise Cancelled("cancelled")
            if fail is not None and step == 3:
                raise fail
            yield Progress("finetune", step, n, loss=1.0 / step)
        return "value"

    return factory


def test_guarded_steps_turn_every_ending_into_an_outcome():
    def outcome_of(factory, cancel=None):
        steps = guarded_steps(factory, cancel or CancelToken(), Task(factory, on_progress=print, on_finished=print),
                              throttle_s=10.0)
        sent = []
        return drive(steps, sent.append), sent

    outcome, sent = outcome_of(_steps(500))
    assert outcome.state is RunState.DONE and outcome.value == "value"
    assert len(sent) <= 3  # thinned: the first, a phase change, the last
    assert sum(len(p.extra["loss_batch"]) for p in sent) == 500  # but no loss is lost
    outcome, _ = outcome_of(_steps(10, fail=InputError(f"the mask is empty; check {setting('label')}")))
    assert outcome.state is RunState.FAILED and outcome.message == "the mask is empty; check 'Label'"
    outcome, _ = outcome_of(_steps(10, fail=RuntimeError("out of memory")))
    assert outcome.state is RunState.FAILED and outcome.message == "RuntimeError: out of memory"
    token = CancelToken()
    token.set()
    outcome, _ = outcome_of(_steps(10), token)
    assert outcome.state is RunState.CANCELLED


def test_a_synchronous_task_reports_progress_then_its_outcome():
    seen, outcomes = [], []
    task = Task(_steps(5), on_progress=seen.append, on_finished=outcomes.append, sync=True, throttle_s=0.0)
    task.start()
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert outcomes[0].state is RunState.DONE and not task.running
