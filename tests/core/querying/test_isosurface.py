import numpy as np
import pytest
import trimesh

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.meshes import read_mesh, write_mesh
from napari_dropsembles.core.querying.isosurface import IsoSurface, extract_mesh, sample_volume
from napari_dropsembles.core.volumes.mesh import Mesh
from napari_dropsembles.core.volumes.volume import Volume, affine_from_spacing

CENTRE = np.array([5.0, -3.0, 20.0])
RADIUS = 10.0
SPACING = np.array([0.8, 1.0, 2.5])


def _sphere_volume(affine=None):
    """Signed 'occupancy-like' field of a sphere (radius 10 mm at CENTRE) on an anisotropic grid."""
    shape = (32, 26, 12)
    if affine is None:
        origin = CENTRE - (np.array(shape) - 1) / 2 * SPACING + np.array([0.3, -0.2, 0.7])
        affine = affine_from_spacing(SPACING, origin)
    vol = Volume(np.zeros(shape, np.float32), affine)
    pts = vol.voxel_centres_mm().reshape(*shape, 3)
    dist = np.linalg.norm(pts - CENTRE, axis=-1)
    prob = 1.0 / (1.0 + np.exp((dist - RADIUS) / 1.0))  # smooth: 0.5 exactly at the sphere
    return vol.with_data(prob.astype(np.float32)), dist


def test_sphere_lands_in_world_mm_with_outward_normals():
    vol, dist = _sphere_volume()
    values = vol.with_data(dist.astype(np.float32))
    mesh = extract_mesh(vol, 0.5, values=values)
    assert not mesh.is_empty
    assert mesh.vertices_mm.dtype == np.float32 and mesh.faces.dtype == np.int32
    r = np.linalg.norm(mesh.vertices_mm - CENTRE, axis=1)
    assert np.abs(r - RADIUS).max() < SPACING.max()
    assert abs(np.median(r) - RADIUS) < 0.3
    # outward: positive signed volume close to the sphere's
    signed = mesh.signed_volume_mm3()
    assert signed > 0
    assert signed == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.1)
    tm = trimesh.Trimesh(mesh.vertices_mm, mesh.faces, process=False)
    normals = tm.face_normals
    outward = np.einsum("ij,ij->i", normals, tm.triangles_center - CENTRE)
    assert np.mean(outward > 0) > 0.99
    # vertex values sampled from the distance grid are ~ the radius
    assert mesh.vertex_values.shape == (len(mesh.vertices_mm),)
    assert np.abs(mesh.vertex_values - RADIUS).max() < 1.0


def test_rotated_affine_and_flipped_axis():
    theta = np.deg2rad(40)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    flip = np.diag([-1.0, 1.0, 1.0])  # negative determinant (e.g. a LPS/RAS flip)
    shape = np.array((32, 26, 12))
    lin = rot @ flip @ np.diag(SPACING)
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = CENTRE - lin @ ((shape - 1) / 2)
    vol, _ = _sphere_volume(affine)
    mesh = extract_mesh(vol, 0.5)
    r = np.linalg.norm(mesh.vertices_mm - CENTRE, axis=1)
    assert np.abs(r - RADIUS).max() < SPACING.max()
    assert mesh.signed_volume_mm3() > 0


def test_values_on_other_grid_and_border_closure():
    data = np.zeros((10, 10, 10), np.float32)
    data[:5] = 1.0  # touches the border: padding closes the surface
    vol = Volume(data, affine_from_spacing((1, 1, 1), (10, 0, 0)))
    other = Volume(np.full((4, 4, 4), 7.0, np.float32), affine_from_spacing((5, 5, 5)))
    mesh = extract_mesh(vol, 0.5, values=other)
    np.testing.assert_allclose(mesh.vertex_values, 7.0)
    tm = trimesh.Trimesh(mesh.vertices_mm, mesh.faces)
    assert tm.is_watertight
    assert mesh.signed_volume_mm3() > 0
    assert mesh.vertices_mm[:, 0].min() >= 10 - 0.5 - 1e-5  # world frame (origin x = 10)


def test_prepared_surface_matches_trilinear_values_at_every_threshold():
    """The slider's prepared surface: edge-interpolated vertex values equal trilinear sampling."""
    rng = np.random.default_rng(3)
    vol, _ = _sphere_volume()
    noisy = vol.with_data(np.clip(vol.data + rng.normal(0, 0.05, vol.shape), 0, 1).astype(np.float32))
    variance = vol.with_data(rng.random(vol.shape).astype(np.float32))
    surface = IsoSurface(noisy, variance)
    for level in (0.2, 0.5, 0.8):
        mesh = surface.extract(level)
        assert not mesh.is_empty
        np.testing.assert_allclose(mesh.vertex_values, sample_volume(variance, mesh.vertices_mm), atol=1e-5)
        assert mesh.signed_volume_mm3() > 0
        tm = trimesh.Trimesh(mesh.vertices_mm, mesh.faces)
        assert tm.is_watertight
    coarse = surface.extract(0.5, step_size=2)
    np.testing.assert_allclose(coarse.vertex_values, sample_volume(variance, coarse.vertices_mm), atol=1e-5)


def _assert_same_triangles(vertices: np.ndarray, faces: np.ndarray, ref_vertices: np.ndarray, ref_faces: np.ndarray):
    """Same triangles, one to one, corners within 1e-4 in the same cyclic (winding) order."""
    from scipy.spatial import cKDTree

    tri, ref = vertices[faces].astype(np.float64), ref_vertices[ref_faces].astype(np.float64)
    assert tri.shape == ref.shape
    dist, match = cKDTree(ref.mean(axis=1)).query(tri.mean(axis=1))
    assert dist.max() < 1e-4 and len(np.unique(match)) == len(match)
    ref = ref[match]
    cyclic = [np.abs(tri - np.roll(ref, k, axis=1)).max(axis=(1, 2)) for k in range(3)]
    assert np.min(cyclic, axis=0).max() < 1e-4


@pytest.mark.parametrize("step", [1, 2, 3, 9])
def test_box_of_straddling_blocks_gives_the_full_grid_mesh(step):
    """Marching cubes on the box of blocks that straddle the level == on the whole grid, triangle for triangle."""
    from skimage.measure import marching_cubes

    rng = np.random.default_rng(step)
    shape = (70, 45, 53)
    data = np.zeros(shape, np.float32)
    idx = np.indices(shape).transpose(1, 2, 3, 0)
    for centre, radius in (((2, 12, 15), 6.5), ((30, 25, 28), 8.0)):  # two blobs, one at the border
        data = np.maximum(data, 1 / (1 + np.exp((np.linalg.norm(idx - centre, axis=-1) - radius) / 1.5)))
    data = np.clip(data + rng.normal(0, 0.02, shape) * (data > 0.05), 0, 1).astype(np.float32)
    surface = IsoSurface(Volume(data))
    for level in (0.2, 0.5, 0.9):
        box = surface._active_box(level, step)
        if step <= IsoSurface.BRICK:
            assert np.prod([b.stop - b.start for b in box]) < 0.8 * np.prod(np.add(shape, 2))
        mesh = surface.extract(level, step_size=step)
        padded = np.pad(data, 1, constant_values=data.min())
        verts, faces, _, _ = marching_cubes(padded, level, step_size=step, allow_degenerate=False)
        assert len(mesh.faces) == len(faces) > 0
        _assert_same_triangles(mesh.vertices_mm, mesh.faces, verts - 1, faces[:, ::-1])


def test_block_ranges_cover_each_block_and_its_successor():
    from napari_dropsembles.core.querying.isosurface import _block_ranges

    data = np.random.default_rng(0).random((37, 20, 26)).astype(np.float32)
    low, high = _block_ranges(data, 8)
    assert low.shape == (5, 3, 4)
    for k in np.ndindex(low.shape):
        region = data[tuple(slice(8 * a, 8 * a + 16) for a in k)]
        assert low[k] == region.min() and high[k] == region.max()


def test_non_finite_voxels_read_as_the_lowest_value():
    vol, _ = _sphere_volume()
    data = vol.data.copy()
    data[0, 0, 0] = np.nan
    data[-1, -1, -1] = np.inf
    mesh = extract_mesh(vol.with_data(data), 0.5)
    assert np.isfinite(mesh.vertices_mm).all()
    assert mesh.signed_volume_mm3() == pytest.approx(extract_mesh(vol, 0.5).signed_volume_mm3(), rel=1e-3)
    assert extract_mesh(vol.with_data(np.full(vol.shape, np.nan, np.float32)), 0.5).is_empty


def test_level_outside_range_gives_empty_mesh():
    vol, _ = _sphere_volume()
    for level in (-1.0, 2.0):
        mesh = extract_mesh(vol, level)
        assert mesh.is_empty and mesh.vertices_mm.shape == (0, 3)
    assert extract_mesh(Volume(np.zeros((4, 4, 4))), 0.5).is_empty
    v, f = extract_mesh(vol, -1.0).napari_data()
    assert v.shape == (0, 3) and f.shape == (0, 3)


def test_step_size_and_napari_data():
    vol, _ = _sphere_volume()
    fine = extract_mesh(vol, 0.5)
    coarse = extract_mesh(vol, 0.5, step_size=2)
    assert len(coarse.faces) < len(fine.faces)
    assert len(fine.napari_data()) == 2
    assert len(extract_mesh(vol, 0.5, values=vol).napari_data()) == 3


def test_ply_round_trip_keeps_values(tmp_path):
    vol, dist = _sphere_volume()
    mesh = extract_mesh(vol, 0.5, values=vol.with_data(dist.astype(np.float32)))
    path = write_mesh(tmp_path / "m.ply", mesh)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian")
    back = read_mesh(path)
    np.testing.assert_array_equal(back.vertices_mm, mesh.vertices_mm)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.vertex_values, mesh.vertex_values)
    # readable by trimesh directly
    tm = trimesh.load(str(path), process=False)
    assert len(tm.faces) == len(mesh.faces)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ply"]


@pytest.mark.parametrize("suffix", [".obj", ".stl"])
def test_obj_stl_written_and_readable(tmp_path, suffix):
    vol, _ = _sphere_volume()
    mesh = extract_mesh(vol, 0.5)
    back = read_mesh(write_mesh(tmp_path / f"m{suffix}", mesh))
    assert len(back.faces) == len(mesh.faces)
    assert back.signed_volume_mm3() == pytest.approx(mesh.signed_volume_mm3(), rel=1e-4)
    r = np.linalg.norm(back.vertices_mm - CENTRE, axis=1)
    assert np.abs(r - RADIUS).max() < SPACING.max()


def test_write_errors(tmp_path):
    vol, _ = _sphere_volume()
    with pytest.raises(InputError, match="empty"):
        write_mesh(tmp_path / "e.ply", extract_mesh(vol, 5.0))
    with pytest.raises(InputError, match="unknown mesh file type"):
        write_mesh(tmp_path / "m.vtk", extract_mesh(vol, 0.5))
    with pytest.raises(InputError, match="not found"):
        read_mesh(tmp_path / "missing.ply")
    (tmp_path / "bad.ply").write_text("garbage")
    with pytest.raises(InputError, match="bad.ply"):
        read_mesh(tmp_path / "bad.ply")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ply"]


def test_mesh_validation():
    with pytest.raises(InputError):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 5]]))
    with pytest.raises(InputError):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros(4))
