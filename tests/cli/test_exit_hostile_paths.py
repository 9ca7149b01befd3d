"""The last two hostile inputs of the command line (issue 23, item 9): a symbolic link loop as an input or as
--out, and a result folder whose variance map holds no number. Each is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dropsembles import cli
from napari_dropsembles.core.io.volumes import write_volume
from tests.conftest import sphere_volume


@pytest.fixture
def loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return tmp_path / "a"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "internal error" not in err[0] and "Traceback" not in err[0]
    return err[0]


def test_a_symlink_loop_as_input_is_one_input_error(loop, tmp_path, capsys):
    assert cli.main(["reconstruct", str(loop), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "symbolic link loop" in one_error_line(capsys)


def test_a_symlink_loop_as_out_is_one_input_error(loop, tmp_path, capsys):
    observation = write_volume(tmp_path / "obs.nii.gz", sphere_volume(radius_mm=8), dtype=np.uint8)
    assert cli.main(["reconstruct", str(observation), "--out", str(loop), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "--out" in line and "symbolic link loop" in line


def test_evaluate_refuses_a_variance_map_of_nan_in_one_line(tmp_path, capsys):
    truth = sphere_volume(radius_mm=8, spacing_mm=(2.0, 2.0, 2.0))
    truth_path = write_volume(tmp_path / "gt.nii.gz", truth, dtype=np.uint8)
    folder = tmp_path / "result"
    folder.mkdir()
    write_volume(folder / "mean.nii.gz", truth.with_data(truth.data.astype(np.float32)))
    write_volume(folder / "variance.nii.gz", truth.with_data(np.full(truth.shape, np.nan, np.float32)))
    (folder / "report.json").write_text(json.dumps({"threshold": 0.5}))
    assert cli.main(["evaluate", str(folder), str(truth_path)]) == 2
    line = one_error_line(capsys)
    assert "variance" in line and "NaN" in line
