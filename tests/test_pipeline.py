"""The README pipeline end to end through the CLIs, on generated CIFAR-format files:
train_teacher -> train_student (kdrefine) -> convert -> validation, plus resume, NaN handling
and the one-line errors for bad input."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

import convert
import engine.fit
import train_student
import train_teacher
import validation
from tests.cli_helpers import (FAST, TEACHER_LAST, TEACHER_RUN, exit_message, student_args,  # noqa: F401
                               student_folder, teacher_workdir)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return teacher_workdir(tmp_path_factory)


def test_teacher_outputs(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    folder = os.path.join("save", "models", TEACHER_RUN)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pth")) == [
        "ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "resnet8_best.pth", "resnet8_last.pth"]
    ckpt = torch.load(os.path.join(folder, "ckpt_epoch_2.pth"), weights_only=True)
    assert {"model", "epoch", "accuracy", "optimizer", "arch", "config"} <= set(ckpt)
    assert ckpt["arch"] == "resnet8" and ckpt["epoch"] == 2 and 0 <= ckpt["accuracy"] <= 100
    assert ckpt["config"]["model"] == "resnet8"
    for name in ("resnet8_best.pth", "resnet8_last.pth", "ckpt_epoch_1.pth"):
        saved = torch.load(os.path.join(folder, name), weights_only=True)
        assert {"model", "epoch", "accuracy", "optimizer", "arch", "config"} <= set(saved), name
    events = os.listdir(os.path.join("save", "teacher_tensorboards", TEACHER_RUN))
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")


def test_pipeline_kdrefine_convert_validate(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    last = train_student.main(student_args("--distill", "kdrefine", "--trial", "1"))
    out = capsys.readouterr().out
    assert "teacher resnet8" in out and "test accuracy" in out
    folder = student_folder()
    metrics = json.load(open(os.path.join(folder, "test_last_metrics.json")))
    assert set(metrics) == {"test_acc", "test_acc_top5", "test_loss", "epoch", "planned_epochs",
                            "reached_epoch", "config", "teacher", "versions", "wall_time_s"}
    assert metrics["epoch"] == 2 and {k: metrics[k] for k in last} == pytest.approx(last)
    assert os.path.isfile(os.path.join(folder, "represnet8_best.pth"))
    assert os.listdir(os.path.join("save", "student_tensorboards", os.path.basename(folder)))

    train_form = os.path.join(folder, "represnet8_last.pth")
    deploy_form = os.path.join(folder, "represnet8_deploy.pth")
    convert.main(["--load", train_form, "--save", deploy_form, "-a", "represnet8"])
    capsys.readouterr()
    acc_train = validation.main(["--model", "represnet8", "--model_path", train_form,
                                 "--deploy_flag", "False"])
    out_train = capsys.readouterr().out.strip().splitlines()
    acc_deploy = validation.main(["--model", "represnet8", "--model_path", deploy_form])
    out_deploy = capsys.readouterr().out.strip().splitlines()
    assert out_train[-1] == f"accuracy: {acc_train:.2f}"
    assert out_deploy[-1] == f"accuracy: {acc_deploy:.2f}"
    assert acc_deploy == pytest.approx(acc_train)
    assert acc_train == pytest.approx(metrics["test_acc"])
    assert any("parameters" in line for line in out_deploy)
    state = torch.load(deploy_form, weights_only=True)
    assert any(k.endswith("tdb_reparam.weight") for k in state)

    # deploy weights given as train form, and the reverse: one line with the hint
    msg = exit_message(capsys, validation.main, ["--model", "represnet8", "--model_path", deploy_form,
                                                 "--deploy_flag", "False"])
    assert deploy_form in msg and "--deploy_flag True" in msg
    msg = exit_message(capsys, validation.main, ["--model", "represnet8", "--model_path", train_form])
    assert "--deploy_flag False" in msg


def test_resume_continues_exactly(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    train_student.main(student_args("--distill", "kd", "--trial", "straight"))
    train_student.main(student_args("--distill", "kd", "--trial", "resumed", "--epochs", "1"))
    train_student.main(student_args("--distill", "kd", "--trial", "resumed", "--resume"))
    straight = torch.load(os.path.join(student_folder("kd", trial="straight"), "represnet8_last.pth"),
                          weights_only=True)
    resumed = torch.load(os.path.join(student_folder("kd", trial="resumed"), "represnet8_last.pth"),
                         weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 2
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)


def test_nan_loss_stops_and_keeps_last_checkpoint(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    train_student.main(student_args("--distill", "kd", "--trial", "nan", "--epochs", "1"))
    folder = student_folder("kd", trial="nan")
    last = os.path.join(folder, "represnet8_last.pth")
    before = open(last, "rb").read()
    capsys.readouterr()
    real = engine.fit.adjust_learning_rate  # a resume may not change --learning_rate: blow it up inside
    monkeypatch.setattr(engine.fit, "adjust_learning_rate",
                        lambda epoch, optim, optimizer: real(epoch, replace(optim, learning_rate=1e30), optimizer))
    msg = exit_message(capsys, train_student.main,
                       student_args("--distill", "kd", "--trial", "nan", "--resume"))  # --epochs 2: extended
    assert "loss became" in msg and "last good checkpoint" in msg
    assert open(last, "rb").read() == before
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


@pytest.mark.parametrize("distill,weights", [("crd", ["-a", "0", "-b", "0.8", "--nce_k", "64"]),
                                             ("abound", ["-a", "0", "-b", "1", "--init_epochs", "1"]),
                                             ("factor", ["-a", "0", "-b", "200", "--init_epochs", "1"]),
                                             ("semckd", ["-r", "1", "-a", "1", "-b", "400"]),
                                             ("dkd", ["-r", "1", "-a", "0", "-b", "1"])])
def test_methods_through_the_cli(workdir, monkeypatch, distill, weights):
    monkeypatch.chdir(workdir)
    last = train_student.main(["--path_t", TEACHER_LAST, "--model_s", "resnet8", "--epochs", "1",
                               "--distill", distill, *weights, *FAST, "--trial", "cli"])
    assert last["epoch"] == 1 and 0 <= last["test_acc"] <= 100
    assert torch.isfinite(torch.tensor(last["test_loss"]))


def test_bad_input_gives_one_line(workdir, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(workdir)
    assert "--path_t is required" in exit_message(capsys, train_student.main, ["--model_s", "resnet8"])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > evil_ran",))

    evil = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    evil.parent.mkdir()
    torch.save({"model": {}, "x": Evil()}, evil)
    assert "refused to load" in exit_message(capsys, train_student.main, ["--path_t", str(evil), *FAST])
    assert not os.path.exists("evil_ran")

    # resnet8 weights filed as a resnet14 teacher (RepDistiller folder naming)
    wrong = tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    wrong.parent.mkdir()
    wrong.write_bytes(open(TEACHER_LAST, "rb").read())
    ckpt = torch.load(wrong, weights_only=True)
    del ckpt["arch"], ckpt["digest"]  # an edited file: the digest covers 'arch' too
    torch.save(ckpt, wrong)
    msg = exit_message(capsys, train_student.main, ["--path_t", str(wrong), *FAST])
    assert str(wrong) in msg and "resnet14" in msg and "missing keys" in msg

    msg = exit_message(capsys, train_student.main,
                       ["--path_t", TEACHER_LAST, "--model_s", "resnet8x4", "--distill", "fsp", *FAST])
    assert "fsp" in msg.lower() or "FSP" in msg
    assert "no_such_model" in exit_message(capsys, train_student.main,
                                           ["--path_t", TEACHER_LAST, "--model_s", "no_such_model"])
    msg = exit_message(capsys, validation.main, ["--model", "resnet8", "--model_path", "missing.pth"])
    assert "missing.pth" in msg


def test_no_cifar_offline_names_the_folder(tmp_path, monkeypatch, capsys):
    import dataset.cifar100 as cifar

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar, "download_url", offline)
    monkeypatch.chdir(tmp_path)
    msg = exit_message(capsys, train_teacher.main, ["--model", "resnet8", "--data_folder", "nodata"])
    assert "CIFAR-100" in msg and "nodata" in msg
