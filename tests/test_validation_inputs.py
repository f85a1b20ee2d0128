"""validation.py against what users hand it: ONNX graphs whose interface does not fit the data
set (built with ``onnx.helper``, no export), weights or outputs holding NaN, the data set a file
records, KDrefine's flags. Every case ends in a correct evaluation or one ``error:`` line.

The ONNX graphs are one tiny body, ``Gemm(Flatten(GlobalAveragePool(input)))``, 40 weights for
the digits' 10 classes, whose logits numpy computes alike; the fuzz tests evaluate on two small
in-memory batches instead of a test split (``get_test_loader`` replaced), a few milliseconds an
example. ``KD_FUZZ_EXAMPLES`` asks for more examples than the default.
"""
from __future__ import annotations

import math
import os
import resource
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convert
import train_student
import validation
from engine.config import config_dict
from helper.checkpoint import save_checkpoint
from helper.errors import UserError
from helper.onnx_io import OnnxRuntimeModel, check_interface, declared_shape
from tests.cli_helpers import exit_message
from tests.test_convert import trained_like

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CPU = ["--device", "cpu", "--num_workers", "0"]
DIGITS = ["--dataset", "digits", *CPU, "--batch_size", "128"]
FUZZ = settings(max_examples=int(os.environ.get("KD_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLASSES = 10
RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((CLASSES, 3)).astype(np.float32)
BIAS = RNG.standard_normal(CLASSES).astype(np.float32)
#: two small batches (sizes 5 and 3: a fixed batch of 2 or 4 needs a padded last piece)
BATCHES = [(torch.from_numpy(RNG.standard_normal((n, 3, 32, 32)).astype(np.float32)),
            torch.from_numpy(RNG.integers(0, CLASSES, n))) for n in (5, 3)]


def tiny_graph(in_shape=("batch", 3, 32, 32), out_shape=("batch", CLASSES), *, inputs=None, outputs=None,
               weight=WEIGHT, bias=BIAS, in_type=TensorProto.FLOAT, out_type=TensorProto.FLOAT, body=None,
               dataset: str | None = "digits"):
    """The tiny model as an ONNX graph with the given declared interface; ``inputs``/``outputs``
    replace the declared value infos altogether (``body`` the nodes)."""
    nodes = body or [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                     helper.make_node("Flatten", ["pooled"], ["flat"]),
                     helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    if inputs is None:
        inputs = [helper.make_tensor_value_info("input", in_type, in_shape)]
    if outputs is None:
        outputs = [helper.make_tensor_value_info("logits", out_type, out_shape)]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs,
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if dataset:
        model.metadata_props.add(key="dataset", value=dataset)
    return model


def reference_logits(images: torch.Tensor, weight=WEIGHT) -> torch.Tensor:
    return images.mean(dim=(2, 3)) @ torch.from_numpy(weight).T + torch.from_numpy(BIAS)


def reference_accuracy() -> float:
    hits = sum(int((reference_logits(x).argmax(1) == y).sum()) for x, y in BATCHES)
    return 100.0 * hits / sum(len(y) for _, y in BATCHES)


@pytest.fixture
def small_batches(monkeypatch):
    """validation.py evaluates on :data:`BATCHES` instead of a test split."""
    monkeypatch.setattr(validation, "get_test_loader", lambda *args, **kwargs: list(BATCHES))


def run_validation(capfd, argv: list[str]) -> tuple[float | None, list[str], str]:
    """``(accuracy or None, stderr lines, stdout)`` of ``validation.main(argv)``, read at the
    file-descriptor level (ONNX Runtime's own logger writes there); a SystemExit must be status
    2 with exactly one ``error:`` line, anything else propagates. Nothing else on stderr."""
    capfd.readouterr()
    try:
        acc = validation.main(argv)
    except SystemExit as stop:
        assert stop.code == 2, stop.code
        acc = None
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == (acc is None), lines
    if acc is None:
        assert lines[0].startswith("error: "), lines
    return acc, lines, out


def evaluate(capfd, model, tmp_path, *flags: str) -> tuple[float | None, list[str], str]:
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return run_validation(capfd, ["--model_path", str(path), *CPU, "--batch_size", "8", *flags])


# ---- the interface, case by case ------------------------------------------------------------

@pytest.mark.parametrize("in_shape,out_shape", [
    (("batch", 3, 32, 32), ("batch", CLASSES)),
    ((1, 3, 32, 32), (1, CLASSES)),          # a fixed batch of 1: fed one image at a time
    ((4, 3, 32, 32), (4, CLASSES)),          # a fixed batch: the last piece padded
    (("n", "c", "h", "w"), ("n", CLASSES)),  # all symbolic
    ((None, 3, None, None), None),           # unknown dims; an output without shape
])
def test_graphs_that_fit_evaluate_correctly(tmp_path, small_batches, capfd, in_shape, out_shape):
    acc, _, out = evaluate(capfd, tiny_graph(in_shape, out_shape), tmp_path)
    assert acc == pytest.approx(reference_accuracy())
    assert out.strip().splitlines()[-1] == f"accuracy: {acc:.2f}"
    assert "data set digits (recorded in" in out
    if isinstance(in_shape[0], int):
        assert f"batch is fixed at {in_shape[0]}" in out


def test_a_fixed_batch_feeds_pieces_and_drops_the_padding():
    model = tiny_graph((4, 3, 32, 32), (4, CLASSES))
    interface = check_interface(model, "m.onnx", "digits", CLASSES, batch_size=8, size=32)
    assert interface.fixed_batch == 4
    runner = OnnxRuntimeModel(model.SerializeToString(), interface=interface, label="m.onnx")
    x = torch.randn(7, 3, 32, 32)
    torch.testing.assert_close(runner(x), reference_logits(x), rtol=1e-5, atol=1e-5)


def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.mark.parametrize("model,expected", [
    (tiny_graph((16, 3, 32, 32), (16, CLASSES)), "fixed batch of 16 images, more than --batch_size 8; "
                                                  "pass --batch_size 16"),
    (tiny_graph(inputs=[]), "takes no input"),
    (tiny_graph(inputs=[_value("input", ["b", 3, 32, 32]), _value("mask", ["b"])]),
     "takes 2 inputs (input, mask)"),
    (tiny_graph(inputs=[_value("input", None)]), "its input input declares no shape"),
    (tiny_graph(("batch", 3, 224, 224)), "takes inputs of shape (batch, 3, 224, 224), but --dataset digits"),
    (tiny_graph(("batch", 1, 32, 32)), "takes inputs of shape (batch, 1, 32, 32)"),
    (tiny_graph(("batch", 3072)), "takes inputs of shape (batch, 3072)"),
    (tiny_graph(in_type=TensorProto.INT64), "takes INT64 values"),
    (tiny_graph(out_shape=("batch",)), "its output logits has shape (batch); validation reads logits"),
    (tiny_graph(out_shape=("batch", 100)), "is a 100-class model but --dataset digits has 10 classes"),
    (tiny_graph(out_type=TensorProto.INT64), "gives INT64 values, not logits"),
    (tiny_graph(outputs=[]), "gives no output"),
    (tiny_graph(outputs=[_value("logits", ["b", CLASSES]), _value("feat", ["b", 3])]),
     "gives 2 outputs (logits, feat)"),
    # declared shapes that fit but a body that does not: found on the batch of zeros run first
    (tiny_graph(out_shape=None, weight=np.ones((7, 3), np.float32), bias=np.zeros(7, np.float32)),
     "gives float32 values of shape (1, 7) for a batch of 1 images; --dataset digits needs float "
     "logits of shape (1, 10)"),
    (tiny_graph(body=[helper.make_node("Flatten", ["input"], ["logits"])]),
     "gives float32 values of shape (1, 3072) for a batch of 1 images"),
    (tiny_graph(body=[helper.make_node("Constant", [], ["shape"], value_ints=[-1, 7]),
                      helper.make_node("Reshape", ["input", "shape"], ["logits"])]),  # 3072 is no multiple of 7
     "ONNX Runtime cannot run"),
    (tiny_graph(weight=np.full((CLASSES, 3), np.nan, np.float32)), "the model's weights hold NaN or infinity"),
    (tiny_graph(body=[helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                      helper.make_node("Flatten", ["pooled"], ["flat"]),
                      helper.make_node("Gemm", ["flat", "w", "b"], ["g"], transB=1),
                      helper.make_node("Log", ["g"], ["logits"])]),  # log of negative logits: NaN
     "the model's outputs on the test split hold NaN or infinity"),
], ids=["batch-too-big", "no-input", "two-inputs", "input-no-shape", "image-size", "channels", "rank-2-input",
        "int-input", "1-d-output", "classes", "int-output", "no-output", "two-outputs", "body-classes",
        "body-shape", "body-fails", "nan-weights", "nan-outputs"])
def test_graphs_that_do_not_fit_are_one_line(tmp_path, small_batches, capfd, model, expected):
    acc, lines, _ = evaluate(capfd, model, tmp_path)
    assert acc is None and expected in lines[0], lines


def test_declared_shape_reads_every_kind_of_dimension():
    assert declared_shape(_value("x", ["b", 3, None])) == ["b", 3, None]
    assert declared_shape(_value("x", None)) is None
    assert declared_shape(_value("x", [])) == []


def test_the_graph_is_checked_before_the_test_split_is_read(tmp_path, monkeypatch, capfd):
    def no_loader(*args, **kwargs):
        raise AssertionError("the data was read before the graph was checked")

    monkeypatch.setattr(validation, "get_test_loader", no_loader)
    acc, lines, _ = evaluate(capfd, tiny_graph(out_shape=None, weight=np.ones((7, 3), np.float32),
                                               bias=np.zeros(7, np.float32)), tmp_path)
    assert acc is None and "shape (1, 7)" in lines[0]


# ---- the data set a file records -----------------------------------------------------------

def test_onnx_metadata_names_the_data_set(tmp_path, small_batches, capfd):
    acc, _, out = evaluate(capfd, tiny_graph(), tmp_path)
    assert acc is not None and "data set digits (recorded in" in out
    acc, lines, _ = evaluate(capfd, tiny_graph(), tmp_path, "--dataset", "cifar100")
    assert acc is None and "--dataset cifar100 contradicts" in lines[0] and "records the data set digits" in lines[0]
    acc, lines, _ = evaluate(capfd, tiny_graph(dataset=None), tmp_path)  # no record: cifar100, as before
    assert acc is None and "is a 10-class model but --dataset cifar100 has 100 classes" in lines[0]
    acc, _, out = evaluate(capfd, tiny_graph(dataset="mnist\nevil"), tmp_path, "--dataset", "digits")
    assert acc is not None and "recorded" not in out  # a record that is no plain name counts as none


def digits_checkpoint(path, model, arch: str = "represnet8", blocktype: str = "base") -> None:
    """What train_student.py writes for a digits run: weights, 'arch', 'blocktype' and its config."""
    opt = train_student.parse_option(["--path_t", "t.pth", "--model_s", arch, "-t", blocktype,
                                      "--dataset", "digits"])
    save_checkpoint({"model": model.state_dict(), "arch": arch, "blocktype": blocktype, "epoch": 1,
                     "accuracy": 10.0, "config": config_dict(opt)}, str(path))


def test_a_digits_run_validates_on_digits_without_dataset(tmp_path, capsys):
    model = trained_like("represnet8", CLASSES, "base")
    train_form, deploy_form = tmp_path / "represnet8_best.pth", tmp_path / "represnet8_deploy.pth"
    digits_checkpoint(train_form, model)
    # before: "is a 10-class model but --dataset cifar100 has 100 classes"
    acc = validation.main(["--model_path", str(train_form), "--deploy_flag", "False", *CPU, "--batch_size", "128"])
    out = capsys.readouterr().out
    assert f"data set digits (recorded in {train_form})" in out and out.strip().endswith(f"accuracy: {acc:.2f}")
    line = exit_message(capsys, validation.main, ["--model_path", str(train_form), "--deploy_flag", "False",
                                                  "--dataset", "cifar100", *CPU])
    assert line == (f"error: --dataset cifar100 contradicts {train_form}, which records the data set "
                    f"digits; leave --dataset out")
    # convert.py passes the record on to the deploy file, which validates on digits too
    convert.main(["--load", str(train_form), "--save", str(deploy_form)])
    assert torch.load(deploy_form).dataset == "digits"
    capsys.readouterr()
    assert validation.main(["--model_path", str(deploy_form), *CPU, "--batch_size", "128"]) == pytest.approx(acc)
    line = exit_message(capsys, convert.main, ["--load", str(train_form), "--save", str(tmp_path / "x.pth"),
                                               "--dataset", "imagenet"])
    assert "--dataset imagenet contradicts" in line and not (tmp_path / "x.pth").exists()


# ---- NaN weights and outputs ---------------------------------------------------------------

def test_nan_weights_are_one_line_not_an_accuracy(tmp_path, capsys):
    model = trained_like("resnet8", CLASSES, None)
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "resnet8_last.pth"
    save_checkpoint({"model": model.state_dict(), "arch": "resnet8"}, str(path))
    line = exit_message(capsys, validation.main, ["--model_path", str(path), *DIGITS])
    assert "the model's weights hold NaN or infinity" in line and str(path) in line
    assert "conv1.weight" in line and "diverged in training" in line


def test_nan_outputs_are_one_line_not_an_accuracy(tmp_path, capsys):
    """Finite weights whose outputs are NaN (a negative BN running variance)."""
    model = trained_like("resnet8", CLASSES, None)
    with torch.no_grad():
        model.bn1.running_var.fill_(-1.0)
    path = tmp_path / "resnet8_last.pth"
    save_checkpoint({"model": model.state_dict(), "arch": "resnet8"}, str(path))
    line = exit_message(capsys, validation.main, ["--model_path", str(path), *DIGITS])
    assert "outputs on the test split hold NaN or infinity (loss nan" in line


# ---- flags ---------------------------------------------------------------------------------

def test_kdrefine_print_freq_is_accepted_and_unknown_flags_are_one_line(tmp_path, small_batches, capfd):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_graph().SerializeToString())
    acc, _, _ = run_validation(capfd, ["--model_path", str(path), *CPU, "--print_freq", "10"])
    assert acc == pytest.approx(reference_accuracy())
    for flags, expected in ((["--print_freq", "x"], "--print_freq"), (["--frobnicate", "1"], "--frobnicate"),
                            (["--dataset", "mnist"], "--dataset")):
        acc, lines, _ = run_validation(capfd, ["--model_path", str(path), *CPU, *flags])
        assert acc is None and expected in lines[0] and "--help" in lines[0], lines


def test_onnx_checks_raise_user_errors_directly():
    with pytest.raises(UserError, match="takes no input"):
        check_interface(tiny_graph(inputs=[]), "m.onnx", "digits", CLASSES, batch_size=8, size=32)


# ---- fuzz ----------------------------------------------------------------------------------

DIMS = st.sampled_from([1, 2, 3, 4, 10, 32, 64, "batch", "h", None])
SHAPES = st.one_of(st.none(), st.lists(DIMS, min_size=0, max_size=5))
ELEMS = st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64])


@st.composite
def interfaces(draw):
    """A tiny graph whose declared inputs and outputs are drawn at random."""
    inputs = [_value(name, draw(SHAPES), draw(ELEMS))
              for name in draw(st.sampled_from([[], ["input"], ["input", "extra"], ["extra"]]))]
    outputs = [_value(name, draw(SHAPES), draw(ELEMS))
               for name in draw(st.sampled_from([[], ["logits"], ["logits", "flat"]]))]
    return tiny_graph(inputs=inputs, outputs=outputs)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@FUZZ
@given(model=interfaces())
def test_fuzz_random_interfaces(small_batches, capfd, model):
    """One line or the reference accuracy, never a traceback, memory bounded."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        before = _peak_rss_mb()
        acc, _, _ = run_validation(capfd, ["--model_path", path, *CPU, "--batch_size", "8"])
        assert _peak_rss_mb() - before < 500
    if acc is not None:
        assert acc == pytest.approx(reference_accuracy())


VALID = tiny_graph().SerializeToString()


@FUZZ
@given(mutations=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(VALID))))
def test_fuzz_byte_mutations(small_batches, capfd, mutations, cut):
    """A valid tiny graph with bytes changed (and maybe cut short): one line or an accuracy
    computed on every image, never a traceback, memory bounded."""
    data = bytearray(VALID)
    for position, value in mutations:
        data[position] = value
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        with open(path, "wb") as f:
            f.write(bytes(data[:cut]))
        before = _peak_rss_mb()
        acc, _, out = run_validation(capfd, ["--model_path", path, *CPU, "--batch_size", "8"])
        assert _peak_rss_mb() - before < 500
    if acc is not None:
        assert math.isfinite(acc) and 0 <= acc <= 100
        assert out.strip().splitlines()[-1] == f"accuracy: {acc:.2f}"
