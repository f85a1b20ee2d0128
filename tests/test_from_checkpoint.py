"""convert.py and validation.py take the architecture and block type a checkpoint records
(train_student.py's 'arch'/'blocktype'/'config', KDrefine's 'opt', the attributes of convert.py's
deploy state dicts); -a/--model and -t are needed only for files that record none, and a flag
contradicting the record stops with one line."""
from __future__ import annotations

import argparse
from collections import OrderedDict

import pytest
import torch

import convert
import train_student
import validation
from helper.checkpoint import load_checkpoint, recorded_model, save_checkpoint
from engine.config import config_dict
from models import model_dict
from tests.cli_helpers import exit_message
from tests.test_convert import trained_like as convert_trained_like

DIGITS = ["--dataset", "digits", "--device", "cpu", "--num_workers", "0", "--batch_size", "128"]


def trained_like(name: str, blocktype: str | None = None, num_classes: int = 10):
    """tests/test_convert.py's model with randomized BN statistics (None: the model's default
    block type, or a plain model)."""
    return convert_trained_like(name, num_classes, blocktype)


def student_checkpoint(path, model, arch: str, blocktype: str) -> None:
    """What train_student.py writes: weights, 'arch', 'blocktype', 'model_t' and the run's config."""
    opt = train_student.parse_option(["--path_t", "t.pth", "--model_s", arch, "-t", blocktype,
                                      "--dataset", "digits"])
    save_checkpoint({"model": model.state_dict(), "method": {}, "arch": arch, "blocktype": blocktype,
                     "model_t": "resnet8", "epoch": 1, "accuracy": 10.0, "config": config_dict(opt)},
                    str(path))


@pytest.mark.parametrize("blocktype", ["ACB", "RepVGG"])
def test_converted_and_validated_without_flags(tmp_path, capsys, blocktype):
    model = trained_like("represnet8", blocktype)
    train_form, deploy_form = tmp_path / "represnet8_last.pth", tmp_path / "represnet8_deploy.pth"
    student_checkpoint(train_form, model, "represnet8", blocktype)

    convert.main(["--load", str(train_form), "--save", str(deploy_form)])
    assert f"represnet8, block type {blocktype}" in capsys.readouterr().out
    # the deploy file is a raw state dict: it loads the ordinary way, strictly
    state = torch.load(deploy_form)
    assert isinstance(state, OrderedDict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert (state.arch, state.blocktype) == ("represnet8", blocktype)
    deployed = model_dict["represnet8"](num_classes=10, deploy=True).eval()
    deployed.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)
    assert recorded_model(load_checkpoint(str(deploy_form))) == ("represnet8", blocktype)

    acc_train = validation.main(["--model_path", str(train_form), "--deploy_flag", "False", *DIGITS])
    out = capsys.readouterr().out
    assert f"represnet8 (train form, block type {blocktype})" in out
    acc_deploy = validation.main(["--model_path", str(deploy_form), *DIGITS])
    assert "represnet8 (deploy form)" in capsys.readouterr().out
    assert acc_deploy == pytest.approx(acc_train)
    # flags that agree with the record are accepted
    convert.main(["--load", str(train_form), "--save", str(tmp_path / "again.pth"),
                  "-a", "represnet8", "-t", blocktype])
    assert validation.main(["--model_path", str(deploy_form), "--model", "represnet8", "-t", blocktype,
                            "--deploy_flag", "True", *DIGITS]) == pytest.approx(acc_deploy)


def test_contradicting_flags_stop_with_one_line(tmp_path, capsys):
    train_form, deploy_form = tmp_path / "acb.pth", tmp_path / "deploy.pth"
    student_checkpoint(train_form, trained_like("represnet8", "ACB"), "represnet8", "ACB")
    convert.main(["--load", str(train_form), "--save", str(deploy_form)])
    capsys.readouterr()
    line = exit_message(capsys, convert.main, ["--load", str(train_form), "--save", str(tmp_path / "x.pth"),
                                               "-t", "AMBB"])
    assert line == f"error: -t AMBB contradicts {train_form}, which records the block type ACB; leave -t out"
    line = exit_message(capsys, convert.main, ["--load", str(train_form), "--save", str(tmp_path / "x.pth"),
                                               "-a", "represnet20"])
    assert line == (f"error: -a represnet20 contradicts {train_form}, which records the architecture "
                    f"represnet8; leave -a out")
    assert not (tmp_path / "x.pth").exists()
    for path, flags, expected in [
        (deploy_form, ["--model", "represnet14"], "--model represnet14 contradicts"),
        (deploy_form, ["-t", "base"], "-t base contradicts"),
        (train_form, ["-t", "RepVGG", "--deploy_flag", "False"], "-t RepVGG contradicts"),
    ]:
        line = exit_message(capsys, validation.main, ["--model_path", str(path), *flags, *DIGITS])
        assert expected in line and str(path) in line and "leave" in line, line


def test_released_files_need_and_accept_the_flags(tmp_path, capsys):
    model = trained_like("represnet8", "ACB")
    released = tmp_path / "released.pth"  # a raw train-form state dict, as KDrefine's users have
    torch.save(model.state_dict(), released)
    out = tmp_path / "deploy.pth"
    line = exit_message(capsys, convert.main, ["--load", str(released), "--save", str(out)])
    assert str(released) in line and "records no architecture" in line and "-a" in line
    # the block type is assumed to be AMBB; the error names the one that fits
    line = exit_message(capsys, convert.main, ["--load", str(released), "--save", str(out), "-a", "represnet8"])
    assert "missing keys" in line and "pass -t ACB" in line
    convert.main(["--load", str(released), "--save", str(out), "-a", "represnet8", "-t", "ACB"])
    assert recorded_model(load_checkpoint(str(out))) == ("represnet8", "ACB")

    # a released deploy state dict (no record) needs --model; with it, it validates
    raw_deploy = tmp_path / "raw_deploy.pth"
    torch.save(OrderedDict(torch.load(out)), raw_deploy)
    capsys.readouterr()
    line = exit_message(capsys, validation.main, ["--model_path", str(raw_deploy), *DIGITS])
    assert str(raw_deploy) in line and "name it with --model" in line
    acc = validation.main(["--model_path", str(raw_deploy), "--model", "represnet8", *DIGITS])
    assert acc == pytest.approx(validation.main(["--model_path", str(out), *DIGITS]))
    # a released train-form file validated with --deploy_flag False: the hint names -t
    line = exit_message(capsys, validation.main, ["--model_path", str(released), "--model", "represnet8",
                                                  "--deploy_flag", "False", *DIGITS])
    assert "pass -t ACB" in line


def test_kdrefine_opt_and_teacher_records(tmp_path, capsys):
    model = trained_like("represnet8", "RepVGG")
    kdrefine = tmp_path / "kdrefine.pth"
    torch.save({"model": model.state_dict(), "accuracy": 71.5, "epoch": 240,
                "opt": argparse.Namespace(model_s="represnet8", blocktype="RepVGG")}, kdrefine)
    convert.main(["--load", str(kdrefine), "--save", str(tmp_path / "d.pth")])
    assert "block type RepVGG" in capsys.readouterr().out

    teacher = tmp_path / "resnet8_best.pth"
    save_checkpoint({"model": trained_like("resnet8").state_dict(), "arch": "resnet8", "epoch": 1}, str(teacher))
    validation.main(["--model_path", str(teacher), *DIGITS])
    assert "model resnet8 (plain form)" in capsys.readouterr().out
    line = exit_message(capsys, validation.main, ["--model_path", str(teacher), "-t", "ACB", *DIGITS])
    assert "-t ACB" in line and "resnet8 is not re-parameterizable" in line
    line = exit_message(capsys, convert.main, ["--load", str(teacher), "--save", str(tmp_path / "x.pth")])
    assert "holds a resnet8" in line and "no deploy form" in line


def test_other_records(tmp_path, capsys):
    small = trained_like("represnet8").state_dict()
    imagenet = tmp_path / "imagenet.pth"
    save_checkpoint({"model": small, "arch": "represnet18", "blocktype": "AMBB"}, str(imagenet))
    line = exit_message(capsys, validation.main, ["--model_path", str(imagenet), *DIGITS])
    assert "represnet18" in line and "--dataset imagenet" in line
    unknown = tmp_path / "unknown.pth"
    save_checkpoint({"model": small, "arch": "represnet999"}, str(unknown))
    line = exit_message(capsys, convert.main, ["--load", str(unknown), "--save", str(tmp_path / "x.pth")])
    assert "represnet999" in line and "does not have" in line
    # a record that is not a plain name counts as none
    odd = tmp_path / "odd.pth"
    save_checkpoint({"model": small, "arch": "../../evil\n", "blocktype": 3}, str(odd))
    assert recorded_model(load_checkpoint(str(odd))) == (None, None)
    convert.main(["--load", str(odd), "--save", str(tmp_path / "odd_deploy.pth"), "-a", "represnet8"])


def test_convert_refuses_deploy_files_and_overwriting_the_source(tmp_path, capsys):
    train_form, deploy_form = tmp_path / "t.pth", tmp_path / "d.pth"
    student_checkpoint(train_form, trained_like("represnet8", "base"), "represnet8", "base")
    convert.main(["--load", str(train_form), "--save", str(deploy_form)])
    capsys.readouterr()
    line = exit_message(capsys, convert.main, ["--load", str(deploy_form), "--save", str(tmp_path / "dd.pth")])
    assert "already holds the deploy form" in line
    before = train_form.read_bytes()
    line = exit_message(capsys, convert.main, ["--load", str(train_form), "--save", str(train_form)])
    assert "--save" in line and "another file" in line
    assert train_form.read_bytes() == before
