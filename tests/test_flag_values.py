"""Every numeric flag is checked against its meaning when the flags are parsed
(engine.options.check_flag_values): a bad value is one line on stderr naming the flag, the value
and what is allowed, exit 2, before anything loads or trains; good flag sets still run
(``--print_config`` exits 0 after parsing)."""
from __future__ import annotations

import json

import pytest
import torch

import convert
import train_student
import train_teacher
import validation
from helper.errors import UserError
from engine.options import check_flag_values
from tests.cli_helpers import exit_message

TEACHER = "save/models/resnet110_vanilla/ckpt_epoch_240.pth"  # need not exist with --print_config


def student(*flags: str) -> list[str]:
    return ["--path_t", TEACHER, "--print_config", *flags]


def teacher(*flags: str) -> list[str]:
    return ["--model", "resnet8", "--print_config", *flags]


# (flags, what the one line must name): the flag, and the value as given
BAD_STUDENT = [
    (["--epochs", "0"], "--epochs 0"),
    (["--epochs", "-3"], "--epochs -3"),
    (["--batch_size", "0"], "--batch_size 0"),
    (["--kd_T", "0"], "--kd_T 0"),
    (["--kd_T", "inf"], "--kd_T inf"),
    (["--print_freq", "-1"], "--print_freq -1"),
    (["--init_epochs", "-1"], "--init_epochs -1"),
    (["--nce_k", "0"], "--nce_k 0"),
    (["--feat_dim", "0"], "--feat_dim 0"),
    (["--feat_dim", "65537"], "--feat_dim 65537"),
    (["--distill", "crd", "--nce_k", "50000"], "--nce_k 50000"),
    (["--dist_timeout", "1e300"], "--dist_timeout 1e+300"),
    (["--dist_timeout", "0"], "--dist_timeout 0"),
    (["--print_freq", "0"], "--print_freq 0"),
    (["--distill", "kdrefine", "--logit_stand"], "--logit_stand"),
    (["--nce_t", "0"], "--nce_t 0"),
    (["--nce_m", "1"], "--nce_m 1"),
    (["--nce_m", "-0.1"], "--nce_m -0.1"),
    (["--dkd_T", "-4"], "--dkd_T -4"),
    (["--dkd_warmup", "0"], "--dkd_warmup 0"),
    (["--dkd_beta", "-8"], "--dkd_beta -8"),
    (["--trials", "0"], "--trials"),
    (["--num_workers", "-1"], "--num_workers -1"),
    (["--learning_rate", "-0.05"], "--learning_rate -0.05"),
    (["--learning_rate", "nan"], "--learning_rate nan"),
    (["--weight_decay", "-0.0005"], "--weight_decay -0.0005"),
    (["--momentum", "1"], "--momentum 1"),
    (["--momentum", "-0.9"], "--momentum -0.9"),
    (["--lr_decay_rate", "0"], "--lr_decay_rate 0"),
    (["--lr_decay_rate", "10"], "--lr_decay_rate 10"),
    (["-r", "-1"], "-r/--gamma -1"),
    (["-a", "nan"], "-a/--alpha nan"),
    (["-b=-inf"], "-b/--beta -inf"),
    (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2 ** 32)], f"--seed {2 ** 32}"),
    (["--seed", str(2 ** 32 - 1), "--trials", "2"], f"--seed {2 ** 32 - 1}"),
    (["--device", "bogus"], "--device bogus"),
    (["--device", "cuda:"], "--device cuda:"),
    (["--device", "CPU"], "--device CPU"),
    (["--epochs", "3", "--lr_decay_epochs", "2,5"], "--lr_decay_epochs 2,5"),
    (["--epochs", "3", "--lr_decay_epochs", "0"], "--lr_decay_epochs 0"),
    (["--epochs", "1", "--lr_decay_epochs", "150,180,210"], "--lr_decay_epochs 150,180,210"),
    (["--model_s", "resnet8", "-t", "ACB"], "-t/--blocktype ACB"),
    (["--model_s", "MobileNetV2", "-t", "base"], "-t/--blocktype base"),
]


@pytest.mark.parametrize("flags, named", BAD_STUDENT, ids=[" ".join(f) for f, _ in BAD_STUDENT])
def test_bad_student_flag(capsys, flags, named):
    line = exit_message(capsys, train_student.main, student(*flags))
    assert line.startswith(f"error: {named}"), line
    assert capsys.readouterr().out == ""  # nothing printed, nothing trained


BAD_TEACHER = [
    (["--epochs", "0"], "--epochs 0"),
    (["--save_freq", "-1"], "--save_freq -1"),
    (["--batch_size", "-64"], "--batch_size -64"),
    (["--print_freq", "-5"], "--print_freq -5"),
    (["--print_freq", "0"], "--print_freq 0"),
    (["--dist_timeout", "0"], "--dist_timeout 0"),
    (["--dist_timeout", "20000"], "--dist_timeout 20000"),
    (["--device", "gpu"], "--device gpu"),
    (["--epochs", "2", "--lr_decay_epochs", "1,3"], "--lr_decay_epochs 1,3"),
    (["--dataset", "imagenet", "--model", "resnet18", "--epochs", "10", "--lr_decay_epochs", "30"],
     "--lr_decay_epochs 30"),
]


@pytest.mark.parametrize("flags, named", BAD_TEACHER, ids=[" ".join(f) for f, _ in BAD_TEACHER])
def test_bad_teacher_flag(capsys, flags, named):
    line = exit_message(capsys, train_teacher.main, teacher(*flags))
    assert line.startswith(f"error: {named}"), line


def test_messages_say_what_is_allowed(capsys):
    assert exit_message(capsys, train_student.main, student("--momentum", "1")) == \
        "error: --momentum 1: must lie in [0, 1) (SGD momentum)"
    assert exit_message(capsys, train_student.main, student("--epochs", "3", "--lr_decay_epochs", "2,5")) == \
        "error: --lr_decay_epochs 2,5: each decay epoch must lie within 1..3 (--epochs 3); 5 does not"
    line = exit_message(capsys, train_student.main, student("-r", "-1"))
    assert "negative weight" in line
    line = exit_message(capsys, train_student.main, student("--device", "bogus"))
    assert "auto, cpu, cuda or cuda:N" in line
    line = exit_message(capsys, train_student.main, student("--model_s", "resnet8", "-t", "ACB"))
    assert "resnet8 is not re-parameterizable" in line and "represnet8" in line


def config(capsys, fn, argv) -> dict:
    assert fn(argv) == {}
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


@pytest.mark.parametrize("flags", [
    ["--epochs", "1"],  # the default schedule (150,180,210) is no error for a short run
    ["--epochs", "3", "--lr_decay_epochs", "1,2,3"],
    ["--epochs", "3", "--lr_decay_epochs", ""],  # no decay at all
    ["--print_freq", "1", "--init_epochs", "0", "--num_workers", "0"],
    ["--learning_rate", "0", "--weight_decay", "0", "--momentum", "0", "--lr_decay_rate", "1"],
    ["-r", "0", "-a", "0", "-b", "2.5", "--nce_m", "0", "--seed", "0"],
    ["--seed", str(2 ** 32 - 2), "--trials", "2"],
    ["--device", "cpu"], ["--device", "cuda"], ["--device", "auto"],
    ["--model_s", "resnet8"],  # the default block type with a plain student is fine
    ["--model_s", "represnet8", "-t", "ACB"],
    ["--distill", "crd", "--feat_dim", "65536", "--nce_k", "49999", "--dist_timeout", "10080"],
    ["--tb_freq", "500"],
    ["--dataset", "digits", "--model_s", "repvgg8", "-t", "RepVGG", "--epochs", "2"],
], ids=lambda flags: " ".join(flags) or "none")
def test_good_student_flags_pass(capsys, flags):
    cfg = config(capsys, train_student.main, student(*flags))
    if flags[:2] == ["--epochs", "1"]:
        assert cfg["epochs"] == 1 and cfg["lr_decay_epochs"] == [150, 180, 210]


def test_good_teacher_flags_pass(capsys):
    cfg = config(capsys, train_teacher.main, teacher("--epochs", "1"))
    assert cfg["epochs"] == 1 and cfg["lr_decay_epochs"] == [150, 180, 210]
    cfg = config(capsys, train_teacher.main, teacher("--save_freq", "0", "--epochs", "2", "--lr_decay_epochs", "2"))
    assert cfg["save_freq"] == 0
    cfg = config(capsys, train_teacher.main, ["--model", "resnet18", "--dataset", "imagenet", "--epochs", "1",
                                              "--print_config"])
    assert cfg["lr_decay_epochs"] == [30, 60, 90]


@pytest.mark.parametrize("flags, named", [
    (["--batch_size", "0"], "--batch_size 0"),
    (["--num_workers", "-2"], "--num_workers -2"),
    (["--device", "bogus"], "--device bogus"),
])
def test_bad_validation_flags_before_the_file_is_read(capsys, flags, named):
    line = exit_message(capsys, validation.main, ["--model", "resnet8", "--model_path", "missing.pth", *flags])
    assert line.startswith(f"error: {named}") and "missing.pth" not in line, line


def test_cuda_index_beyond_the_devices(capsys):
    if not torch.cuda.is_available():
        # without CUDA the index is not checked at parse time (resolve_device says there is none)
        config(capsys, train_student.main, student("--device", "cuda:7"))
        return
    count = torch.cuda.device_count()
    line = exit_message(capsys, train_student.main, student("--device", f"cuda:{count}"))
    assert f"--device cuda:{count}" in line


def test_check_flag_values_on_a_mapping():
    """Flags a script lacks are skipped; without the schedule's record, decay epochs count as given."""
    check_flag_values({"batch_size": 1})
    check_flag_values({})
    with pytest.raises(UserError, match=r"^--lr_decay_epochs 5: .*1\.\.4"):
        check_flag_values({"epochs": 4, "lr_decay_epochs": "5"})
    check_flag_values({"epochs": 4, "lr_decay_epochs": [150], "schedule_defaults": frozenset({"lr_decay_epochs"})})
    assert "schedule_defaults" not in config_keys()


def config_keys() -> set:
    from engine.config import config_dict

    config = train_student.parse_option(["--path_t", TEACHER, "--epochs", "1"])
    return set(config_dict(config))


def test_convert_checks_its_flags(tmp_path, capsys):
    source = tmp_path / "t.pth"
    source.write_bytes(b"")
    line = exit_message(capsys, convert.main, ["--load", str(source), "--save", str(source)])
    assert "--save" in line and "another file" in line
