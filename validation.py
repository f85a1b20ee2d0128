"""Evaluate a checkpoint (train or deploy form) on the test split: top-1/top-5 accuracy.

Example::

    python validation.py --model represnet20 --model_path represnet20_deploy.pth --deploy_flag True
    python validation.py --model represnet18 --model_path represnet18_deploy.pth \
        --dataset imagenet --data_folder /data/imagenet

The last line of standard output is ``accuracy: <top-1 in percent>``.

An ONNX file (``--model_path FILE.onnx``, as ``convert.py --onnx`` writes) is evaluated with ONNX
Runtime's ``CPUExecutionProvider`` on the same test split, printing the same lines (its
parameter count is the elements of its floating-point initializers). ``--model`` and ``-t`` are
then optional and, when given, must agree with what the file's metadata records;
``--deploy_flag`` does not apply (the graph is whatever was exported) and ``--device`` is not
used (ONNX Runtime runs on the CPU).

``--model`` and ``-t`` default to what the file records: the ``arch``/``blocktype`` entries of
``train_student.py``'s and ``train_teacher.py``'s checkpoints (or their ``config``), KDrefine's
``opt``, and the attributes ``arch``/``blocktype`` of the deploy state dicts ``convert.py``
writes; so ``python validation.py --model_path represnet20_deploy.pth`` is enough for those. A
flag contradicting the record stops with one line. Files that record nothing (released
RepDistiller/KDrefine files, raw state dicts) need ``--model``; their block type is taken to be
``AMBB`` unless ``-t`` says otherwise. ``--deploy_flag`` keeps its meaning (True by default:
the file holds the deploy form); the error for the wrong form says which value to pass.
"""
from __future__ import annotations

import argparse
import os

import torch

from dataset import DATASETS, get_test_loader, num_classes
from helper.checkpoint import load_checkpoint, recorded_model
from helper.errors import UserError, exit_on_user_error
from engine.loops import validate
from engine.model_io import count_parameters, load_model_from_file
from helper.onnx_io import (OnnxRuntimeModel, image_size, io_shape, load_onnx, metadata, parameter_count,
                            runtime_version)
from engine.options import (blocktype_hint, check_flag_values, flag_or_record, recorded_architecture_in,
                            str2bool)
from helper.util import resolve_device
from engine.config import dataset_zoo
from models import BLOCK_TYPES
from models.rep_blocks import DEFAULT_BLOCKTYPE


def model_classes(model: torch.nn.Module) -> int:
    """Output classes of ``model``: rows of its last linear layer."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validate a model checkpoint on the test split.")
    parser.add_argument("--model", default=None,
                        help="architecture, e.g. represnet20 (or represnet18 with --dataset imagenet); "
                             "default: the one the file records (needed for files that record none)")
    parser.add_argument("--model_path", required=True,
                        help="checkpoint or state dict (.pth/.hdf5), or an ONNX file (.onnx)")
    parser.add_argument("--deploy_flag", type=str2bool, default=True,
                        help="True: the file holds the deploy form (rep students only)")
    parser.add_argument("-t", "--blocktype", default=None, choices=list(BLOCK_TYPES),
                        help="training-time block of a rep checkpoint; default: the one the file "
                             f"records, else {DEFAULT_BLOCKTYPE}")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--data_folder", default="./data",
                        help="holds cifar-100-python/, or ImageNet's val/<class>/ folders")
    parser.add_argument("--dataset", default="cifar100", choices=list(DATASETS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    opt = parser.parse_args(argv)
    check_flag_values(vars(opt))
    return opt


def resolve_model(opt: argparse.Namespace, checkpoint, zoo) -> tuple[str, str | None, bool]:
    """``(arch, blocktype, blocktype_assumed)`` from the file's record and ``--model``/``-t``;
    ``blocktype`` is None for a model without block types."""
    recorded_arch, recorded_blocktype = recorded_model(checkpoint)
    arch = flag_or_record(opt.model, recorded_arch, "--model", opt.model_path, "architecture",
                          example=", e.g. --model represnet20")
    recorded_architecture_in(zoo, arch, opt.model_path, "--model", from_record=opt.model is None)
    if not zoo.is_rep(arch):
        if opt.blocktype is not None:
            raise UserError(f"-t {opt.blocktype}: {arch} is not re-parameterizable and has no block "
                            f"types; leave -t out")
        return arch, None, False
    blocktype = flag_or_record(opt.blocktype, recorded_blocktype, "-t", opt.model_path, "block type",
                               default=DEFAULT_BLOCKTYPE)
    return arch, blocktype, opt.blocktype is None and recorded_blocktype is None


def is_onnx_file(path: str) -> bool:
    """True for a ``.onnx`` file name (case-insensitive)."""
    return os.path.splitext(path)[1].lower() == ".onnx"


def check_onnx_graph(opt: argparse.Namespace, proto) -> str:
    """The architecture an ONNX file records (or its file name), after checking ``--model``/``-t``
    against its metadata and its input size and class count against ``--dataset``."""
    meta = metadata(proto)
    name = os.path.basename(opt.model_path)
    arch = flag_or_record(opt.model, meta.get("arch"), "--model", opt.model_path, "architecture", default=name)
    if opt.blocktype is not None and meta.get("form") == "plain":
        raise UserError(f"-t {opt.blocktype}: {opt.model_path} holds the plain model {arch}, which has no "
                        f"block types; leave -t out")
    if opt.blocktype is not None and meta.get("blocktype") not in (None, opt.blocktype):
        raise UserError(f"-t {opt.blocktype} contradicts {opt.model_path}, which records the block type "
                        f"{meta['blocktype']}; leave -t out")
    shape, size = io_shape(proto.graph.input[0]), image_size(opt.dataset)
    if len(shape) != 4 or shape[2:] != [size, size]:
        raise UserError(f"{opt.model_path} takes inputs of shape {shape}, but --dataset {opt.dataset} has "
                        f"3x{size}x{size} images; pass the data set it was exported for")
    classes = io_shape(proto.graph.output[0])[-1]
    expected = num_classes(opt.dataset, opt.data_folder)
    if isinstance(classes, int) and classes and classes != expected:
        raise UserError(f"{opt.model_path} is a {classes}-class model but --dataset {opt.dataset} has "
                        f"{expected} classes; pass the data set it was trained on")
    return arch


def validate_onnx(opt: argparse.Namespace) -> float:
    """Top-1/top-5 of an ONNX file with ONNX Runtime (CPU) on ``--dataset``'s test split."""
    proto = load_onnx(opt.model_path)
    arch = check_onnx_graph(opt, proto)
    model = OnnxRuntimeModel(opt.model_path)
    cpu = torch.device("cpu")
    loader = get_test_loader(opt.dataset, batch_size=opt.batch_size, num_workers=opt.num_workers,
                             data_folder=opt.data_folder, device=cpu)
    form = metadata(proto).get("form")
    print(f"model {arch} (ONNX{f' {form} form' if form else ''}, ONNX Runtime {runtime_version()} "
          f"CPUExecutionProvider): {parameter_count(proto)} parameters")
    metrics = validate(model, loader, cpu)
    print(f"top-1 {metrics['acc']:.2f}  top-5 {metrics['acc_top5']:.2f}  loss {metrics['loss']:.4f}")
    print(f"accuracy: {metrics['acc']:.2f}")
    return metrics["acc"]


@exit_on_user_error
def main(argv: list[str] | None = None) -> float:
    opt = parse_option(argv)
    if is_onnx_file(opt.model_path):
        return validate_onnx(opt)
    device = resolve_device(opt.device)
    zoo = dataset_zoo(opt.dataset)
    if opt.model is not None:
        zoo.check_name(opt.model, "--model")  # a misspelt name is told before the file is read
    checkpoint = load_checkpoint(opt.model_path)
    arch, blocktype, assumed = resolve_model(opt, checkpoint, zoo)
    deploy = opt.deploy_flag and zoo.is_rep(arch)
    try:
        model, _ = load_model_from_file(opt.model_path, arch, deploy=deploy, blocktype=blocktype, zoo=zoo)
    except UserError as err:
        hint = blocktype_hint(zoo, arch, checkpoint, opt.model_path, deploy, blocktype) if assumed else ""
        raise UserError(f"{err}{hint}") from None
    n_cls = model_classes(model)
    expected = num_classes(opt.dataset, opt.data_folder)
    if n_cls != expected:
        raise UserError(f"{opt.model_path} is a {n_cls}-class model but --dataset {opt.dataset} has "
                        f"{expected} classes; pass the data set it was trained on")
    model = model.to(device).eval()
    loader = get_test_loader(opt.dataset, batch_size=opt.batch_size, num_workers=opt.num_workers,
                             data_folder=opt.data_folder, device=device)
    form = "deploy form" if deploy else (f"train form, block type {blocktype}" if blocktype else "plain form")
    print(f"model {arch} ({form}): {count_parameters(model)} parameters")
    with torch.no_grad():
        metrics = validate(model, loader, device)
    print(f"top-1 {metrics['acc']:.2f}  top-5 {metrics['acc_top5']:.2f}  loss {metrics['loss']:.4f}")
    print(f"accuracy: {metrics['acc']:.2f}")
    return metrics["acc"]


if __name__ == "__main__":
    main()
