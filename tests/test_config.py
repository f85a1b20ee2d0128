"""The typed configuration (engine.config): frozen sections built once from the flags, each flag
one field, trials made with dataclasses.replace, and the flat keys checkpoints record."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import train_student
import train_teacher
from engine.config import (DataConfig, MethodConfig, OptimConfig, StudentConfig, TeacherConfig, config_dict,
                           flat, on_device, with_section)
from engine.options import option_names
from engine.trials import trial_configs

#: Fields no flag fills: what building the configuration derives from the flags.
DERIVED = {"base_learning_rate", "world_size", "schedule_defaults", "channels_last"}


def field_names(config) -> list[str]:
    return [name for section in config.sections() for name, _ in section.items()]


@pytest.mark.parametrize("script, argv", [(train_teacher, []), (train_student, ["--path_t", "t.pth"])])
def test_every_flag_is_one_field_and_every_field_a_flag(script, argv):
    config = script.parse_option(argv)
    names = field_names(config)
    assert len(names) == len(set(names))  # no flag lives in two sections
    flags = set(option_names(script.build_parser()))
    assert flags == set(names) - DERIVED
    assert DERIVED <= set(names)


def test_a_field_without_a_flag_cannot_be_built():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithStray(DataConfig):
        stray: int

    flags = {"dataset": "digits", "data_folder": "./data", "num_workers": 0, "loader": None}
    assert WithStray.from_flags({**flags, "stray": 1}).stray == 1
    with pytest.raises(TypeError, match="no flag defines stray"):
        WithStray.from_flags(flags)


def test_sections_are_frozen_and_typed():
    config = train_student.parse_option(["--path_t", "t.pth", "--distill", "crd", "--dataset", "digits"])
    assert isinstance(config, StudentConfig)
    assert isinstance(config.optim, OptimConfig) and isinstance(config.method, MethodConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = None
    assert config.optim.lr_decay_epochs == (150, 180, 210)
    # the method's own parameters are its Params, with digits' cap on the CRD negatives applied once
    assert config.method.params.nce_k == flat(config)["nce_k"] < 16384
    assert train_teacher.parse_option(["--model", "resnet8"]).__class__ is TeacherConfig


def test_trials_are_replaced_copies_whose_folders_follow():
    config = train_student.parse_option(["--path_t", "t.pth", "--model_t", "resnet8", "--trials", "3",
                                         "--trial", "4", "--seed", "10"])
    trials = trial_configs(config)
    assert [(t.run.trial, t.run.seed) for t in trials] == [("4", 10), ("5", 11), ("6", 12)]
    assert [t.save_folder.rsplit("_", 1)[1] for t in trials] == ["4", "5", "6"]
    assert all(t.optim is config.optim and t.method is config.method for t in trials)  # shared, unchanged
    assert config.run.trial == "4" and trial_configs(with_section(config, "run", trials=1)) == \
        [with_section(config, "run", trials=1)]


def test_what_is_learnt_later_is_a_new_object():
    config = train_student.parse_option(["--path_t", "t.pth", "--no_channels_last"])
    assert on_device(config, torch.device("cpu")).run.channels_last is False
    fast = train_student.parse_option(["--path_t", "t.pth"])
    assert on_device(fast, torch.device("cpu")).run.channels_last is True
    named = with_section(fast, "model", model_t="resnet56")
    assert fast.model.model_t is None and named.model.model_t == "resnet56"
    assert "_T_resnet56_" in named.save_folder and "_T_resnet56_" in config_dict(named)["model_name"]


def test_config_dict_is_the_recorded_flat_configuration():
    config = train_teacher.parse_option(["--model", "resnet8", "--dataset", "digits", "--epochs", "2"])
    recorded = config_dict(config)
    assert recorded["lr_decay_epochs"] == [150, 180, 210] and "schedule_defaults" not in recorded
    assert recorded["model_name"] == "resnet8_digits_lr_0.05_decay_0.0005_trial_0"
    assert recorded["save_folder"] == "save/models/" + recorded["model_name"]
    # --plugin is recorded only when given (tests/test_plugins.py)
    assert set(recorded) == set(field_names(config)) - {"schedule_defaults", "plugin"} | {"model_name", "save_folder",
                                                                                         "tb_folder"}
