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
used (ONNX Runtime runs on the CPU). Before any data is read the graph's one input and one output
are checked against the data set (:func:`helper.onnx_io.check_interface`) and one batch of zeros
is run; a graph whose batch axis is fixed is fed in pieces of that batch.

``--model`` and ``-t`` default to what the file records: the ``arch``/``blocktype`` entries of
``train_student.py``'s and ``train_teacher.py``'s checkpoints (or their ``config``), KDrefine's
``opt``, and the attributes ``arch``/``blocktype`` of the deploy state dicts ``convert.py``
writes; so ``python validation.py --model_path represnet20_deploy.pth`` is enough for those. A
flag contradicting the record stops with one line. Files that record nothing (released
RepDistiller/KDrefine files, raw state dicts) need ``--model``; their block type is taken to be
``AMBB`` unless ``-t`` says otherwise. ``--deploy_flag`` keeps its meaning (True by default:
the file holds the deploy form); the error for the wrong form says which value to pass.

``--dataset`` likewise defaults to the data set the file records (the checkpoints' ``config``,
the original code's ``opt``, the deploy state dict's attribute ``dataset``, an ONNX file's
``dataset`` metadata entry), else ``cifar100``; given and contradicting the record, it stops
with one line. Weights holding NaN or infinity (a run that diverged) and outputs holding them
stop with one line instead of printing a meaningless accuracy. KDrefine's ``--print_freq`` is
accepted and ignored (this script prints no per-batch lines; a terminal shows a progress bar).
"""
from __future__ import annotations

import argparse
import math
import os

import torch

from dataset import (DEFAULT_DATASET, dataset_help, dataset_names, dataset_spec, get_test_loader,
                     num_classes)
from helper.checkpoint import load_checkpoint, recorded_model
from helper.errors import UserError, exit_on_user_error
from engine.loops import validate
from engine.model_io import count_parameters, load_model_from_file, recorded_dataset
from helper.onnx_io import (OnnxRuntimeModel, check_interface, load_onnx, metadata,
                            nonfinite_initializers, parameter_count, runtime_version)
from engine.options import (IgnoredFlag, OneLineParser, blocktype_hint, check_flag_values, flag_or_record,
                            recorded_architecture_in, str2bool)
from helper.plugins import add_plugin_flag, import_plugins
from helper.util import resolve_device
from engine.config import check_architecture, dataset_zoo
from models import BLOCK_TYPES, zoo_of
from models.rep_blocks import DEFAULT_BLOCKTYPE

def model_classes(model: torch.nn.Module) -> int:
    """Output classes of ``model``: rows of its last linear layer."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    import_plugins(argv)  # --plugin: their models, block types and data sets are choices below
    parser = OneLineParser(description="Validate a model checkpoint on the test split.")
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
    parser.add_argument("--dataset", default=None, choices=list(dataset_names()),
                        help=f"the test split to evaluate on ({dataset_help()}); default: the data "
                             f"set the file records, else {DEFAULT_DATASET}")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--print_freq", action=IgnoredFlag, type=int, metavar="N",
                        help="KDrefine's batches between progress lines: accepted and ignored (no "
                             "per-batch lines are printed; a terminal shows a progress bar)")
    add_plugin_flag(parser)
    opt = parser.parse_args(argv)
    check_flag_values(vars(opt))
    return opt


def resolve_dataset(opt: argparse.Namespace, recorded: str | None) -> str:
    """``--dataset``, else the data set the file records, else :data:`DEFAULT_DATASET`; a flag
    contradicting the record stops with one line. Says so when the record decided."""
    dataset = flag_or_record(opt.dataset, recorded, "--dataset", opt.model_path, "data set",
                             default=DEFAULT_DATASET)
    if opt.dataset is None and recorded is not None:
        print(f"data set {dataset} (recorded in {opt.model_path})")
    return dataset


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


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers holding NaN or infinity."""
    return [name for name, value in model.state_dict().items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def refuse_nonfinite_weights(names: list[str], path: str) -> None:
    """One line when ``names`` (weights holding NaN or inf) is not empty."""
    if names:
        raise UserError(f"the model's weights hold NaN or infinity ({path}: {len(names)} tensor(s), e.g. "
                        f"{names[0]}): it diverged in training; evaluate an earlier checkpoint (its run's "
                        f"_best.pth) or train again with a lower --learning_rate")


def report(metrics: dict[str, float], path: str) -> float:
    """Print the metrics lines and return top-1; outputs that held NaN or inf (a non-finite loss)
    stop with one line instead."""
    if not math.isfinite(metrics["loss"]):
        raise UserError(f"the model's outputs on the test split hold NaN or infinity (loss {metrics['loss']}; "
                        f"{path}): its weights overflow on these images, so no accuracy is meaningful; "
                        f"evaluate an earlier checkpoint or train again with a lower --learning_rate")
    print(f"top-1 {metrics['acc']:.2f}  top-5 {metrics['acc_top5']:.2f}  loss {metrics['loss']:.4f}")
    print(f"accuracy: {metrics['acc']:.2f}")
    return metrics["acc"]


def check_onnx_graph(opt: argparse.Namespace, proto) -> str:
    """The architecture an ONNX file records (or its file name), after checking ``--model``/``-t``
    against its metadata."""
    meta = metadata(proto)
    name = os.path.basename(opt.model_path)
    arch = flag_or_record(opt.model, meta.get("arch"), "--model", opt.model_path, "architecture", default=name)
    if opt.blocktype is not None and meta.get("form") == "plain":
        raise UserError(f"-t {opt.blocktype}: {opt.model_path} holds the plain model {arch}, which has no "
                        f"block types; leave -t out")
    if opt.blocktype is not None and meta.get("blocktype") not in (None, opt.blocktype):
        raise UserError(f"-t {opt.blocktype} contradicts {opt.model_path}, which records the block type "
                        f"{meta['blocktype']}; leave -t out")
    return arch


def validate_onnx(opt: argparse.Namespace) -> float:
    """Top-1/top-5 of an ONNX file with ONNX Runtime (CPU) on the test split of ``--dataset`` or
    of the data set the file records."""
    proto = load_onnx(opt.model_path)
    recorded = metadata(proto).get("dataset")
    dataset = resolve_dataset(opt, recorded if recorded in dataset_names() else None)
    arch = check_onnx_graph(opt, proto)
    size = dataset_spec(dataset).image_size
    interface = check_interface(proto, opt.model_path, dataset, num_classes(dataset, opt.data_folder),
                                opt.batch_size, size)
    refuse_nonfinite_weights(nonfinite_initializers(proto), opt.model_path)
    model = OnnxRuntimeModel(proto.SerializeToString(), interface=interface, label=opt.model_path)
    model.check_runs(size)
    cpu = torch.device("cpu")
    loader = get_test_loader(dataset, batch_size=opt.batch_size, num_workers=opt.num_workers,
                             data_folder=opt.data_folder, device=cpu)
    form = metadata(proto).get("form")
    print(f"model {arch} (ONNX{f' {form} form' if form else ''}, ONNX Runtime {runtime_version()} "
          f"CPUExecutionProvider): {parameter_count(proto)} parameters")
    if interface.fixed_batch is not None and interface.fixed_batch != opt.batch_size:
        print(f"the graph's batch is fixed at {interface.fixed_batch}: it is fed {interface.fixed_batch} "
              f"image(s) at a time")
    return report(validate(model, loader, cpu), opt.model_path)


def check_model_name(opt: argparse.Namespace) -> None:
    """A misspelt ``--model`` is told before the file is read: against ``--dataset``'s zoo when
    given, else against every zoo."""
    if opt.model is None:
        return
    if opt.dataset is not None:
        check_architecture(dataset_zoo(opt.dataset), opt.model, "--model")
    else:
        zoo_of(opt.model)


@exit_on_user_error
def main(argv: list[str] | None = None) -> float:
    opt = parse_option(argv)
    if is_onnx_file(opt.model_path):
        return validate_onnx(opt)
    device = resolve_device(opt.device)
    check_model_name(opt)
    checkpoint = load_checkpoint(opt.model_path)
    dataset = resolve_dataset(opt, recorded_dataset(checkpoint))
    zoo = dataset_zoo(dataset)
    arch, blocktype, assumed = resolve_model(opt, checkpoint, zoo)
    deploy = opt.deploy_flag and zoo.is_rep(arch)
    try:
        model, _ = load_model_from_file(opt.model_path, arch, deploy=deploy, blocktype=blocktype, zoo=zoo)
    except UserError as err:
        hint = blocktype_hint(zoo, arch, checkpoint, opt.model_path, deploy, blocktype) if assumed else ""
        raise UserError(f"{err}{hint}") from None
    n_cls = model_classes(model)
    expected = num_classes(dataset, opt.data_folder)
    if n_cls != expected:
        raise UserError(f"{opt.model_path} is a {n_cls}-class model but --dataset {dataset} has "
                        f"{expected} classes; pass the data set it was trained on")
    refuse_nonfinite_weights(nonfinite_weights(model), opt.model_path)
    model = model.to(device).eval()
    loader = get_test_loader(dataset, batch_size=opt.batch_size, num_workers=opt.num_workers,
                             data_folder=opt.data_folder, device=device)
    form = "deploy form" if deploy else (f"train form, block type {blocktype}" if blocktype else "plain form")
    print(f"model {arch} ({form}): {count_parameters(model)} parameters")
    with torch.no_grad():
        metrics = validate(model, loader, device)
    return report(metrics, opt.model_path)


if __name__ == "__main__":
    main()
