"""The command line reads its defaults from the configs and words config errors as its own options."""

from __future__ import annotations

import math

import pytest

from napari_dropsembles.cli import main
from napari_dropsembles.cli.parser import build_parser, cli_setting, cli_wording, config_from_args
from napari_dropsembles.core.config.configs import FinetuneConfig, ReconstructionConfig
from napari_dropsembles.core.config.errors import ConfigError


def _parse(*extra: str):
    return build_parser().parse_args(["reconstruct", "obs.nii.gz", "--out", "out", *extra])


def test_reconstruct_defaults_are_the_config_defaults():
    assert config_from_args(_parse()) == ReconstructionConfig()
    args = _parse()
    assert (args.members, args.steps, args.ewc, args.lr) == (
        ReconstructionConfig().members,
        FinetuneConfig().steps,
        FinetuneConfig().ewc_lambda,
        FinetuneConfig().lr,
    )


def test_input_threshold_and_mesh_level_are_two_options():
    binarised = _parse("--threshold", "0.3")
    assert binarised.threshold == 0.3 and config_from_args(binarised).threshold == 0.5  # the input only
    level = _parse("--level", "0.3")
    assert level.threshold is None and config_from_args(level).threshold == 0.3  # the mesh only
    config = config_from_args(_parse("--steps", "7", "--ewc", "0", "--members", "2", "--seed", "5"))
    assert (config.finetune.steps, config.finetune.ewc_lambda, config.members, config.seed) == (7, 0.0, 2, 5)


@pytest.mark.parametrize(
    "field, option",
    [
        ("finetune.ewc_lambda", "--ewc"),
        ("finetune.steps", "--steps"),
        ("resolution_mm", "--resolution"),
        ("threshold", "--level"),
        ("members", "--members"),
        ("empty_slices", "--empty-slices"),
        ("grid_size", "--grid"),
        ("batch_size", "--batch-size"),
    ],
)
def test_config_errors_name_the_option(field, option):
    error = ConfigError(field, "must be a finite number >= 0", math.inf)
    assert cli_wording(error) == f"{option} must be a finite number >= 0, got inf"


def test_a_nested_field_error_names_the_option(capsys):
    with pytest.raises(ConfigError) as info:
        config_from_args(_parse("--steps", "-3"))
    assert info.value.field == "finetune.steps"
    assert cli_setting("empty_slices", "background") == "--empty-slices background"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--grid", "3"], "--grid must be an integer from 4 to 256, got 3"),
        (["--lr", "inf"], "--lr must be a finite number in (0, 10], got inf"),
        (["--slice-axes", "3"], "--slice-axes must be an integer from 0 to 2, got 3"),
        (["--slice-axes", "1", "1"], "--slice-axes must be distinct voxel axes among 0, 1, 2"),
    ],
)
def test_pretrain_refuses_bad_settings_before_any_work(tmp_path, capsys, argv, words):
    assert main(["pretrain", "--out", str(tmp_path / "p.safetensors"), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "p.safetensors").exists()


def test_benchmarks_are_not_a_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "paper"])
    assert info.value.code == 2


def test_core_messages_name_settings_that_each_front_end_words_its_own_way():
    from napari_dropsembles._gui.state import RunState
    from napari_dropsembles._gui.workers import Outcome, gui_word
    from napari_dropsembles.cli.parser import cli_word
    from napari_dropsembles.core.config.errors import InputError, setting

    error = InputError(
        f"choose {setting('label', 'N')} or pass {setting('input_threshold', 'T')}; {setting('members')}"
    )
    assert str(error) == "choose label=N or pass input_threshold=T; members"  # Python callers: the fields
    assert error.in_words(cli_word) == "choose --label N or pass --threshold T; --members"
    assert error.in_words(gui_word) == "choose 'Label' = N or pass 'Threshold image' = T; 'Members'"
    assert Outcome(RunState.FAILED, error=error).message == error.in_words(gui_word)
