"""ONNX export of the deployed students (``convert.py --onnx``, :mod:`helper.onnx_io`), ONNX
Runtime evaluation (``validation.py --model_path FILE.onnx``).

* every CIFAR rep student, one block type each in rotation (every block type on at least two
  students), BN statistics randomized: ONNX Runtime's logits equal the PyTorch deploy form's at
  batch 1 and 3 (the batch axis is dynamic); its Conv nodes are exactly the plain counterpart's
  convolutions (weight shapes, strides, padding, groups: no training branches), no
  BatchNormalization is left where one follows a Conv, and for resnet8 and wrn_16_2 every node
  count equals the exported plain counterpart's (each export costs seconds, so not for all);
* ``validation.py`` on the exported file gives the checkpoint's top-1, top-5 and loss on digits;
* plain models export as they are, BN folded; ImageNet's ``represnet18`` at 224x224;
* a failing export is one line and leaves no file; the BN-folding guard.

Tolerance: ``|ORT - PyTorch| <= 1e-4 * max(1, max |logit|)``, i.e. 1e-4 absolute for logits up
to 1 and 1e-4 relative to the largest logit beyond. Both sides compute in float32 with different
kernels and summation orders (ONNX Runtime's MLAS vs PyTorch's oneDNN), so the error scales
with the logits' magnitude; a bound relative to the largest logit is independent of that scale,
and 1e-4 is about 100x the float32 rounding seen here (max differences ~1e-6 relative).
"""
from __future__ import annotations

import copy
import functools
import os
import re

import pytest
import torch
import torch.nn as nn

import convert
import validation
from dataset import load_test_split, normalization
from helper.errors import UserError
from helper.onnx_io import (BATCH_DIM, INPUT_NAME, OPSET, OUTPUT_NAME, OnnxRuntimeModel, export_onnx,
                            io_shape, load_onnx, metadata, node_counts, parameter_count,
                            unfolded_batchnorms)
from models import imagenet_model_dict, model_dict, reparameterize_model
from tests.test_reparam import randomize_bn as randomize_bn_in_place

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

DIGITS = ["--dataset", "digits", "--device", "cpu", "--num_workers", "0", "--batch_size", "128"]
TOLERANCE = 1e-4

#: rep student -> (plain counterpart, block type of this test); every block type on >= 2 students.
STUDENTS = {
    "represnet14": ("resnet14", "ACB"),
    "represnet20": ("resnet20", "AMBB"),
    "represnet32": ("resnet32", "RepVGG"),
    "represnet8x4": ("resnet8x4", "ACB"),
    "repvgg8": ("vgg8", "base"),
    "repmobilenetv2": ("MobileNetV2", "RepVGG"),
    "repshufflev1": ("ShuffleV1", "AMBB"),
    "repwrn_16_2": ("wrn_16_2", "RepVGG"),
    "repwrn_40_1": ("wrn_40_1", "AMBB"),
}
#: plain counterparts also exported here, their node counts compared with the student's (each
#: export takes seconds on 2 cores: the others are compared by their convolutions, see
#: check_graph); represnet8 against the exported resnet8 is in the CLI tests below.
EXPORTED_PLAIN = {"wrn_16_2"}
#: BatchNormalization nodes no Conv precedes alone: the WRNs' pre-activation BNs (one per block
#: and the final one), as the plain WRN's export has them.
PREACT_BNS = {"wrn_16_2": 6, "wrn_40_1": 19}
#: represnet8 (-> resnet8) is exported through the convert.py CLI, with block type base
CLI_STUDENT, CLI_PLAIN, CLI_BLOCKTYPE = "represnet8", "resnet8", "base"


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """tests/test_reparam.py's random BN statistics and affine parameters; the model in eval mode."""
    randomize_bn_in_place(model, seed)
    return model.eval()


@functools.lru_cache(maxsize=None)
def plain_counts(name: str, imagenet: bool = False) -> dict[str, int]:
    """Node counts of the plain architecture ``name`` exported as convert.py exports it."""
    return dict(node_counts(export_onnx(plain_model(name, imagenet), 224 if imagenet else 32, name)))


def plain_model(name: str, imagenet: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn((imagenet_model_dict if imagenet else model_dict)[name](num_classes=10))


def torch_convs(model: nn.Module, size: int = 32) -> list[tuple]:
    """``(weight shape, stride, padding, dilation, groups)`` of every Conv2d call of a forward."""
    calls: list[tuple] = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(
        (tuple(m.weight.shape), tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups)))
        for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return sorted(calls)


def onnx_convs(proto) -> list[tuple]:
    """The same tuple for every Conv node of an ONNX graph (weights from its initializers)."""
    dims = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    convs = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: (tuple(a.ints) if a.ints else a.i) for a in node.attribute}
        weight = dims[node.input[1]]
        k = len(weight) - 2
        pads = attrs.get("pads", (0,) * 2 * k)
        assert pads[:k] == pads[k:], pads  # symmetric padding, as PyTorch's
        convs.append((weight, attrs.get("strides", (1,) * k), pads[:k], attrs.get("dilations", (1,) * k),
                      attrs.get("group", 1)))
    return sorted(convs)


def assert_close_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    error = float((got - expected).abs().max())
    assert error <= TOLERANCE * max(1.0, float(expected.abs().max())), error


def check_graph(proto, deployed: nn.Module, plain: str, size: int = 32, batches=(1, 3),
                imagenet: bool = False, exported_plain: bool = False) -> dict[str, int]:
    """Names, opset, dynamic batch, ORT == PyTorch at ``batches``; the Conv nodes are exactly
    the plain architecture's convolutions (shapes, strides, groups), no BN after a Conv is left;
    with ``exported_plain`` all node counts equal the exported plain counterpart's."""
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert io_shape(proto.graph.input[0]) == [BATCH_DIM, 3, size, size]
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= OPSET
    session = OnnxRuntimeModel(proto.SerializeToString(), threads=1)
    for batch in batches:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert_close_logits(session(x), deployed(x))
    assert onnx_convs(proto) == torch_convs(plain_model(plain, imagenet), size)
    assert unfolded_batchnorms(proto) == []
    counts = dict(node_counts(proto))
    if exported_plain:
        assert counts == plain_counts(plain, imagenet), (counts, plain_counts(plain, imagenet))
    return counts


@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_student_exports_as_its_plain_architecture(student):
    plain, blocktype = STUDENTS[student]
    torch.manual_seed(0)
    model = randomize_bn(model_dict[student](num_classes=10, blocktype=blocktype))
    deployed = reparameterize_model(copy.deepcopy(model))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)
    proto = export_onnx(deployed, 32, student, {"arch": student, "blocktype": blocktype})
    counts = check_graph(proto, deployed, plain, exported_plain=plain in EXPORTED_PLAIN)
    assert counts["Conv"] == len(torch_convs(plain_model(plain)))
    assert counts.get("BatchNormalization", 0) == PREACT_BNS.get(plain, 0)
    assert metadata(proto)["blocktype"] == blocktype


def fitted_student() -> nn.Module:
    """represnet8 (block type base) fitted for a few steps to the digits test images, so that
    its accuracy is far from chance and equality of accuracies means something."""
    images, labels = load_test_split("digits")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization("digits"))
    x = (images.float() / 255 - mean) / std
    torch.manual_seed(0)
    model = model_dict[CLI_STUDENT](num_classes=10, blocktype=CLI_BLOCKTYPE).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(24):
        idx = torch.randint(0, len(x), (96,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """convert.py --save --onnx on a train-form represnet8 checkpoint of a digits run (its config
    records the data set): (folder, model, paths)."""
    folder = tmp_path_factory.mktemp("onnx")
    model = fitted_student()
    paths = {k: str(folder / n) for k, n in (("train", "r8_last.pth"), ("deploy", "r8_deploy.pth"),
                                             ("onnx", "r8.onnx"))}
    torch.save({"model": model.state_dict(), "arch": CLI_STUDENT, "blocktype": CLI_BLOCKTYPE,
                "config": {"dataset": "digits"}}, paths["train"])
    convert.main(["--load", paths["train"], "--save", paths["deploy"], "--onnx", paths["onnx"]])
    return folder, model, paths


def metrics_line(out: str) -> str:
    return re.search(r"^top-1 .*$", out, re.M).group(0)


def test_convert_cli_writes_onnx_beside_the_deploy_file(exported, capsys):
    folder, model, paths = exported
    proto = load_onnx(paths["onnx"])
    assert metadata(proto) == {"arch": CLI_STUDENT, "form": "deploy", "blocktype": CLI_BLOCKTYPE,
                               "dataset": "digits"}
    deployed = model_dict[CLI_STUDENT](num_classes=10, blocktype=CLI_BLOCKTYPE, deploy=True).eval()
    deployed.load_state_dict(torch.load(paths["deploy"]), strict=True)
    check_graph(proto, deployed, CLI_PLAIN)
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp_")]


def test_validation_of_the_onnx_file_gives_the_checkpoints_accuracy(exported, capsys):
    _, _, paths = exported
    capsys.readouterr()
    acc_train = validation.main(["--model_path", paths["train"], "--deploy_flag", "False", *DIGITS])
    train_line = metrics_line(capsys.readouterr().out)
    acc_onnx = validation.main(["--model_path", paths["onnx"], *DIGITS])
    out = capsys.readouterr().out
    assert acc_train > 30, acc_train  # far from chance (10%): the comparison is informative
    assert abs(acc_onnx - acc_train) < 0.01 and metrics_line(out) == train_line
    assert re.search(r"model represnet8 \(ONNX deploy form, ONNX Runtime [\d.]+ CPUExecutionProvider\): "
                     rf"{parameter_count(load_onnx(paths['onnx']))} parameters", out), out
    assert out.strip().splitlines()[-1] == f"accuracy: {acc_onnx:.2f}"
    # without --dataset: the data set the file records (its metadata), as for the checkpoint
    no_dataset = [flag for flag in DIGITS if flag != "digits" and flag != "--dataset"]
    assert validation.main(["--model_path", paths["onnx"], *no_dataset]) == acc_onnx
    assert f"data set digits (recorded in {paths['onnx']})" in capsys.readouterr().out


@pytest.mark.parametrize("flags,expected", [
    (["--dataset", "cifar100"], "--dataset cifar100 contradicts"),
    (["--dataset", "digits", "--model", "represnet20"], "--model represnet20 contradicts"),
    (["--dataset", "digits", "-t", "ACB"], "-t ACB contradicts"),
])
def test_validation_of_onnx_refuses_mismatches_in_one_line(exported, capsys, flags, expected):
    _, _, paths = exported
    with pytest.raises(SystemExit) as err:
        validation.main(["--model_path", paths["onnx"], *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and expected in lines[0], lines


def test_validation_of_a_file_that_is_not_onnx(tmp_path, capsys):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(SystemExit) as err:
        validation.main(["--model_path", str(bogus), *DIGITS])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and "not a readable ONNX model" in lines[0]


def test_plain_model_exports_as_is_with_bn_folded(exported, tmp_path, capsys):
    torch.manual_seed(0)
    plain = randomize_bn(model_dict[CLI_PLAIN](num_classes=10))
    source, target = tmp_path / "resnet8.pth", tmp_path / "resnet8.onnx"
    torch.save({"model": plain.state_dict(), "arch": CLI_PLAIN}, source)
    convert.main(["--load", str(source), "--onnx", str(target)])
    assert "0 BatchNormalization nodes" in capsys.readouterr().out
    proto = load_onnx(str(target))
    assert metadata(proto) == {"arch": CLI_PLAIN, "form": "plain"}
    # the plain resnet8's graph is the deployed represnet8's (the CLI fixture's file), node for node
    assert check_graph(proto, plain, CLI_PLAIN) == dict(node_counts(load_onnx(exported[2]["onnx"])))
    for flags, expected in ((["--save", str(tmp_path / "d.pth")], "has no deploy form"),
                            (["-t", "ACB"], "-t ACB: resnet8 is not re-parameterizable")):
        with pytest.raises(SystemExit):
            convert.main(["--load", str(source), "--onnx", str(tmp_path / "x.onnx"), *flags])
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines
    with pytest.raises(SystemExit):
        validation.main(["--model_path", str(target), "-t", "ACB", *DIGITS])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "holds the plain model resnet8, which has no block types" in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["resnet8.onnx", "resnet8.pth"]


def test_failed_export_is_one_line_and_leaves_no_file(exported, tmp_path, capsys, monkeypatch):
    _, _, paths = exported

    def broken_exporter(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate\nlong exporter traceback ...")

    monkeypatch.setattr(torch.onnx, "export", broken_exporter)
    save, onnx_file = str(tmp_path / "d.pth"), str(tmp_path / "m.onnx")
    # a train-form checkpoint (--save too) and a deploy file (--onnx alone exports it)
    for flags in (["--load", paths["train"], "--save", save], ["--load", paths["deploy"]]):
        with pytest.raises(SystemExit) as err:
            convert.main([*flags, "--onnx", onnx_file])
        lines = capsys.readouterr().err.strip().splitlines()
        assert err.value.code == 2 and len(lines) == 1, lines
        assert "cannot export represnet8 (deploy form" in lines[0]
        assert "Unsupported operator aten::frobnicate" in lines[0]
        assert os.listdir(tmp_path) == []


def conv_bn_graph(shortcut: bool):
    """A hand-made graph ``BN(Conv(x))`` (``+ Conv(x)`` with ``shortcut``): the BN is foldable
    only without the shortcut, which reads the Conv's output too."""
    from onnx import TensorProto, helper, numpy_helper

    consts = {"w": torch.randn(4, 3, 3, 3), **{k: torch.rand(4) + 0.5 for k in ("s", "b", "m", "v")}}
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn" if shortcut else "logits"],
                              name="the_bn")]
    if shortcut:
        nodes.append(helper.make_node("Add", ["c", "bn"], ["logits"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [numpy_helper.from_array(v.numpy(), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_unfolded_batchnorm_is_refused(monkeypatch):
    """The guard behind 'no BN after a Conv': a graph that keeps a foldable BatchNormalization is
    refused by :func:`export_onnx`; a BN whose Conv output a shortcut reads too is no such BN."""
    assert unfolded_batchnorms(conv_bn_graph(shortcut=False)) == ["the_bn"]
    assert unfolded_batchnorms(conv_bn_graph(shortcut=True)) == []

    class Program:
        model_proto = conv_bn_graph(shortcut=False)

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    with pytest.raises(UserError, match=r"cannot export tiny to ONNX: the exporter left 1 BatchNormalization"):
        export_onnx(nn.Conv2d(3, 4, 3, padding=1), 8, "tiny")


def test_represnet18_imagenet_export(tmp_path, capsys):
    """ImageNet's student at 224x224 through convert.py --dataset imagenet; block type base keeps
    the train-form file small (the deploy graph is the same for every block type)."""
    torch.manual_seed(0)
    model = randomize_bn(imagenet_model_dict["represnet18"](num_classes=10, blocktype="base"))
    source, target = tmp_path / "represnet18.pth", tmp_path / "represnet18.onnx"
    torch.save({"model": model.state_dict(), "arch": "represnet18", "blocktype": "base"}, source)
    convert.main(["--load", str(source), "--onnx", str(target), "--dataset", "imagenet"])
    assert "deploy form" in capsys.readouterr().out
    deployed = reparameterize_model(model)
    check_graph(load_onnx(str(target)), deployed, "resnet18", size=224, batches=(1, 2), imagenet=True)
