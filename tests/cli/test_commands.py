"""The command line: the main job end to end, and a clear exit-2 message for every bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_dropsembles.cli import main
from napari_dropsembles.core.io.volumes import read_volume, write_volume
from napari_dropsembles.core.networks.checkpoint import save_prior
from napari_dropsembles.core.slices.contour_interpolation import contour_available
from napari_dropsembles.core.volumes.volume import Volume
from tests.conftest import make_tiny_prior, sphere_volume


@pytest.fixture
def files(tmp_path, ellipsoid_prior):
    observation = sphere_volume(radius_mm=9, spacing_mm=(1.0, 1.0, 3.0))
    truth = sphere_volume(radius_mm=9, spacing_mm=(1.0, 1.0, 1.0))
    paths = {
        "obs": write_volume(tmp_path / "obs.nii.gz", observation, dtype=np.uint8),
        "gt": write_volume(tmp_path / "gt.nii.gz", truth, dtype=np.uint8),
        "prior": save_prior(ellipsoid_prior, tmp_path / "prior.safetensors"),
    }
    return paths


FAST = ["--steps", "5", "--resolution", "2", "--device", "cpu", "--quiet"]


def test_reconstruct_writes_maps_mesh_and_report(tmp_path, files, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "reconstruct",
            str(files["obs"]),
            "--out",
            str(out),
            "--prior",
            str(files["prior"]),
            "--ground-truth",
            str(files["gt"]),
            "--members",
            "2",
            *FAST,
        ]
    )
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "entropy.nii.gz",
        "mean.nii.gz",
        "members.safetensors",
        "mesh.ply",
        "mutual_information.nii.gz",
        "report.json",
        "variance.nii.gz",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["members"] == 2 and report["config"]["method"] == "dropsembles"
    assert set(report["metrics"]) == {"dropsembles", "nearest", "linear", "shape_based", "contour"}
    contour = report["metrics"]["contour"]  # ITK's contour interpolation, or why it was skipped
    assert ("dice" in contour) == contour_available() and ("skipped" in contour) != contour_available()
    assert 0 <= report["metrics"]["dropsembles"]["dice"] <= 1
    mean = nib.load(out / "mean.nii.gz")
    assert mean.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.linalg.norm(mean.affine[:3, :3], axis=0), 2.0)
    # evaluate on a --like grid reproduces the report's metrics
    like = tmp_path / "like"
    assert (
        main(
            [
                "reconstruct",
                str(files["obs"]),
                "--out",
                str(like),
                "--prior",
                str(files["prior"]),
                "--like",
                str(files["gt"]),
                "--members",
                "2",
                *FAST,
            ]
        )
        == 0
    )
    assert read_volume(like / "mean.nii.gz").shape == read_volume(files["gt"]).shape
    capsys.readouterr()
    assert main(["evaluate", str(like), str(files["gt"])]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["dice"] == pytest.approx(report["metrics"]["dropsembles"]["dice"], abs=1e-6)


def test_simulate_then_reconstruct_with_label_choice(tmp_path, files):
    assert main(["simulate", "--out", str(tmp_path / "case"), "--seed", "2", "--gt-spacing", "1.5", "--quiet"]) == 0
    case = json.loads((tmp_path / "case" / "case.json").read_text())
    assert case["observation_spacing_mm"] == [1.0, 1.0, 4.0]
    labels = read_volume(files["obs"]).data.astype(np.uint8) * 3  # label value 3
    multi = write_volume(tmp_path / "multi.nii.gz", Volume(labels, read_volume(files["obs"]).affine), dtype=np.uint8)
    assert (
        main(
            [
                "reconstruct",
                str(multi),
                "--out",
                str(tmp_path / "o"),
                "--prior",
                str(files["prior"]),
                "--label",
                "3",
                *FAST,
            ]
        )
        == 0
    )


def _text_file(path):
    path.write_text("not a volume")
    return path


def _bad(tmp_path, array, name="bad.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda t: _bad(t, np.zeros((8, 8))), "3D"),
        (lambda t: _bad(t, np.zeros((4, 8, 8, 8))), "3D"),
        (lambda t: _bad(t, np.zeros((8, 8, 8))), "empty"),
        (lambda t: _bad(t, np.ones((8, 8, 8))), "whole volume"),
        (lambda t: _bad(t, np.where(np.arange(512).reshape(8, 8, 8) % 7 == 0, np.nan, 1.0)), "NaN"),
        (lambda t: _bad(t, np.where(np.arange(512).reshape(8, 8, 8) % 7 == 0, np.inf, 0.0)), "inf"),
        (lambda t: _bad(t, np.arange(512).reshape(8, 8, 8) % 3), "--label"),
        (lambda t: _bad(t, np.linspace(0, 1, 512).reshape(8, 8, 8)), "--threshold"),
        (lambda t: _text_file(t / "text.nii.gz"), "text.nii.gz"),
        (lambda t: t / "missing.nii.gz", "missing.nii.gz"),
    ],
)
def test_bad_volumes_exit_2_with_a_message_and_write_nothing(tmp_path, files, capsys, make, words):
    bad = make(tmp_path)
    out = tmp_path / "never"
    code = main(["reconstruct", str(bad), "--out", str(out), "--prior", str(files["prior"]), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--members", "0"], "--members"),
        (["--steps", "-3"], "--steps"),
        (["--level", "1.5"], "--level must be a finite number in (0, 1), got 1.5"),
        (["--seed", str(2**64)], "--seed must be an integer from 0 to"),
        (["--resolution", "inf"], "--resolution must be a finite number > 0"),
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--members", "100000"], "--members must be an integer from 1 to"),
        (["--method", "deep_ensemble", "--members", "8"], "independently pretrained"),
    ],
)
def test_bad_parameters_exit_2(tmp_path, files, capsys, extra, words):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        code = main(["reconstruct", str(files["obs"]), "--out", str(out), "--prior", str(files["prior"]), *extra])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_pretrain_rejects_bad_dropout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--out", str(tmp_path / "p.safetensors"), "--dropout", "1.5"])
    assert exit_info.value.code == 2
    assert "--dropout" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, words", [(b"garbage that is not a safetensors header", "not a valid prior"), (b"", "too short")]
)
def test_corrupt_prior_exits_2(tmp_path, files, capsys, content, words):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    code = main(["reconstruct", str(files["obs"]), "--out", str(tmp_path / "o"), "--prior", str(bad), *FAST])
    assert code == 2 and words in capsys.readouterr().err


def test_unwritable_output_folder_exits_2(tmp_path, files, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(
        ["reconstruct", str(files["obs"]), "--out", str(blocker / "sub"), "--prior", str(files["prior"]), *FAST]
    )
    assert code == 2 and "cannot write" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("reconstruct", "pretrain", "evaluate", "simulate", "demo"):
        assert command in text


def test_pretrain_on_a_folder_of_dense_masks_writes_a_loadable_prior(tmp_path):
    from napari_dropsembles.core.networks.checkpoint import load_prior

    masks = tmp_path / "masks"
    masks.mkdir()
    for i, radius in enumerate((8.0, 11.0)):
        write_volume(
            masks / f"m{i}.nii.gz", sphere_volume(radius_mm=radius, spacing_mm=(1.0, 1.0, 1.0)), dtype=np.uint8
        )
    out = tmp_path / "p.safetensors"
    code = main(
        [
            "pretrain",
            "--out",
            str(out),
            "--data",
            str(masks),
            "--steps",
            "2",
            "--samples",
            "4",
            "--batch-size",
            "2",
            "--grid",
            "8",
            "--hidden",
            "16",
            "--blocks",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    prior = load_prior(out)
    assert prior.config.grid_size == 8 and prior.training["data"] == "2 dense masks"
    assert "--data" in prior.training["command"]


@pytest.fixture
def sparse_files(tmp_path, ellipsoid_prior):
    """A dense scan's mask annotated every 3rd slice on its own 1.5 mm grid, the dense truth, a prior."""
    truth = sphere_volume(radius_mm=10, spacing_mm=(1.5, 1.5, 1.5), size_mm=30)
    data = np.zeros_like(truth.data)
    data[:, :, 1::3] = truth.data[:, :, 1::3]
    return {
        "truth": truth,
        "obs": write_volume(tmp_path / "sparse.nii.gz", truth.with_data(data), dtype=np.uint8),
        "prior": save_prior(ellipsoid_prior, tmp_path / "prior.safetensors"),
    }


def test_suggest_then_resume_with_an_added_slice(tmp_path, sparse_files, capsys):
    files = sparse_files
    first = tmp_path / "first"
    args = ["--prior", str(files["prior"]), "--members", "2", "--steps", "4", "--device", "cpu"]
    assert main(["suggest", str(files["obs"]), "--out", str(first), "--n", "3", *args]) == 0
    printed = capsys.readouterr().out
    assert "rank" in printed and "expected error: about" in printed
    content = json.loads((first / "suggestions.json").read_text())
    assert len(content["suggestions"]) == 3 and content["slice_axis"] == 2
    assert {"rank", "axis", "index", "world_mm", "score", "kind"} <= set(content["suggestions"][0])
    assert content["expected_error"]["voxels"] > 0 and "mislabelled" in content["expected_error"]["text"]
    assert (first / "members.safetensors").is_file() and (first / "mean.nii.gz").is_file()
    # the user draws the first suggested slice into a copy of the mask; resume refines from the members
    index = content["suggestions"][0]["index"]
    observation = read_volume(files["obs"])
    before = observation.data.copy()
    data = np.array(observation.data, dtype=np.uint8)
    data[:, :, index] = files["truth"].data[:, :, index]
    updated = write_volume(tmp_path / "updated.nii.gz", observation.with_data(data), dtype=np.uint8)
    second = tmp_path / "second"
    resume = ["--prior", str(files["prior"]), "--resume", str(first), "--refine-steps", "3", "--device", "cpu"]
    assert main(["reconstruct", str(updated), "--out", str(second), "--quiet", *resume]) == 0
    report = json.loads((second / "report.json").read_text())
    assert report["refine_rounds"] == 1 and report["members"] == 2 and index not in report["unobserved_slices"]
    assert report["annotation_axis"] == 2
    assert read_volume(second / "mean.nii.gz").shape == read_volume(first / "mean.nii.gz").shape
    np.testing.assert_array_equal(read_volume(files["obs"]).data, before)  # the input is never written
    # suggest can resume too, and the round count goes on
    third = tmp_path / "third"
    assert main(["suggest", str(updated), "--out", str(third), "--quiet", *resume[:4], "--resume", str(second)]) == 0
    assert json.loads((third / "report.json").read_text())["refine_rounds"] == 2


def test_resume_errors_are_one_line(tmp_path, sparse_files, capsys):
    files = sparse_files
    first = tmp_path / "first"
    common = ["--prior", str(files["prior"]), "--device", "cpu", "--quiet"]
    assert main(["reconstruct", str(files["obs"]), "--out", str(first), "--members", "2", "--steps", "2", *common]) == 0
    capsys.readouterr()

    def error(folder, prior=files["prior"]):
        args = ["reconstruct", str(files["obs"]), "--out", str(tmp_path / "o"), "--resume", str(folder)]
        assert main([*args, "--prior", str(prior), "--device", "cpu", "--quiet"]) == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and message.startswith("napari-dropsembles reconstruct: error:")
        return message

    assert "is not a result folder" in error(tmp_path / "nowhere")
    other = tmp_path / "other"
    other.mkdir()
    assert "holds no members.safetensors" in error(other)
    another_prior = save_prior(make_tiny_prior(seed=5), tmp_path / "another.safetensors")
    assert "resume with the same prior" in error(first, another_prior)
    raw = (first / "members.safetensors").read_bytes()
    (first / "members.safetensors").write_bytes(raw[: len(raw) // 2])
    assert "corrupt" in error(first) or "truncated" in error(first)
    (first / "members.safetensors").write_bytes(b"junk")
    message = error(first)
    assert "too short to be a safetensors file" in message and "rerun reconstruct" in message
    (first / "members.safetensors").write_bytes(b"\xff" * 64)
    assert "truncated or not a safetensors file; rerun reconstruct" in error(first)


def test_pretrain_init_starts_from_a_prior_and_names_a_missing_one(tmp_path, capsys):
    from napari_dropsembles.core.networks.checkpoint import load_prior, save_prior
    from tests.conftest import make_tiny_prior

    masks = tmp_path / "masks"
    masks.mkdir()
    write_volume(masks / "m.nii.gz", sphere_volume(radius_mm=9.0, spacing_mm=(1.0, 1.0, 1.0)), dtype=np.uint8)
    start = tmp_path / "start.safetensors"
    save_prior(make_tiny_prior(), start)
    out = tmp_path / "p.safetensors"
    argv = ["pretrain", "--out", str(out), "--data", str(masks), "--steps", "1", "--samples", "2", "--batch-size", "2"]
    assert main([*argv, "--init", str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing.safetensors" in err and err.count("\n") == 1 and not out.exists()
    assert main([*argv, "--init", str(start), "--grid", "32", "--quiet"]) == 0
    prior = load_prior(out)
    assert prior.config == load_prior(start).config  # the starting prior's architecture, not --grid
    assert prior.training["started_from"] == "start.safetensors"
