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
* :func:`node_counts`, :func:`unfolded_batchnorms`, :func:`parameter_count` and
  :func:`nonfinite_initializers` inspect a graph; :func:`metadata` reads the
  ``arch``/``blocktype``/``form``/``dataset`` entries written into its ``metadata_props``.
* :func:`check_interface` checks a graph's one input and one output against a data set (image
  size, which the caller reads from the data set's spec; class count, element types, a fixed
  batch against the evaluation batch) before anything runs, one
  :class:`~helper.errors.UserError` line per mismatch, and returns the :class:`Interface` to
  feed it by.
* :class:`OnnxRuntimeModel` runs a file (or serialized graph) with ONNX Runtime's
  ``CPUExecutionProvider`` and is called like the PyTorch model, ``logits = model(images)``, so
  :func:`engine.loops.validate` evaluates it unchanged. Given an :class:`Interface` it runs a
  graph whose batch axis is fixed in pieces of that batch (the last one padded with zeros, whose
  logits are dropped) and checks every output it reads (logits of shape ``(batch, classes)``);
  an ONNX Runtime error while running is one line too.

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
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from helper.checkpoint import atomic_write
from helper.errors import UserError

#: ONNX opset of the exported graphs (the opset PyTorch's exporter translates to natively).
OPSET = 18
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"
#: Batch of the example input: ``torch.export`` specializes a dimension of size 1, so the sample
#: batch is 2 to keep the batch axis symbolic.
SAMPLE_BATCH = 2
#: ONNX Runtime logits must match PyTorch's to this fraction of the largest logit (a gross-error
#: guard at export; the tests check 1e-4).
EXPORT_CHECK_RTOL = 1e-3
_FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
#: numpy type of the images fed to a graph input of each floating-point element type.
_INPUT_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}
#: A value from a file that may appear in a message or be used as a name as it is.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


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


def _is_plain(value: str | bytes) -> bool:
    """Whether a string read from a file is a plain name (protobuf hands over the bytes of a
    string field that is not UTF-8)."""
    return isinstance(value, str) and bool(_PLAIN_NAME.match(value))


def _shown(name: str | bytes) -> str:
    """A name read from a file, fit for a one-line message: as it is when plain, else quoted by
    ``ascii`` and cut to 40 characters (a damaged or crafted file may hold anything)."""
    if _is_plain(name):
        return str(name)
    text = ascii(name)
    return text if len(text) <= 40 else text[:37] + "..."


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
    """The ``onnx.ModelProto`` in ``path``; a missing, non-regular or non-ONNX file is one line."""
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
    """The graph's ``metadata_props`` as a dict (``arch``, ``blocktype``, ``form`` and
    ``dataset`` when :func:`export_onnx` was given them). Entries whose key or value is not a
    plain name (letters, digits, ``_.-``; a damaged or crafted file) are left out."""
    return {prop.key: prop.value for prop in proto.metadata_props
            if _is_plain(prop.key) and _is_plain(prop.value)}


def io_shape(value_info: Any) -> list[int | str]:
    """Dimensions of a graph input or output: ints, or the names of symbolic ones."""
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def nonfinite_initializers(proto: Any) -> list[str]:
    """Names of the floating-point initializers (weights) that hold NaN or infinity; one that
    cannot be read as an array is left to ONNX Runtime's loader, which names it."""
    numpy_helper = _require("onnx.numpy_helper")
    found = []
    for init in proto.graph.initializer:
        if init.data_type not in _FLOAT_TYPES:
            continue
        try:
            values = np.asarray(numpy_helper.to_array(init), dtype=np.float32)
        except Exception:  # a damaged initializer: size and dims disagree, unknown storage
            continue
        if not np.isfinite(values).all():
            found.append(_shown(init.name))
    return found


def declared_shape(value_info: Any) -> list[int | str | None] | None:
    """The dimensions a graph input or output declares: an int, the name of a symbolic one, or
    None for an unknown one; None when it declares no shape (or is not a tensor)."""
    kind = value_info.type.WhichOneof("value")
    tensor = value_info.type.tensor_type
    if kind != "tensor_type" or not tensor.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tensor.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" and d.dim_value > 0
                    else _shown(d.dim_param) if which == "dim_param" and d.dim_param else None)
    return dims


def _shape_text(dims: list[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _type_name(elem_type: int) -> str:
    onnx = _require("onnx")
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


@dataclass(frozen=True)
class Interface:
    """How to feed a graph one image batch and read its logits (see :func:`check_interface`)."""

    #: name of the graph's one image input
    input_name: str
    #: numpy type the images are cast to (the input's element type)
    input_dtype: type
    #: the batch the graph's input fixes, or None for a dynamic batch axis
    fixed_batch: int | None
    #: classes of the data set: the width of the logits
    classes: int
    #: the data set, for messages
    dataset: str


def check_interface(proto: Any, path: str, dataset: str, classes: int, batch_size: int,
                    size: int) -> Interface:
    """The graph's input and output checked against ``dataset`` (its ``size`` x ``size`` images,
    the data-set spec's ``image_size``, and ``classes``) before anything runs; one
    :class:`UserError` line for the first mismatch.

    The graph must take exactly one input besides its initializers: floating-point images of a
    declared shape ``(batch, 3, H, W)`` whose H and W are the data set's (or symbolic) and whose
    batch is symbolic or a fixed number up to ``batch_size`` (a larger fixed batch asks for
    ``--batch_size``); and give exactly one floating-point output, of shape ``(batch, classes)``
    where it declares a shape. The outputs actually given are checked again as they come
    (:class:`OnnxRuntimeModel`).
    """
    graph = proto.graph
    expected = f"(batch, 3, {size}, {size})"
    weights = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(_shown(value.name) for value in inputs[:4]) + (", ..." if len(inputs) > 4 else "")
        held = f"takes {len(inputs)} inputs ({names})" if inputs else "takes no input"
        raise UserError(f"{path} {held}; validation feeds it one input, the images {expected}: "
                        f"export the model with one image input")
    value = inputs[0]
    name = _shown(value.name)
    elem = value.type.tensor_type.elem_type if value.type.WhichOneof("value") == "tensor_type" else None
    if elem not in _INPUT_DTYPES:
        held = f"{_type_name(elem)} values" if elem is not None else "no tensor"
        raise UserError(f"{path}: its input {name} takes {held}; validation feeds it float images {expected}")
    dims = declared_shape(value)
    if dims is None:
        raise UserError(f"{path}: its input {name} declares no shape, so it cannot be checked against "
                        f"--dataset {dataset} (images {expected}); export it with a shape")
    wrong = [got for got, want in zip(dims[1:], (3, size, size)) if isinstance(got, int) and got != want]
    if len(dims) != 4 or wrong:
        raise UserError(f"{path} takes inputs of shape {_shape_text(dims)}, but --dataset {dataset} has "
                        f"3x{size}x{size} images {expected}; pass the data set it was exported for")
    fixed = dims[0] if isinstance(dims[0], int) else None
    if fixed is not None and fixed > batch_size:
        raise UserError(f"{path} has a fixed batch of {fixed} images, more than --batch_size {batch_size}; "
                        f"pass --batch_size {fixed} (smaller fixed batches are fed in pieces)")
    _check_output(graph, path, dataset, classes)
    return Interface(value.name, _INPUT_DTYPES[elem], fixed, classes, dataset)


def _check_output(graph: Any, path: str, dataset: str, classes: int) -> None:
    """One floating-point output, of shape ``(batch, classes)`` where it declares one."""
    outputs = list(graph.output)
    if len(outputs) != 1:
        names = ", ".join(_shown(value.name) for value in outputs[:4]) + (", ..." if len(outputs) > 4 else "")
        held = f"gives {len(outputs)} outputs ({names})" if outputs else "gives no output"
        raise UserError(f"{path} {held}; validation reads one output, the logits (batch, classes)")
    value = outputs[0]
    name = _shown(value.name)
    elem = value.type.tensor_type.elem_type if value.type.WhichOneof("value") == "tensor_type" else None
    if elem not in _FLOAT_TYPES:
        held = f"{_type_name(elem)} values" if elem is not None else "no tensor"
        raise UserError(f"{path}: its output {name} gives {held}, not logits; validation reads float "
                        f"logits (batch, classes)")
    dims = declared_shape(value)
    if dims is None:
        return  # checked on the outputs themselves
    if len(dims) != 2:
        raise UserError(f"{path}: its output {name} has shape {_shape_text(dims)}; validation reads "
                        f"logits of shape (batch, classes)")
    if isinstance(dims[1], int) and dims[1] != classes:
        raise UserError(f"{path} is a {dims[1]}-class model but --dataset {dataset} has {classes} "
                        f"classes; pass the data set it was trained on")


def runtime_version() -> str:
    """The installed ONNX Runtime's version."""
    return _require("onnxruntime").__version__


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX graph run by ONNX Runtime on the CPU, called like the PyTorch model.

    ``source`` is a file path or a serialized graph (bytes), named ``label`` in errors (default:
    the path, or "the exported graph"); ``threads`` sets ONNX Runtime's intra-op threads
    (default: its own choice). ``forward`` takes a float tensor and returns the logits as a CPU
    float32 tensor. With ``interface`` (:func:`check_interface`) the images go to its input, as
    its type, in pieces of its fixed batch if it has one, and each output must be logits of
    shape ``(batch, classes)``; loading or running errors are one :class:`UserError` line.
    """

    def __init__(self, source: str | bytes, threads: int | None = None,
                 interface: Interface | None = None, label: str | None = None) -> None:
        super().__init__()
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 4  # fatal only: errors come back as exceptions, told in one line
        self.label = label or (source if isinstance(source, str) else "the exported graph")
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            inputs = self.session.get_inputs()
        except Exception as err:  # onnxruntime's own exception types
            raise UserError(f"ONNX Runtime cannot load {self.label} ({_reason(err)})") from None
        if interface is None and len(inputs) != 1:
            raise UserError(f"{self.label} takes {len(inputs)} inputs; expected one, the images")
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self.interface = interface
        self.input_name = interface.input_name if interface is not None else inputs[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        fixed = self.interface.fixed_batch if self.interface is not None else None
        if fixed is None or len(array) == fixed:
            return self._run(array)
        pieces = []
        for start in range(0, len(array), fixed):
            piece = array[start:start + fixed]
            padding = np.zeros((fixed - len(piece), *piece.shape[1:]), dtype=piece.dtype)
            pieces.append(self._run(np.concatenate([piece, padding]))[:len(piece)])
        return torch.cat(pieces)

    def _run(self, array: np.ndarray) -> torch.Tensor:
        """The logits of one batch the graph accepts as it is."""
        dtype = self.interface.input_dtype if self.interface is not None else np.float32
        try:
            logits = self.session.run(None, {self.input_name: array.astype(dtype, copy=False)}, self.run_options)[0]
        except Exception as err:  # onnxruntime's own exception types
            raise UserError(f"ONNX Runtime cannot run {self.label} on a batch of shape "
                            f"{tuple(array.shape)} ({_reason(err)})") from None
        if self.interface is not None:
            self._check_logits(logits, len(array))
        return torch.from_numpy(np.array(logits, dtype=np.float32))

    def _check_logits(self, logits: Any, batch: int) -> None:
        classes = self.interface.classes
        if (not isinstance(logits, np.ndarray) or logits.dtype.kind != "f"
                or logits.shape != (batch, classes)):
            got = (f"{logits.dtype} values of shape {tuple(logits.shape)}" if isinstance(logits, np.ndarray)
                   else f"a {type(logits).__name__}")
            raise UserError(f"{self.label} gives {got} for a batch of {batch} images; --dataset "
                            f"{self.interface.dataset} needs float logits of shape ({batch}, {classes})")

    def check_runs(self, size: int) -> None:
        """Run one batch of zeros (``size`` x ``size`` images), checking its output, before any
        data is read."""
        batch = self.interface.fixed_batch if self.interface is not None and self.interface.fixed_batch else 1
        self(torch.zeros(batch, 3, size, size))
