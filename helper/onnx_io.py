"""ONNX files of the project's models: export, inspection, and inference with ONNX Runtime.

* :func:`export_onnx` exports a model in eval mode with ``torch.onnx.export`` (the
  ``torch.export``-based exporter, PyTorch's default since 2.9; it translates through
  ``onnxscript``): opset :data:`OPSET`, one input ``input`` of shape ``(batch, 3, H, W)`` whose
  batch axis is dynamic (named ``batch``), one output ``logits``. Constant folding and the
  exporter's graph optimizer (``optimize=True``, onnxscript's rewrite rules) are on; the
  optimizer folds every inference-mode BatchNormalization that directly follows a Conv into the
  Conv's weight and bias (DBB transform I, as :func:`models.fusion.fuse_conv_bn` computes it), so
  a plain model needs no folding beforehand. :func:`export_onnx` checks that this happened
  (:func:`unfolded_batchnorms`) and that ONNX Runtime reproduces the PyTorch logits on the sample
  batch; either failing, like an exporter error, is one :class:`~helper.errors.UserError` line
  naming the model and the reason.
* :func:`write_onnx` writes the graph atomically (a temporary file in the target's folder, then a
  rename: :func:`helper.checkpoint.atomic_write`), weights inside the one file.
* :func:`node_counts`, :func:`unfolded_batchnorms` and :func:`parameter_count` inspect a graph;
  :func:`metadata` reads the ``arch``/``blocktype``/``form`` entries written into its
  ``metadata_props``.
* :class:`OnnxRuntimeModel` runs a file (or serialized graph) with ONNX Runtime's
  ``CPUExecutionProvider`` and is called like the PyTorch model, ``logits = model(images)``, so
  :func:`engine.loops.validate` evaluates it unchanged.

``onnx``, ``onnxscript`` and ``onnxruntime`` (``requirements.txt``) are imported when first
needed, so the rest of the project runs without them. References: ONNX operators,
https://onnx.ai/onnx/operators/; PyTorch's exporter, https://docs.pytorch.org/docs/stable/onnx_export.html.
"""
from __future__ import annotations

import collections
import contextlib
import importlib
import io
import os
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from helper.checkpoint import atomic_write
from helper.errors import UserError

#: ONNX opset of the exported graphs (the opset PyTorch's exporter translates to natively).
OPSET = 18
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"
#: Input resolution of each data set's models.
IMAGE_SIZES = {"cifar100": 32, "digits": 32, "imagenet": 224}
#: Batch of the example input: ``torch.export`` specializes a dimension of size 1, so the sample
#: batch is 2 to keep the batch axis symbolic.
SAMPLE_BATCH = 2
#: ONNX Runtime logits must match PyTorch's to this fraction of the largest logit (a gross-error
#: guard at export; the tests check 1e-4).
EXPORT_CHECK_RTOL = 1e-3
_FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _require(module: str):
    """Import ``module`` or stop with one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"ONNX support needs the package {module} ({err}); install the pinned "
                        f"versions with: python3 -m pip install -r requirements.txt") from None


def _reason(err: BaseException) -> str:
    """``Type: first line`` of an exception, at most 200 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if len(line) > 200:
        line = line[:197] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def image_size(dataset: str) -> int:
    """Input height and width of ``dataset``'s models (32, ImageNet 224)."""
    return IMAGE_SIZES[dataset]


def export_onnx(model: torch.nn.Module, size: int, label: str,
                meta: Mapping[str, str] | None = None) -> Any:
    """The ONNX graph (``onnx.ModelProto``) of ``model`` for ``size`` x ``size`` RGB inputs.

    ``model`` is put in eval mode; ``label`` names it in errors; ``meta`` goes to the graph's
    ``metadata_props``. Writes nothing (see :func:`write_onnx`). Raises a one-line
    :class:`UserError` when the exporter fails, leaves a BatchNormalization after a Conv, or gives
    logits ONNX Runtime does not reproduce.
    """
    _require("onnx")
    _require("onnxscript")
    model = model.eval()
    sample = torch.randn(SAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (sample,), None, dynamo=True, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},),
                opset_version=OPSET, do_constant_folding=True, optimize=True, verbose=False)
            proto = program.model_proto
    except Exception as err:  # the exporter raises many types; each becomes one line
        raise UserError(f"cannot export {label} to ONNX: {_reason(err)}") from None
    left = unfolded_batchnorms(proto)
    if left:
        raise UserError(f"cannot export {label} to ONNX: the exporter left {len(left)} "
                        f"BatchNormalization node(s) after a Conv unfolded ({left[0]})")
    for key, value in (meta or {}).items():
        proto.metadata_props.add(key=key, value=str(value))
    _check_against_torch(proto, model, sample, label)
    return proto


def _check_against_torch(proto: Any, model: torch.nn.Module, sample: torch.Tensor, label: str) -> None:
    """ONNX Runtime's logits of ``sample`` equal ``model``'s (relative to the largest logit)."""
    with torch.no_grad():
        expected = model(sample).float()
    try:
        got = OnnxRuntimeModel(proto.SerializeToString())(sample)
    except UserError as err:
        raise UserError(f"cannot export {label} to ONNX: {err}") from None
    scale = max(1.0, float(expected.abs().max()))
    error = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not error <= EXPORT_CHECK_RTOL * scale:
        raise UserError(f"cannot export {label} to ONNX: ONNX Runtime's logits differ from PyTorch's "
                        f"by {error:.3g} (shape {tuple(got.shape)} vs {tuple(expected.shape)})")


def write_onnx(path: str, proto: Any) -> None:
    """Write ``proto`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))


def load_onnx(path: str) -> Any:
    """The ``onnx.ModelProto`` in ``path``; a missing or non-ONNX file is one line."""
    onnx = _require("onnx")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file" if not os.path.exists(path) else f"{path} is not a file")
    try:
        proto = onnx.load(path)
        if not proto.graph.node:
            raise ValueError("the graph has no nodes")
    except Exception as err:  # protobuf's DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model ({_reason(err)})") from None
    return proto


def node_counts(proto: Any) -> collections.Counter:
    """How many nodes of each operator type (``Conv``, ``BatchNormalization``, ...) the main
    graph of ``proto`` holds (the exporter inlines functions, so no subgraphs are left)."""
    return collections.Counter(node.op_type for node in proto.graph.node)


def unfolded_batchnorms(proto: Any) -> list[str]:
    """Names of the BatchNormalization nodes that could have been folded into a Conv: those
    whose input is a Conv's output that nothing else reads. Pre-activation BNs (after an Add, or
    reading a Conv output that a shortcut reads too, as in the WRNs) do not count."""
    nodes = proto.graph.node
    producer = {out: node.op_type for node in nodes for out in node.output}
    readers = collections.Counter(name for node in nodes for name in node.input)
    readers.update(out.name for out in proto.graph.output)
    return [node.name or f"BatchNormalization #{i}" for i, node in enumerate(nodes)
            if node.op_type == "BatchNormalization" and producer.get(node.input[0]) == "Conv"
            and readers[node.input[0]] == 1]


def parameter_count(proto: Any) -> int:
    """Elements of the graph's floating-point initializers (weights, biases, BN statistics left);
    integer initializers such as Reshape's target shape are not parameters."""
    return sum(int(np.prod(init.dims, dtype=np.int64)) for init in proto.graph.initializer
               if init.data_type in _FLOAT_TYPES)


def metadata(proto: Any) -> dict[str, str]:
    """The graph's ``metadata_props`` as a dict (``arch``, ``blocktype``, ``form`` when
    :func:`export_onnx` was given them)."""
    return {prop.key: prop.value for prop in proto.metadata_props}


def io_shape(value_info: Any) -> list[int | str]:
    """Dimensions of a graph input or output: ints, or the names of symbolic ones."""
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def runtime_version() -> str:
    """The installed ONNX Runtime's version."""
    return _require("onnxruntime").__version__


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX graph run by ONNX Runtime on the CPU, called like the PyTorch model.

    ``source`` is a file path or a serialized graph (bytes); ``threads`` sets ONNX Runtime's
    intra-op threads (default: its own choice). ``forward`` takes a float tensor and returns the
    logits as a CPU tensor.
    """

    def __init__(self, source: str | bytes, threads: int | None = None) -> None:
        super().__init__()
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no warnings on the terminal
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types
            where = source if isinstance(source, str) else "the exported graph"
            raise UserError(f"ONNX Runtime cannot load {where} ({_reason(err)})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
