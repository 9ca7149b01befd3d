"""Memory estimates before allocation: refused with the estimate, the limit and the option to change."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest

from napari_dropsembles.core.config import budget
from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.data.simulate import simulate_volumes
from napari_dropsembles.core.io.volumes import read_volume
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from tests.conftest import make_tiny_prior, sphere_volume


def _refusal(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "needs about" in message and "limit of" in message
    assert "memory_limit" in message  # core names the setting; the CLI words it as --memory-limit
    return message


def test_limit_from_flag_then_env_then_ram(monkeypatch):
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    assert budget.memory_limit_bytes() == int(budget.physical_memory_bytes() * 0.8)
    monkeypatch.setenv(budget.ENV_VAR, "3")
    assert budget.memory_limit_bytes() == 3 * 10**9
    with budget.memory_limit(0.5):
        assert budget.memory_limit_bytes() == 5 * 10**8
    assert budget.memory_limit_bytes() == 3 * 10**9


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_bad_env_limit_is_one_line(monkeypatch, value):
    monkeypatch.setenv(budget.ENV_VAR, value)
    with pytest.raises(InputError, match=budget.ENV_VAR):
        budget.memory_limit_bytes()


def test_estimates_grow_with_the_request():
    small = budget.grid_bytes((64,) * 3, 4, False, 1, 64)
    assert budget.grid_bytes((128,) * 3, 4, False, 1, 64) > 7 * small
    assert budget.grid_bytes((64,) * 3, 4, True, 1, 64) > small
    assert budget.finetune_bytes(400, 64, 4, 4096) == 100 * budget.finetune_bytes(4, 64, 4, 4096)


def test_reconstruct_api_refuses_a_huge_grid_before_fitting():
    config = ReconstructionConfig(members=2, resolution_mm=0.01, finetune=FinetuneConfig(steps=10_000))
    with budget.output_voxel_limit(10**13):  # past the voxel limit, to the memory estimate
        message = _refusal(reconstruct, sphere_volume(), make_tiny_prior(), config)
    assert "resolution_mm" in message


def test_reconstruct_api_refuses_many_members():
    config = ReconstructionConfig(members=64, resolution_mm=4.0)
    with budget.memory_limit(0.05):
        message = _refusal(reconstruct, sphere_volume(), make_tiny_prior(), config)
    assert "(members)" in message


def test_default_reconstruction_fits_the_default_limit():
    """The bundled-size case at its defaults is far below any real machine's limit."""
    estimate = budget.check_reconstruction(
        (160,) * 3, members=4, hidden=64, blocks=4, points_per_step=4096, keep_members=True
    )
    assert estimate < 2e9


@pytest.mark.parametrize("kwargs, option", [({"gt_spacing_mm": 1e-6}, "gt_spacing_mm"), ({"in_plane_mm": 1e-3},
                                            "in_plane_mm")])
def test_simulate_refuses_huge_grids(kwargs, option):
    assert option in _refusal(simulate_volumes, 0, **kwargs)


def test_pretrain_is_sized_before_it_starts():
    from napari_dropsembles.core.config.configs import PretrainConfig
    from napari_dropsembles.core.fitting.pretrain import pretrain_steps
    from tests.conftest import TINY

    steps = pretrain_steps(TINY, PretrainConfig(batch_size=4096, steps=1, samples=2))
    with budget.memory_limit(0.01):
        assert "batch_size" in _refusal(next, steps)


def test_huge_header_is_refused_before_reading(tmp_path):
    """Volumes are sized from their header: a NIfTI or .npy claiming 10^12 voxels is never read."""
    header = nib.Nifti1Header()
    header.set_data_shape((10000, 10000, 10000))
    header.set_data_dtype(np.float32)
    with open(tmp_path / "big.nii", "wb") as fh:
        header.write_to(fh)
        fh.write(b"\0" * 64)
    assert "crop or downsample" in _refusal(read_volume, tmp_path / "big.nii")
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**4,) * 3})
    (tmp_path / "big.npy").write_bytes(buffer.getvalue() + b"\0" * 64)
    _refusal(read_volume, tmp_path / "big.npy")


def test_output_grid_voxel_limit_names_a_spacing_that_fits(monkeypatch):
    """A grid that fits in memory but would take long (--resolution 0.05 on a 40 mm object) is refused."""
    monkeypatch.delenv(budget.VOXELS_ENV_VAR, raising=False)
    config = ReconstructionConfig(members=2, resolution_mm=0.05)
    with pytest.raises(InputError) as caught:
        reconstruct(sphere_volume(), make_tiny_prior(), config)
    message = str(caught.value)
    assert "max_voxels" in message and "resolution_mm" in message and "\n" not in message
    suggested = float(message.split("resolution_mm=")[1].split(")")[0])
    assert 0.05 < suggested < 0.2
    with budget.output_voxel_limit(10**12), pytest.raises(InputError, match="memory"), budget.memory_limit(0.1):
        reconstruct(sphere_volume(), make_tiny_prior(), config)  # past the voxel limit: the memory check


def test_voxel_limit_from_env(monkeypatch):
    monkeypatch.setenv(budget.VOXELS_ENV_VAR, "1000")
    assert budget.max_output_voxels() == 1000
    monkeypatch.setenv(budget.VOXELS_ENV_VAR, "lots")
    with pytest.raises(InputError, match=budget.VOXELS_ENV_VAR):
        budget.max_output_voxels()
