import numpy as np
import pytest

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.scoring.metrics import dice
from napari_dropsembles.core.slices import baselines
from napari_dropsembles.core.slices.baselines import BASELINES, interpolate_observation
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

ORIGIN = np.array([-20.0, 5.0, 12.0])


def _dense_sphere(shape=(40, 40, 40), radius=13.0, spacing=(1.0, 1.0, 1.0)):
    affine = affine_from_spacing(spacing, ORIGIN)
    vol = Volume(np.zeros(shape, np.uint8), affine)
    centre = vol.index_to_world((np.array(shape) - 1) / 2 + 0.3)
    pts = vol.voxel_centres_mm().reshape(*shape, 3)
    return vol.with_data((np.linalg.norm(pts - centre, axis=-1) <= radius).astype(np.uint8))


def _every_nth_slice(dense: Volume, n: int, offset: int = 1) -> Volume:
    """Keep slices offset, offset+n, ... along axis 2 as a thick-slice volume with the right affine."""
    data = dense.data[:, :, offset::n]
    affine = dense.affine.copy()
    affine[:3, 3] = dense.index_to_world(np.array([[0, 0, offset]]))[0]
    affine[:3, 2] *= n
    return Volume(data, affine)


@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_identity_returns_observation(method):
    rng = np.random.default_rng(0)
    obs = Volume(rng.random((7, 8, 9)).astype(np.float32), affine_from_spacing((0.5, 1.0, 3.0), ORIGIN))
    out = interpolate_observation(obs, obs.affine, obs.shape, method)
    assert out.dtype == np.float32 and out.shape == obs.shape
    np.testing.assert_allclose(out, obs.data, atol=1e-6)


def test_identity_shape_based_keeps_mask():
    dense = _dense_sphere((20, 20, 20), radius=6.0)
    out = interpolate_observation(dense, dense.affine, dense.shape, "shape_based")
    np.testing.assert_array_equal(out >= 0.5, dense.data.astype(bool))


def test_outside_is_zero_and_any_affines():
    obs = Volume(np.ones((4, 4, 4), np.float32), affine_from_spacing((1, 1, 1)))
    # target grid shifted far away: nothing observed there
    far = affine_from_spacing((1, 1, 1), (100, 100, 100))
    for method in BASELINES:
        assert interpolate_observation(obs, far, (3, 3, 3), method).max() < 1e-3
    # a rotated target grid: nearest samples the right voxel in world space
    data = np.zeros((5, 5, 5), np.float32)
    data[4, 0, 0] = 1.0  # world (4, 0, 0)
    obs = Volume(data, np.eye(4))
    rot = np.eye(4)
    rot[:3, :3] = [[0, 1, 0], [1, 0, 0], [0, 0, 1]]  # target axis 1 -> world x
    out = interpolate_observation(obs, rot, (5, 5, 5), "nearest")
    assert out[0, 4, 0] == 1.0 and out.sum() == 1.0


def test_shape_based_beats_nearest_on_sparse_sphere():
    dense = _dense_sphere()
    obs = _every_nth_slice(dense, 4)
    gt = dense.data.astype(bool)
    scores = {}
    for method in BASELINES:
        prob = interpolate_observation(obs, dense.affine, dense.shape, method)
        assert prob.min() >= 0 and prob.max() <= 1
        scores[method] = dice(prob >= 0.5, gt)
    assert scores["nearest"] > 0.8
    assert scores["shape_based"] > scores["nearest"] + 0.01, scores
    assert scores["shape_based"] > 0.945, scores


def test_chunking_is_seamless(monkeypatch):
    dense = _dense_sphere((20, 20, 20), radius=7.0)
    obs = _every_nth_slice(dense, 3)
    full = {m: interpolate_observation(obs, dense.affine, dense.shape, m) for m in BASELINES}
    monkeypatch.setattr(baselines, "_CHUNK_VOXELS", 333)  # several rows per chunk, ragged tail
    for m in BASELINES:
        np.testing.assert_array_equal(interpolate_observation(obs, dense.affine, dense.shape, m), full[m])


def test_bad_arguments():
    obs = Volume(np.zeros((3, 3, 3), np.float32))
    with pytest.raises(InputError, match="shape_based"):
        interpolate_observation(obs, np.eye(4), (3, 3, 3), "cubic")
    with pytest.raises(InputError):
        interpolate_observation(obs, np.eye(3), (3, 3, 3), "linear")
