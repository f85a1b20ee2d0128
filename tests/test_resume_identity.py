"""A resume continues exactly one run: ``--resume`` compares the checkpoint's recorded
configuration with the command and refuses every difference in what the run computes, naming
each; an explicit ``--epochs`` may move the planned end and is recorded; a metrics file is only
ever written by the run it describes. ``--trial`` is a safe folder name.

Most cases call the checks directly on configurations built from flags; one student and one
teacher command line show the wiring (refused before anything is written, metrics untouched).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import train_student
import train_teacher
from engine.config import config_dict
from engine.trainer import TEACHER_SHA, Run, check_continuation, resume, result_keys, save_epoch
from helper.checkpoint import load_checkpoint, save_checkpoint
from helper.errors import UserError
from helper.provenance import file_sha256
from models import CIFAR_ZOO
from tests.cifar_fixtures import write_fake_cifar100
from tests.cli_helpers import exit_message

METRICS = "test_last_metrics.json"


def student(*flags: str):
    """A student configuration of ``flags`` (the teacher's architecture named, no file read)."""
    return train_student.parse_option(["--path_t", "t.pth", "--model_t", "resnet8", "--model_s", "represnet8",
                                       "--distill", "kd", "--epochs", "2", "--seed", "0", *flags])


def teacher(*flags: str):
    return train_teacher.parse_option(["--model", "resnet8", "--epochs", "2", "--seed", "0", *flags])


def checkpoint_of(config, epoch: int = 2, arch: str = "represnet8") -> dict:
    return {"config": config_dict(config), "epoch": epoch, "arch": arch}


def refusal(ckpt: dict, config, arch: str = "represnet8") -> str:
    with pytest.raises(UserError) as err:
        check_continuation(ckpt, "run/represnet8_last.pth", config, arch)
    text = str(err.value)
    assert "\n" not in text and text.startswith("cannot resume from run/represnet8_last.pth")
    return text


# ---- which settings count ---------------------------------------------------------------------

def test_result_keys_come_from_the_sections():
    keys = set(result_keys(student()))
    assert {"model_s", "model_t", "blocktype", "distill", "gamma", "alpha", "beta", "kd_T", "logit_stand",
            "epochs", "batch_size", "learning_rate", "lr_decay_epochs", "lr_decay_rate",
            "weight_decay", "momentum", "no_lr_scale", "dataset", "loader", "trial", "seed"} <= keys
    assert not keys & {"print_freq", "num_workers", "device", "resume", "overwrite", "dist_timeout", "path_t",
                       "data_folder", "world_size", "base_learning_rate", "save_folder", "tb_folder", "amp",
                       "compile", "trials", "trials_mode"}
    assert not keys & {"nce_k", "feat_dim", "dkd_alpha", "init_epochs"}  # kd reads no method parameters
    assert "init_epochs" in result_keys(student("--distill", "fsp"))  # its init stage's length
    assert {"nce_k", "feat_dim", "nce_t", "nce_m", "mode"} <= set(result_keys(student("--distill", "crd")))
    assert "dkd_alpha" in result_keys(student("--distill", "dkd")) and "nce_k" not in result_keys(
        student("--distill", "dkd"))
    teacher_keys = set(result_keys(teacher()))
    assert {"model", "learning_rate", "weight_decay", "trial", "seed"} <= teacher_keys
    assert "save_freq" not in teacher_keys


def test_a_flag_the_method_never_reads_may_differ():
    """kd has no init stage: an --init_epochs given to its resume changes nothing it computes,
    so it is not a difference; fsp's init stage reads it, so there it is one."""
    assert check_continuation(checkpoint_of(student()), "run/represnet8_last.pth",
                              student("--init_epochs", "7"), "represnet8") == []
    fsp = checkpoint_of(student("--distill", "fsp"))
    assert "init_epochs: 30 in the checkpoint, 7 in the command" in refusal(
        fsp, student("--distill", "fsp", "--init_epochs", "7"))


def test_another_teacher_file_is_refused_where_both_hashes_are_known():
    ckpt = {**checkpoint_of(student()), TEACHER_SHA: "a" * 64}
    assert check_continuation(ckpt, "run/represnet8_last.pth", student(), "represnet8", "a" * 64) == []
    assert check_continuation(ckpt, "run/represnet8_last.pth", student(), "represnet8") == []  # unknown: not compared
    older = checkpoint_of(student())  # written before checkpoints recorded the teacher's hash
    assert check_continuation(older, "run/represnet8_last.pth", student(), "represnet8", "b" * 64) == []
    with pytest.raises(UserError, match=r"another teacher file \(sha256 aaaaaaaaaaaa; this command's --path_t "
                                        r"has sha256 bbbbbbbbbbbb\)"):
        check_continuation(ckpt, "run/represnet8_last.pth", student(), "represnet8", "b" * 64)


def test_another_method_trial_and_seed_are_refused_and_named():
    ckpt = checkpoint_of(student("--trial", "1"))
    text = refusal(ckpt, student("--distill", "attention", "--trial", "7", "--seed", "3"))
    assert "distill: kd in the checkpoint, attention in the command" in text
    assert "trial: 1 in the checkpoint, 7 in the command" in text
    assert "seed: 0 in the checkpoint, 3 in the command" in text


def test_new_training_settings_are_refused_and_named():
    ckpt = checkpoint_of(student())
    text = refusal(ckpt, student("--learning_rate", "0.9", "--kd_T", "20", "--weight_decay", "0.1",
                                 "--seed", "99", "--batch_size", "128"))
    for part in ("learning_rate: 0.05 in the checkpoint, 0.9 in the command",
                 "kd_T: 4.0 in the checkpoint, 20.0 in the command",
                 "weight_decay: 0.0005 in the checkpoint, 0.1 in the command",
                 "batch_size: 64 in the checkpoint, 128 in the command",
                 "seed: 0 in the checkpoint, 99 in the command"):
        assert part in text, text
    text = refusal(checkpoint_of(teacher(), arch="resnet8"), teacher("--momentum", "0.5"), arch="resnet8")
    assert "momentum: 0.9 in the checkpoint, 0.5 in the command" in text


def test_how_a_run_is_carried_out_may_change():
    ckpt = checkpoint_of(student())
    same = student("--print_freq", "7", "--num_workers", "3", "--device", "cpu", "--dist_timeout", "5",
                   "--resume", "--no_channels_last", "--data_folder", "elsewhere")
    assert check_continuation(ckpt, "x.pth", same, "represnet8") == []


def test_an_explicit_epochs_extension_is_allowed_and_returned():
    ckpt = checkpoint_of(student(), epoch=2)
    assert check_continuation(ckpt, "x.pth", student("--epochs", "5"), "represnet8") == [
        {"at_epoch": 2, "from": 2, "to": 5}]
    earlier = {**ckpt, "epochs_changed": [{"at_epoch": 1, "from": 1, "to": 2}]}
    assert check_continuation(earlier, "x.pth", student("--epochs", "5"), "represnet8") == [
        {"at_epoch": 1, "from": 1, "to": 2}, {"at_epoch": 2, "from": 2, "to": 5}]
    short = checkpoint_of(student("--epochs", "8"), epoch=6)
    assert "not end it before" in refusal(short, student("--epochs", "5"))
    default = train_student.parse_option(["--path_t", "t.pth", "--model_t", "resnet8", "--model_s", "represnet8",
                                          "--distill", "kd", "--seed", "0"])  # --epochs left out: 240
    text = refusal(ckpt, default)
    assert "epochs: 2 in the checkpoint, 240 in the command" in text and "give --epochs" in text


def test_a_one_epoch_run_extended_is_said_in_the_singular(tmp_path, capsys):
    model = torch.nn.Linear(2, 2)
    run = Run(name="resnet8", save_folder=str(tmp_path), train_modules=[model], eval_model=model,
              optimizer=torch.optim.SGD(model.parameters(), lr=0.1), state_modules={"model": model},
              extra_state={"arch": "resnet8"})
    one_epoch = train_teacher.parse_option(["--model", "resnet8", "--epochs", "1", "--seed", "0"])
    save_epoch(run, one_epoch, 1, 10.0, 10.0, is_best=False)
    resume(run, run.last_path, teacher("--epochs", "3"))
    assert "the run planned 1 epoch;" in capsys.readouterr().out


def test_another_architecture_is_named_before_the_settings():
    text = refusal(checkpoint_of(teacher(), arch="resnet8"), student())
    assert "it is a resnet8 run, this one trains represnet8" in text


def test_resume_records_the_extension_and_warns_for_a_file_without_configuration(tmp_path, capsys):
    """resume() itself checks (under the lock), keeps the extension with the run, and continues a
    file that records no configuration with a warning line."""
    def run_of():
        model = torch.nn.Linear(2, 2)
        return Run(name="resnet8", save_folder=str(tmp_path), train_modules=[model], eval_model=model,
                   optimizer=torch.optim.SGD(model.parameters(), lr=0.1), state_modules={"model": model},
                   extra_state={"arch": "resnet8"})

    first = run_of()
    save_epoch(first, teacher(), 2, 10.0, 10.0, is_best=False)
    with pytest.raises(UserError, match="learning_rate: 0.05 in the checkpoint, 0.2 in the command"):
        resume(run_of(), first.last_path, teacher("--learning_rate", "0.2"))
    extended = run_of()
    progress = resume(extended, first.last_path, teacher("--epochs", "4"))
    assert progress.start_epoch == 3 and "the run planned 2 epochs" in capsys.readouterr().out
    save_epoch(extended, teacher("--epochs", "4"), 3, 11.0, 11.0, is_best=False)
    ckpt = load_checkpoint(first.last_path)
    assert ckpt["config"]["epochs"] == 4 and ckpt["epochs_changed"] == [{"at_epoch": 2, "from": 2, "to": 4}]
    again = run_of()  # a later resume carries the record on
    resume(again, first.last_path, teacher("--epochs", "4"))
    assert again.extra_state["epochs_changed"] == [{"at_epoch": 2, "from": 2, "to": 4}]

    old = {k: v for k, v in ckpt.items() if k not in ("config", "digest")}
    save_checkpoint(old, first.last_path)
    capsys.readouterr()
    resume(run_of(), first.last_path, teacher("--learning_rate", "0.2"))
    assert "warning:" in capsys.readouterr().out


# ---- the command lines -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Small CIFAR-format files and an untrained resnet8 teacher file (no teacher training)."""
    root = tmp_path_factory.mktemp("resume_identity")
    write_fake_cifar100(root / "data", n_train=64, n_test=64, seed=0)
    model = CIFAR_ZOO.build("resnet8", num_classes=100)
    save_checkpoint({"model": model.state_dict(), "arch": "resnet8"}, str(root / "teacher.pth"))
    return root


def student_argv(*extra: str) -> list[str]:
    return ["--path_t", "teacher.pth", "--model_s", "represnet8", "--distill", "kd", "--epochs", "1",
            "--lr_decay_epochs", "1", "--batch_size", "32", "--print_freq", "2", "--seed", "0",
            "--num_workers", "0", "--trial", "1", *extra]


def listing(*folders: str) -> set[str]:
    return {os.path.join(f, n) for f in folders if os.path.isdir(f) for n in os.listdir(f)}


def test_student_resume_of_another_run_is_refused_and_an_extension_recorded(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    train_student.main(student_argv())
    folder = os.path.join("save", "student_model", "S_represnet8_T_resnet8_cifar100_kd_r_0.1_a_0.9_b_0.0_1")
    metrics = os.path.join(folder, METRICS)
    before, outputs = open(metrics, "rb").read(), listing(folder, *(os.path.join("save", d) for d in (
        "student_model", "student_tensorboards")))
    last = os.path.join(folder, "represnet8_last.pth")
    capsys.readouterr()

    msg = exit_message(capsys, train_student.main,
                       student_argv("--distill", "attention", "--trial", "7", "--seed", "3", "--resume", last))
    assert "distill: kd in the checkpoint, attention in the command" in msg and "trial: 1" in msg
    assert "seed: 0 in the checkpoint, 3 in the command" in msg
    msg = exit_message(capsys, train_student.main,
                       student_argv("--learning_rate", "0.9", "--kd_T", "20", "--weight_decay", "0.1",
                                    "--seed", "99", "--batch_size", "16", "--resume"))
    for key in ("learning_rate", "kd_T", "weight_decay", "seed", "batch_size"):
        assert f"{key}: " in msg, msg
    torch.manual_seed(1)  # the same architecture with other weights: another teacher
    save_checkpoint({"model": CIFAR_ZOO.build("resnet8", num_classes=100).state_dict(), "arch": "resnet8"},
                    "other_teacher.pth")
    msg = exit_message(capsys, train_student.main, student_argv("--epochs", "2", "--resume",
                                                                "--path_t", "other_teacher.pth"))
    assert "distilled from another teacher file" in msg
    assert load_checkpoint(last)[TEACHER_SHA][:12] in msg and file_sha256("other_teacher.pth")[:12] in msg
    assert open(metrics, "rb").read() == before  # a metrics file is only written by its own run
    assert listing(folder, *(os.path.join("save", d) for d in ("student_model", "student_tensorboards"))) == outputs

    shutil.copyfile("teacher.pth", "same_teacher_elsewhere.pth")  # the same file's bytes at another path
    train_student.main(student_argv("--epochs", "2", "--resume", "--path_t", "same_teacher_elsewhere.pth"))
    record = json.load(open(metrics))
    assert record["planned_epochs"] == record["reached_epoch"] == record["config"]["epochs"] == 2
    assert record["epochs_changed"] == [{"at_epoch": 1, "from": 1, "to": 2}]
    assert load_checkpoint(last)["epochs_changed"] == record["epochs_changed"]
    assert record["teacher"]["sha256"] == load_checkpoint(last)[TEACHER_SHA] == file_sha256("teacher.pth")


def test_teacher_resume_with_other_settings_is_refused_before_anything_loads(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    config = teacher("--num_workers", "0")
    model = torch.nn.Linear(2, 2)  # what the check reads is the record, not the weights
    run = Run(name="resnet8", save_folder=config.save_folder, train_modules=[model], eval_model=model,
              optimizer=torch.optim.SGD(model.parameters(), lr=0.1), state_modules={"model": model},
              extra_state={"arch": "resnet8"})
    save_epoch(run, config, 2, 1.0, 1.0, is_best=False)
    last = os.path.join(config.save_folder, "resnet8_last.pth")
    msg = exit_message(capsys, train_teacher.main, ["--model", "resnet8", "--epochs", "2", "--seed", "0",
                                                    "--momentum", "0.5", "--resume"])
    assert "momentum: 0.9 in the checkpoint, 0.5 in the command" in msg
    msg = exit_message(capsys, train_teacher.main, ["--model", "resnet8", "--epochs", "2", "--seed", "0",
                                                    "--learning_rate", "0.9", "--resume", last])
    assert "learning_rate: 0.05 in the checkpoint, 0.9 in the command" in msg
    assert sorted(os.listdir(config.save_folder)) == ["resnet8_last.pth"]  # no lock, log or TensorBoard
    msg = exit_message(capsys, train_teacher.main, ["--model", "resnet8", "--trial", "9", "--resume"])
    assert "holds no resnet8_last.pth" in msg and "leave out --resume" in msg


# ---- --trial --------------------------------------------------------------------------------

@pytest.mark.parametrize("trial", ["../../x", "", ".", "..", "a/b", "a\\b", "x\n", "a b", "x" * 65])
def test_unsafe_trial_names_are_refused_at_parse_time(trial):
    for parse in (lambda: student("--trial", trial), lambda: teacher("--trial", trial)):
        with pytest.raises(UserError, match="--trial") as err:
            parse()
        assert "\n" not in str(err.value)


def test_safe_trial_names_pass():
    assert student("--trial", "seed-3_v1.2").run.trial == "seed-3_v1.2"
