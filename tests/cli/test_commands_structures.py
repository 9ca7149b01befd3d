"""The command line on several structures: reconstruct --label each, suggest across them, --resume such a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dropsembles.cli import main
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.networks.checkpoint import save_prior
from tests.conftest import make_tiny_prior
from tests.structures_support import painted, sparse, two_ellipsoids


@pytest.fixture
def label_files(tmp_path, ellipsoid_prior):
    truth = two_ellipsoids()
    return {
        "truth": truth,
        "obs": write_volume(tmp_path / "labels.nii.gz", sparse(truth), dtype=np.uint8),
        "prior": save_prior(ellipsoid_prior, tmp_path / "prior.safetensors"),
    }


def test_each_label_then_suggest_then_resume_refines_the_changed_structure(tmp_path, label_files, capsys):
    files = label_files
    fast = ["--prior", str(files["prior"]), "--device", "cpu"]
    first = tmp_path / "first"
    assert main(["reconstruct", str(files["obs"]), "--out", str(first), "--label", "each", "--members", "2",
                 "--steps", "3", "--resolution", "3", *fast]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 structures (label 1, 2)" in printed and "band var" in printed
    index = json.loads((first / "structures.json").read_text())
    assert index["labels"] == [1, 2] and index["refine_rounds"] == 0 and index["folders"]["2"] == "label2"
    for name in ("mean.nii.gz", "variance.nii.gz", "segmentation.nii.gz", "mesh.ply"):
        assert (first / name).is_file(), name
    assert set(np.unique(read_volume(first / "segmentation.nii.gz").data)) == {0, 1, 2}
    for k in (1, 2):
        assert (first / f"label{k}" / "members.safetensors").is_file()
        assert json.loads((first / f"label{k}" / "report.json").read_text())["members"] == 2

    # suggest on the set: slices of the shared volume ranked across the structures
    ranked = tmp_path / "ranked"
    resume = [*fast, "--refine-steps", "2"]
    assert main(["suggest", str(files["obs"]), "--out", str(ranked), "--resume", str(first), "--n", "3", *resume]) == 0
    assert "labels" in capsys.readouterr().out
    content = json.loads((ranked / "suggestions.json").read_text())
    assert content["labels"] == [1, 2] and content["refine_rounds"] == 1 and len(content["suggestions"]) == 3
    assert all(set(s["labels"]) <= {1, 2} and s["labels"] for s in content["suggestions"])
    assert content["suggestions"][0]["score"] >= content["suggestions"][1]["score"]
    assert (ranked / "structures.json").is_file()

    # the user draws structure 2 on the best slice; resume refines it and leaves structure 1 as it was
    best = content["suggestions"][0]["index"]
    updated = write_volume(tmp_path / "updated.nii.gz", painted(sparse(files["truth"]), files["truth"], best, 2),
                           dtype=np.uint8)  # fmt: skip
    second = tmp_path / "second"
    assert main(["reconstruct", str(updated), "--out", str(second), "--resume", str(first), "--quiet", *resume]) == 0
    index = json.loads((second / "structures.json").read_text())
    assert index["refine_rounds"] == 1 and index["kept_unchanged"] == [1]
    reports = {k: json.loads((second / f"label{k}" / "report.json").read_text()) for k in (1, 2)}
    assert reports[2]["refine_rounds"] == 1 and best not in reports[2]["unobserved_slices"]
    assert reports[1]["refine_rounds"] == 1  # through the round, without fine-tuning steps
    np.testing.assert_allclose(
        read_volume(second / "label1" / "mean.nii.gz").data, read_volume(first / "label1" / "mean.nii.gz").data,
        atol=1e-5,
    )  # fmt: skip
    assert not np.allclose(
        read_volume(second / "label2" / "mean.nii.gz").data, read_volume(first / "label2" / "mean.nii.gz").data
    )
    # slices annotated as empty given on resume reach every structure
    third = tmp_path / "third"
    assert main(["reconstruct", str(updated), "--out", str(third), "--resume", str(second), "--quiet",
                 "--annotated-empty", "0", *resume]) == 0  # fmt: skip
    for k in (1, 2):
        report = json.loads((third / f"label{k}" / "report.json").read_text())
        assert report["config"]["annotated_empty"] == [0] and report["refine_rounds"] == 2


def test_resume_of_a_set_refuses_new_labels_other_priors_and_a_single_label(tmp_path, label_files, capsys):
    files = label_files
    first = tmp_path / "first"
    common = ["--prior", str(files["prior"]), "--device", "cpu", "--quiet"]
    assert main(["reconstruct", str(files["obs"]), "--out", str(first), "--label", "each", "--members", "2",
                 "--steps", "1", "--resolution", "3", *common]) == 0  # fmt: skip
    capsys.readouterr()

    def error(observation, *args, prior=files["prior"]):
        argv = ["reconstruct", str(observation), "--out", str(tmp_path / "o"), "--resume", str(first), *args]
        assert main([*argv, "--prior", str(prior), "--device", "cpu", "--quiet"]) == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and message.startswith("napari-dropsembles reconstruct: error:")
        return message

    data = np.array(read_volume(files["obs"]).data)
    data[:3, :3, 1] = 7
    extra = write_volume(tmp_path / "extra.nii.gz", read_volume(files["obs"]).with_data(data), dtype=np.uint8)
    assert "label 7 is new in the updated annotation" in error(extra) and "reconstruct again" in error(extra)
    another = save_prior(make_tiny_prior(seed=5), tmp_path / "another.safetensors")
    assert "resume with the same prior" in error(files["obs"], prior=another)
    assert "leave --label out" in error(files["obs"], "--label", "2")
    assert not (tmp_path / "o").exists()
