"""convert.py on the files users already have: KDrefine train-form checkpoints ('model' plus a
pickled argparse 'opt'), 'state_dict' entries with DataParallel prefixes, raw state dicts and
.hdf5 weight files; outputs equal the train form's. RepDistiller teacher files load too."""
import argparse

import pytest
import torch

import convert
from models import model_dict
from scripts import check_teachers


def trained_like(name: str, num_classes: int, blocktype: str | None = "AMBB"):
    """A model with randomized BN statistics (so that conversion is tested on real numbers);
    ``blocktype`` None for plain models."""
    torch.manual_seed(0)
    kw = {"blocktype": blocktype} if blocktype else {}
    model = model_dict[name](num_classes=num_classes, **kw)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def write_variant(path, state, kind):
    if kind == "kdrefine":
        torch.save({"model": state, "opt": argparse.Namespace(model_s="represnet8", blocktype="AMBB"),
                    "accuracy": 71.5, "epoch": 240}, path)
    elif kind == "dataparallel":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif kind == "raw":
        torch.save(state, path)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            for key, value in state.items():
                f.create_dataset(key.replace(".", "/"), data=value.numpy())


@pytest.mark.parametrize("kind,suffix", [("kdrefine", ".pth"), ("dataparallel", ".pth"),
                                         ("raw", ".pth"), ("hdf5", ".hdf5")])
def test_convert_variants(tmp_path, kind, suffix, capsys):
    model = trained_like("represnet8", num_classes=10)
    source = tmp_path / f"train{suffix}"
    write_variant(source, model.state_dict(), kind)
    target = tmp_path / "deploy.pth"
    convert.main(["--load", str(source), "--save", str(target), "-a", "represnet8"])
    assert "parameters" in capsys.readouterr().out
    deployed = model_dict["represnet8"](num_classes=10, deploy=True).eval()
    deployed.load_state_dict(torch.load(target, weights_only=True), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocktype", ["ACB", "RepVGG", "base"])
def test_convert_other_block_types(tmp_path, blocktype):
    model = trained_like("represnet8", num_classes=100, blocktype=blocktype)
    source, target = tmp_path / "t.pth", tmp_path / "d.pth"
    torch.save({"model": model.state_dict()}, source)
    convert.main(["--load", str(source), "--save", str(target), "-a", "represnet8", "-t", blocktype])
    deployed = model_dict["represnet8"](num_classes=100, blocktype=blocktype, deploy=True).eval()
    deployed.load_state_dict(torch.load(target, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)


def test_convert_errors(tmp_path, capsys):
    source = tmp_path / "t.pth"
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict()}, source)
    with pytest.raises(SystemExit) as err:
        convert.main(["--load", str(source), "--save", str(tmp_path / "d.pth"), "-a", "resnet8"])
    assert err.value.code == 2 and "no deploy form" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main(["--load", str(source), "--save", str(tmp_path / "d.pth"), "-a", "represnet8"])
    line = capsys.readouterr().err.strip()
    assert str(source) in line and "missing keys" in line and len(line.splitlines()) == 1
    assert not (tmp_path / "d.pth").exists()


def test_repdistiller_teacher_file_loads(tmp_path, capsys):
    folder = tmp_path / "save" / "models" / "resnet56_vanilla"
    folder.mkdir(parents=True)
    model = model_dict["resnet56"](num_classes=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 72.34,
                "optimizer": opt.state_dict()}, folder / "ckpt_epoch_240.pth")
    check_teachers.main([str(folder / "ckpt_epoch_240.pth")])
    out = capsys.readouterr().out
    assert "resnet56" in out and "72.34" in out


@pytest.mark.parametrize("blocktype", ["ACB", "RepVGG"])
def test_convert_takes_the_recorded_block_type(tmp_path, blocktype):
    """A checkpoint that records its architecture and block type (train_student.py's 'arch' and
    'blocktype') converts without -a/-t; the deploy file records both as attributes and still
    loads with model.load_state_dict(torch.load(f), strict=True)."""
    model = trained_like("represnet8", num_classes=100, blocktype=blocktype)
    source, target = tmp_path / "t.pth", tmp_path / "d.pth"
    torch.save({"model": model.state_dict(), "arch": "represnet8", "blocktype": blocktype}, source)
    convert.main(["--load", str(source), "--save", str(target)])
    state = torch.load(target)
    assert (state.arch, state.blocktype) == ("represnet8", blocktype)
    deployed = model_dict["represnet8"](num_classes=100, deploy=True).eval()
    deployed.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)


def test_convert_names_the_flag_a_file_without_record_needs(tmp_path, capsys):
    model = trained_like("represnet8", num_classes=10, blocktype="ACB")
    source = tmp_path / "raw.pth"
    torch.save(model.state_dict(), source)
    for flags, expected in (([], "name it with -a"), (["-a", "represnet8"], "pass -t ACB")):
        with pytest.raises(SystemExit) as err:
            convert.main(["--load", str(source), "--save", str(tmp_path / "d.pth"), *flags])
        lines = capsys.readouterr().err.strip().splitlines()
        assert err.value.code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "d.pth").exists()


def test_save_naming_a_directory_or_a_path_under_a_file_is_one_line(tmp_path, capsys):
    import convert
    from tests.cli_helpers import exit_message

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target, fragment in ((tmp_path, "is a directory"), (blocker / "deploy.pth", "--save")):
        msg = exit_message(capsys, convert.main, ["--load", str(blocker), "--save", str(target),
                                                  "-a", "represnet8"])
        assert fragment in msg and str(target) in msg
