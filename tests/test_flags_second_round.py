"""Flags, second round (issues 18 and 22): upper bounds for the flags that size memory or time,
argparse errors in one line, the original code's flags (RepDistiller's ``--tb_freq`` and
``--save_freq``, logit-standardization-KD's ``--logit-stand --base-temp --kd-weight``), KD's
logit-standardization recipe, no run folder before the run's inputs are checked, the default
``--print_freq`` of short epochs, the NaN message's checkpoint, and plain-English counts."""
from __future__ import annotations

import os
import re

import pytest
import torch

import train_student
import train_teacher
from dataset import cifar100
from distiller_zoo.crd import z_message
from distiller_zoo.methods import method_names
from engine.fit import LoopSettings, Member, default_print_freq, run_epoch
from distiller_zoo.methods.embedding import MAX_FEAT_DIM
from engine.options import MAX_DIST_TIMEOUT_MINUTES, counted
from engine.trainer import Run, report_members
from helper.distributed import DistContext
from helper.errors import UserError
from models import model_dict
from scripts.benchmark import device_name, duration
from tests.cifar_fixtures import write_fake_cifar100
from tests.cli_helpers import exit_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = "save/models/resnet110_vanilla/ckpt_epoch_240.pth"  # need not exist for parsing
CPU = torch.device("cpu")


def student(*flags: str):
    return train_student.parse_option(["--path_t", TEACHER, *flags])


def flat_config(*flags: str) -> dict:
    from engine.config import flat

    return flat(student(*flags))


# ----------------------------------------------------------------------------- upper bounds

def test_feat_dim_is_bounded():
    assert flat_config("--distill", "crd", "--feat_dim", str(MAX_FEAT_DIM))["feat_dim"] == MAX_FEAT_DIM
    with pytest.raises(UserError, match=rf"^--feat_dim 1000000000: must lie within 1\.\.{MAX_FEAT_DIM} "):
        student("--distill", "crd", "--feat_dim", "1000000000")


def test_nce_k_is_bounded_by_the_training_set():
    """CIFAR-100's 50,000 training images bound CRD's negatives; methods that draw none do not
    care; digits caps them to its small split (as before)."""
    assert flat_config("--distill", "crd", "--nce_k", "49999")["nce_k"] == 49999
    with pytest.raises(UserError, match=r"^--nce_k 50000: --distill crd .*cifar100's has 50000"):
        student("--distill", "crd", "--nce_k", "50000")
    with pytest.raises(UserError, match=r"^--nce_k 1000000000: "):
        student("--distill", "crd", "--nce_k", "1000000000")
    assert flat_config("--distill", "kd", "--nce_k", "1000000000")["nce_k"] == 10 ** 9
    assert flat_config("--distill", "crd", "--dataset", "digits", "--nce_k", "1000000000")["nce_k"] < 2000


@pytest.mark.parametrize("value", ["1e300", "inf", "nan", "0", "-1", str(MAX_DIST_TIMEOUT_MINUTES + 1)])
def test_dist_timeout_must_be_positive_and_at_most_a_week(value):
    with pytest.raises(UserError, match=r"^--dist_timeout .*at most 10080 \(7 days"):
        student("--dist_timeout", value)


def test_dist_timeout_limits_pass():
    assert flat_config("--dist_timeout", str(MAX_DIST_TIMEOUT_MINUTES))["dist_timeout"] == 7 * 24 * 60
    assert flat_config("--dist_timeout", "0.5")["dist_timeout"] == 0.5


@pytest.mark.parametrize("main, argv", [
    (train_student.main, ["--path_t", TEACHER]),
    (train_teacher.main, ["--model", "resnet8"]),
])
def test_dist_timeout_zero_is_refused_with_print_config(capsys, main, argv):
    line = exit_message(capsys, main, [*argv, "--print_config", "--dist_timeout", "0"])
    assert line.startswith("error: --dist_timeout 0: must be a positive number of minutes")
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- argparse errors

@pytest.mark.parametrize("main, prog, argv, what", [
    (train_student.main, "train_student.py", ["--path_t", TEACHER, "--bogus"], "unrecognized arguments: --bogus"),
    (train_student.main, "train_student.py", ["--path_t", TEACHER, "--epochs", "x"],
     "argument --epochs: invalid int value: 'x'"),
    (train_student.main, "train_student.py", ["--path_t"], "argument --path_t: expected one argument"),
    (train_student.main, "train_student.py", ["--path_t", TEACHER, "--distill", "nope"],
     "argument --distill: invalid choice: 'nope'"),
    (train_teacher.main, "train_teacher.py", ["--modle", "resnet8"], "unrecognized arguments: --modle resnet8"),
    (train_teacher.main, "train_teacher.py", ["--tb_freq", "often"], "argument --tb_freq: invalid int value"),
])
def test_argparse_errors_are_one_line(capsys, main, prog, argv, what):
    line = exit_message(capsys, main, argv)
    assert line.startswith(f"error: {what}") and line.endswith(f"; see {prog} --help"), line


# ----------------------------------------------------------------------------- the originals' flags

@pytest.mark.parametrize("parse, argv", [
    (train_student.parse_option, ["--path_t", TEACHER]),
    (train_teacher.parse_option, ["--model", "resnet8"]),
])
def test_tb_freq_is_accepted_and_ignored(parse, argv):
    """RepDistiller and KDrefine declare --tb_freq and never read it: so here."""
    from engine.config import config_dict

    assert config_dict(parse([*argv, "--tb_freq", "500"])) == config_dict(parse(argv))


def test_tb_freq_stays_out_of_the_printed_configuration(capsys):
    assert train_teacher.main(["--model", "resnet8", "--tb_freq", "500", "--print_config"]) == {}
    assert "tb_freq" not in capsys.readouterr().out


@pytest.mark.parametrize("flags, named", [
    (["--save_freq", "40"], ["--save_freq 40", "<model_s>_last.pth", "leave --save_freq out"]),
    (["--base-temp", "2"], ["--base-temp 2", "--kd_T 2", "--dkd_T 2"]),
    (["--kd-weight", "9"], ["--kd-weight 9", "-a 9", "--dkd_alpha 9"]),
])
def test_original_flags_with_another_meaning_name_the_equivalent(capsys, flags, named):
    line = exit_message(capsys, train_student.main, ["--path_t", TEACHER, *flags, "--print_config"])
    assert line.startswith(f"error: {named[0]} is ")
    for fragment in named[1:]:
        assert fragment in line, (fragment, line)


def test_logit_stand_with_a_hyphen_is_an_alias():
    assert flat_config("--distill", "dkd", "--logit-stand")["logit_stand"] is True


# ----------------------------------------------------------------------------- kd + logit_stand

def test_kd_with_logit_stand_takes_its_authors_recipe():
    """logit-standardization-KD trains KD with CE weight 0.1, KD weight 9 (--kd-weight) and base
    temperature 2 (--base-temp); plain KD keeps RepDistiller's 0.1 / 0.9 / T 4."""
    ls = flat_config("--distill", "kd", "--logit_stand")
    assert (ls["gamma"], ls["alpha"], ls["beta"], ls["kd_T"]) == (0.1, 9.0, 0.0, 2.0)
    plain = flat_config("--distill", "kd")
    assert (plain["gamma"], plain["alpha"], plain["beta"], plain["kd_T"]) == (0.1, 0.9, 0.0, 4.0)
    given = flat_config("--distill", "kd", "--logit_stand", "--kd_T", "3", "-a", "12")
    assert (given["alpha"], given["kd_T"]) == (12.0, 3.0)  # flags given win
    dkd = flat_config("--distill", "dkd", "--logit_stand")
    assert dkd["kd_T"] == 4.0 and (dkd["gamma"], dkd["alpha"], dkd["beta"]) == (1.0, 0.0, 1.0)


@pytest.mark.parametrize("method", ["kdrefine", "crd", "hint"])
def test_logit_stand_mismatch_is_found_when_parsing(method):
    """Before the teacher file is read: --path_t names no file here."""
    takers = ", ".join(method_names(lambda cls: cls.supports_logit_stand))
    assert "kd" in takers.split(", ") and method not in takers.split(", ")
    with pytest.raises(UserError, match=rf"^--logit_stand applies to {takers}, not to --distill {method}"):
        train_student.parse_option(["--path_t", "no/such/teacher.pth", "--distill", method, "--logit_stand"])


# ----------------------------------------------------------------------------- no folder before the inputs

def _no_run_folder(root) -> bool:
    return not (root / "save").exists()


def test_a_teacher_run_offline_without_cifar_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(cifar100, "download_url", offline)
    line = exit_message(capsys, train_teacher.main, ["--model", "resnet8", "--data_folder", "data",
                                                     "--device", "cpu", "--num_workers", "0"])
    assert "CIFAR-100" in line and "download failed" in line
    assert _no_run_folder(tmp_path), os.listdir(tmp_path / "save")


def test_a_student_whose_teacher_does_not_fit_the_data_set_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict()}, path)
    line = exit_message(capsys, train_student.main, ["--path_t", str(path), "--device", "cpu",
                                                     "--num_workers", "0"])
    assert "10-class teacher" in line
    assert _no_run_folder(tmp_path)


def test_a_method_that_does_not_fit_the_pair_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """FSP compares equal channel counts: resnet8 (16, 16, 32, 64) and resnet8x4 differ."""
    monkeypatch.chdir(tmp_path)
    write_fake_cifar100(tmp_path / "data", n_train=16, n_test=8)
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict()}, path)
    exit_message(capsys, train_student.main, ["--path_t", str(path), "--model_s", "resnet8x4", "--distill",
                                              "fsp", "--device", "cpu", "--num_workers", "0",
                                              "--batch_size", "4"])
    assert _no_run_folder(tmp_path)


# ----------------------------------------------------------------------------- progress lines

@pytest.mark.parametrize("steps, every", [(None, 100), (1, 1), (3, 1), (23, 5), (399, 99), (400, 100),
                                          (782, 100)])
def test_default_print_freq(steps, every):
    assert default_print_freq(steps) == every


def _member(batches: int, loss_scale: float = 1.0, save_folder: str = "unused"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(4, 3, 2, 2), torch.randint(0, 10, (4,))) for _ in range(batches)]

    def compute_loss(batch, epoch):
        logits = model(batch.images)
        return torch.nn.functional.cross_entropy(logits, batch.target) * loss_scale, logits

    run = Run(name="m", save_folder=save_folder, train_modules=[model], eval_model=model,
              optimizer=optimizer, state_modules={})
    return Member(None, run, loader), compute_loss


def test_a_short_epoch_prints_a_few_lines_by_default(capsys):
    """Digits has 23 steps per epoch: piped, the default shows steps 5, 10, 15 and 20."""
    member, loss = _member(23)
    run_epoch(member, loss, 1, LoopSettings(terminal=False), DistContext(CPU))
    steps = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert steps == ["Epoch: [1][5/23]", "Epoch: [1][10/23]", "Epoch: [1][15/23]", "Epoch: [1][20/23]"]


def test_print_freq_left_out_is_recorded_as_such():
    assert flat_config()["print_freq"] is None
    assert flat_config("--print_freq", "7")["print_freq"] == 7
    with pytest.raises(UserError, match="^--print_freq 0: must be at least 1"):
        student("--print_freq", "0")


# ----------------------------------------------------------------------------- the NaN message

def test_nan_in_the_first_epoch_says_no_checkpoint_was_written(capsys):
    member, loss = _member(4, loss_scale=float("nan"))
    run_epoch(member, loss, 1, LoopSettings(print_freq=2, terminal=False), DistContext(CPU))
    assert "before writing any checkpoint" in member.failure and "last good" not in member.failure
    report_members([member])
    assert "stopped: training loss became nan at epoch 1" in capsys.readouterr().out


def test_nan_later_names_the_checkpoint_kept(tmp_path):
    member, loss = _member(4, loss_scale=float("nan"), save_folder=str(tmp_path))
    open(member.run.last_path, "wb").close()
    run_epoch(member, loss, 3, LoopSettings(print_freq=2, terminal=False), DistContext(CPU))
    assert f"keeping its last good checkpoint {member.run.last_path} (epoch 2)" in member.failure


# ----------------------------------------------------------------------------- words

def test_counts_are_plural_only_when_more_than_one():
    assert (counted(1, "epoch"), counted(2, "epoch"), counted(0, "thread")) == ("1 epoch", "2 epochs", "0 threads")


def test_the_headline_says_one_epoch(capsys):
    config = student("--epochs", "1")
    config = train_student.with_teacher(config, None)
    member, loss = _member(1)
    line = train_student.headline(config, DistContext(CPU), [member])
    assert "for 1 epoch on" in line and "1 epochs" not in line


def test_the_benchmark_speaks_in_hours_and_days(monkeypatch):
    assert duration(45) == "45.0 s" and duration(600) == "10.0 min" and duration(3 * 3600) == "3.0 h"
    assert duration(5518.3 * 60) == "3.8 days (92.0 h)"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert device_name(CPU) == "cpu (1 thread)"


def test_the_crd_constant_is_explained():
    line = z_message("Z_v1", 1234.56)
    assert line.startswith("CRD: NCE normalization constant Z_v1 (student embeddings") and line.count("\n") == 0
    assert "estimated from the first batch" in line and "1234.6" in line


# ----------------------------------------------------------------------------- the README

def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        return fh.read()


def test_readme_row_of_parse_time_checks_matches_the_code():
    row = next(line for line in readme().splitlines() if line.startswith("| **flags checked at parse time**"))
    at_least_one = row.split("≥ 1")[0]
    assert "`--print_freq`" in at_least_one  # 0 is refused (test_print_freq_left_out_is_recorded_as_such)
    for fragment in ("`--feat_dim`", "65536", "`--nce_k`", "`--dist_timeout`", "10080", "one line"):
        assert fragment in row, fragment


def test_readme_dkd_logit_stand_example_matches_its_table():
    text = readme()
    example = next(line for line in text.splitlines()
                   if "--distill dkd" in line and "--logit_stand" in line and "resnet8x4" in line
                   and line.startswith("python"))
    values = dict(re.findall(r"--(dkd_alpha|dkd_beta|dkd_T) (\S+)", example))
    assert values == {"dkd_alpha": "9", "dkd_beta": "72", "dkd_T": "2"}, example
    assert ("| resnet32x4 → resnet8x4 | `--dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20` (`res32x4_res8x4.yaml`) "
            "| `--dkd_alpha 9 --dkd_beta 72 --dkd_T 2 --dkd_warmup 20`") in text
