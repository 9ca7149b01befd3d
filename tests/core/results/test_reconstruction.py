"""The output folder: written by Reconstruction.save, read back by read_reconstruction (one format, one reader)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import ConfigError, InputError
from napari_dropsembles.core.jobs.reconstruct import reconstruct
from napari_dropsembles.core.results.folder import read_reconstruction
from tests.conftest import make_tiny_prior, sphere_volume
from tests.hypothesis_support import assert_one_line


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = ReconstructionConfig(
        members=2, finetune=FinetuneConfig(steps=2, points_per_step=256), device="cpu", resolution_mm=2.0, threshold=0.4
    )
    result = reconstruct(sphere_volume(), make_tiny_prior(), config)
    folder = tmp_path_factory.mktemp("result")
    result.save(folder)
    return result, folder


def test_a_saved_folder_reads_back_as_written(saved):
    result, folder = saved
    back = read_reconstruction(folder)
    maps = back.maps()
    for name, volume in result.maps.as_dict().items():
        np.testing.assert_allclose(getattr(maps, name).data, volume.data, atol=1e-6)
        np.testing.assert_allclose(getattr(maps, name).affine, volume.affine, atol=1e-5)
    assert back.threshold == 0.4 and back.members == 2
    assert len(back.mesh.vertices_mm) == len(result.mesh.vertices_mm)
    assert back.report["config"]["finetune"]["steps"] == 2


def test_entropy_is_needed_for_scores_and_mean_variance_for_anything(saved, tmp_path):
    _, folder = saved
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("mean", "variance"):
        (partial / f"{name}.nii.gz").write_bytes((folder / f"{name}.nii.gz").read_bytes())
    back = read_reconstruction(partial)
    assert back.entropy is None and back.threshold == 0.5 and back.members == 1 and back.report == {}
    with pytest.raises(InputError, match="missing entropy"):
        back.maps()
    (partial / "mean.nii.gz").unlink()
    with pytest.raises(InputError, match="not a reconstruction folder: missing mean.nii.gz"):
        read_reconstruction(partial)


@pytest.mark.parametrize(
    "report, words",
    [
        (b"{not json", "cannot read"),
        (b"[1, 2, 3]", "not a reconstruction report"),
        (b'"a string"', "not a reconstruction report"),
        (json.dumps({"members": "4"}).encode(), "invalid 'members'"),
        (json.dumps({"members": 0}).encode(), "invalid 'members'"),
        (json.dumps({"config": {"threshold": 7}}).encode(), "invalid 'threshold'"),
        (json.dumps({"config": [0.5]}).encode(), "invalid 'config'"),
        (b"\xff\xfe garbage", "cannot read"),
    ],
)
def test_a_damaged_report_is_one_clear_line(saved, tmp_path, report, words):
    _, folder = saved
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("mean", "variance", "entropy"):
        (damaged / f"{name}.nii.gz").write_bytes((folder / f"{name}.nii.gz").read_bytes())
    (damaged / "report.json").write_bytes(report)
    with pytest.raises(InputError, match=words) as info:
        read_reconstruction(damaged)
    assert_one_line(info.value)


def test_remeshing_checks_the_level_and_the_member(saved):
    result, _ = saved
    assert result.remesh(0.4).faces.shape == result.mesh.faces.shape
    for level in (float("nan"), 0.0, 1.0, "0.5", None):
        with pytest.raises(ConfigError) as info:
            result.remesh(level)
        assert info.value.field == "threshold"
    with pytest.raises(InputError, match="per-member maps were not kept"):
        result.member_mesh(0)
