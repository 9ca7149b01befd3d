"""Result folders replaced as a whole; output paths that never name an input."""

from __future__ import annotations

import os

import pytest

from napari_dropsembles.core.config.errors import InputError
from napari_dropsembles.core.io.atomic import atomic_folder
from napari_dropsembles.core.io.output_paths import check_output_folder, check_output_path


def test_new_result_replaces_old_results_and_keeps_the_users_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("mean.nii.gz", "report.json", "mesh_member3.ply", "mean.nrrd", "notes.txt", "clash.txt"):
        (out / name).write_text("old " + name)
    with atomic_folder(out) as staging:
        (staging / "mean.nii.gz").write_text("new")
        (staging / "report.json").write_text("new")
        (staging / "clash.txt").write_text("new")
        assert (out / "report.json").read_text() == "old report.json"  # intact until the swap
    names = sorted(p.name for p in out.iterdir())
    assert names == ["clash.txt", "clash.txt.previous", "mean.nii.gz", "notes.txt", "report.json"]
    assert (out / "notes.txt").read_text() == "old notes.txt"  # carried over
    assert (out / "clash.txt.previous").read_text() == "old clash.txt"  # never lost
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left


def test_failure_inside_leaves_the_old_folder_and_no_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out) as staging:
        (staging / "report.json").write_text("half")
        raise RuntimeError("disk went away")
    assert (out / "report.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_new_folder_is_created(tmp_path):
    with atomic_folder(tmp_path / "a" / "b") as staging:
        (staging / "report.json").write_text("{}")
    assert (tmp_path / "a" / "b" / "report.json").read_text() == "{}"


@pytest.mark.parametrize("name", ["mean.nrrd", "mesh.vtp", "segmentation.seg.nrrd", "report.json"])
def test_an_input_with_a_result_name_inside_out_is_refused(tmp_path, name):
    (tmp_path / name).write_text("input")
    with pytest.raises(InputError, match="overwrite"):
        check_output_folder(tmp_path, inputs={"observation": tmp_path / name})


def test_hard_link_to_an_input_is_the_input(tmp_path):
    source = tmp_path / "obs.nii.gz"
    source.write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    os.link(source, out / "mean.nii.gz")
    with pytest.raises(InputError, match="overwrite"):
        check_output_folder(out, inputs={"observation": source})
    with pytest.raises(InputError, match="overwrite"):
        check_output_path(out / "mean.nii.gz", inputs={"ground truth": source})


@pytest.mark.parametrize("value", ["", "  ", None, 3])
def test_empty_or_non_path_output_is_refused(value):
    with pytest.raises(InputError, match="needs a path"):
        check_output_folder(value)
