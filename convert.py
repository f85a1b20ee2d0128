"""Convert a trained re-parameterizable student to its deploy form (one KxK conv per rep block),
and export models to ONNX.

Example::

    python convert.py --load save/student_model/S_represnet20_.../represnet20_best.pth \\
        --save represnet20_deploy.pth [--onnx represnet20.onnx]
    python convert.py --load save/models/resnet20_.../resnet20_best.pth --onnx resnet20.onnx

Reads a train-form checkpoint ('model' or 'state_dict' entry, or a raw state dict; 'module.'
prefixes stripped; ``.hdf5`` weight files through h5py) and writes the deploy state dict.

Architecture and block type come from the checkpoint when it records them: the ``arch`` and
``blocktype`` entries of ``train_student.py``'s files (or their ``config``), or KDrefine's
``opt``. ``-a`` and ``-t`` are then optional; a flag that contradicts the record stops with one
line. Files that record nothing (released RepDistiller/KDrefine files, raw state dicts) need
``-a``; their block type is taken to be ``AMBB`` (KDrefine's) unless ``-t`` says otherwise,
and when the weights fit another block type the error says which ``-t`` to give.

The deploy file is a raw state dict, loadable with
``model.load_state_dict(torch.load(f), strict=True)``; like its digest, the architecture and
the block type ride along as attributes ``arch`` and ``blocktype`` of the ``OrderedDict`` (the
way torch keeps ``_metadata``; ``load_state_dict`` ignores them), so ``validation.py`` needs
no ``--model``/``-t`` for it either.

The data set is ``--dataset``, else the one the checkpoint records (its ``config``, the
original code's ``opt``, a deploy file's attribute); a flag contradicting the record stops with
one line. When known it is recorded too, as the deploy file's attribute ``dataset`` and the ONNX
file's ``dataset`` metadata entry, so ``validation.py`` evaluates on it without ``--dataset``.
A file that records none (and no ``--dataset``) records none.

``--onnx FILE`` writes the deployed model as ONNX as well (:mod:`helper.onnx_io`: opset 18,
dynamic batch axis, input ``input``, output ``logits``, BN folded into the convs, ``arch``,
``blocktype``, ``form`` and ``dataset`` in its metadata), for the input size of the data set's
spec (``image_size``: 32x32, 224x224 for ``--dataset imagenet``, the zoo ``represnet18`` lives
in; with no data set known, that of the set that selects the model's zoo). ``--onnx`` alone also exports a plain
model as it is (``resnet20``: its BNs folded) and a file that already holds a deploy form. The
graph is exported and checked against PyTorch before any file is written; an export that fails
stops with one line naming the model and the reason and leaves no file.
"""
from __future__ import annotations

import argparse
import os

import torch

from dataset import dataset_help, dataset_names, dataset_spec, zoo_dataset
from helper.checkpoint import atomic_write, load_checkpoint, recorded_model, with_digest
from helper.errors import UserError, exit_on_user_error
from helper.run_folder import check_output_file
from engine.model_io import count_parameters, load_model_from_file, recorded_dataset
from helper.onnx_io import OPSET, export_onnx, node_counts, parameter_count, write_onnx
from helper.plugins import add_plugin_flag, import_plugins
from engine.options import (OneLineParser, blocktype_hint, check_flag_values, fitting_blocktypes,
                            flag_or_record, recorded_architecture_in)
from engine.config import check_architecture, dataset_zoo
from models import BLOCK_TYPES, ModelZoo, reparameterize_model, zoo_of
from models.rep_blocks import DEFAULT_BLOCKTYPE


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    import_plugins(argv)  # --plugin: their models, block types and data sets are choices below
    parser = OneLineParser(description="Convert a train-form rep student to deploy form "
                                                 "and/or export a model to ONNX.")
    parser.add_argument("--load", required=True, help="train-form checkpoint (.pth or .hdf5)")
    parser.add_argument("--save", default=None, help="where to write the deploy state dict")
    parser.add_argument("--onnx", default=None,
                        help="where to write the deployed model as ONNX (opset 18, dynamic batch)")
    parser.add_argument("-a", "--arch", default=None,
                        help="architecture, e.g. represnet20 (CIFAR) or represnet18 (ImageNet); "
                             "default: the one the checkpoint records (needed for files that record none)")
    parser.add_argument("-t", "--blocktype", default=None, choices=list(BLOCK_TYPES),
                        help="training-time block the checkpoint was trained with; default: the one "
                             f"it records, else {DEFAULT_BLOCKTYPE}")
    parser.add_argument("--dataset", default=None, choices=list(dataset_names()),
                        help=f"the data set whose model zoo and input size (its spec's image_size) "
                             f"to use ({dataset_help()}); default: the data set the checkpoint "
                             f"records, else the zoo that has the architecture")
    add_plugin_flag(parser)
    opt = parser.parse_args(argv)
    check_flag_values(vars(opt))
    if opt.save is None and opt.onnx is None:
        raise UserError("nothing to write: give --save FILE (the deploy state dict), --onnx FILE "
                        "(the ONNX graph), or both")
    _check_distinct_files(opt)
    for flag, path in (("--save", opt.save), ("--onnx", opt.onnx)):
        if path is not None:  # a directory, a path under a file, a read-only folder: stop now
            check_output_file(path, flag)
    return opt


def _same_file(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def _check_distinct_files(opt: argparse.Namespace) -> None:
    """--save and --onnx must name other files than --load and than each other."""
    for flag, path in (("--save", opt.save), ("--onnx", opt.onnx)):
        if path is not None and _same_file(path, opt.load):
            raise UserError(f"{flag} {path} is the file --load reads; write the output to another "
                            f"file (the train form is what trains further and converts again)")
    if opt.save is not None and opt.onnx is not None and _same_file(opt.save, opt.onnx):
        raise UserError(f"--save and --onnx both name {opt.save}; give them different files")


def _zoo_holding(opt: argparse.Namespace, arch: str, zoo: ModelZoo | None) -> ModelZoo:
    """The zoo of ``arch``: ``--dataset``'s when given (the name must be in it), else the one
    that has it."""
    if zoo is not None:
        recorded_architecture_in(zoo, arch, opt.load, "-a", from_record=opt.arch is None)
        return zoo
    try:
        return zoo_of(arch)
    except UserError:
        if opt.arch is not None:
            raise
        raise UserError(f"{opt.load} records the architecture {arch}, which this code does not have") from None


def resolve_architecture(opt: argparse.Namespace, checkpoint,
                         zoo: ModelZoo | None = None) -> tuple[str, str | None, bool, ModelZoo]:
    """``(arch, blocktype, blocktype_assumed, zoo)`` from the checkpoint's record, ``-a``/``-t``
    and ``--dataset``; ``blocktype`` is None for a plain model (exported with ``--onnx`` alone)."""
    recorded_arch, recorded_blocktype = recorded_model(checkpoint)
    arch = flag_or_record(opt.arch, recorded_arch, "-a", opt.load, "architecture",
                          example=", e.g. -a represnet20")
    zoo = _zoo_holding(opt, arch, zoo)
    if not zoo.is_rep(arch):
        said = f"-a {arch}" if opt.arch is not None else f"{opt.load} holds a {arch}, which"
        if opt.save is not None:
            raise UserError(f"{said} has no deploy form; convert.py takes a re-parameterizable "
                            f"student (represnet20, repvgg8, ..., or ImageNet's represnet18), and "
                            f"exports a plain model as it is with --onnx FILE alone")
        if opt.blocktype is not None:
            raise UserError(f"-t {opt.blocktype}: {arch} is not re-parameterizable and has no block "
                            f"types; leave -t out")
        return arch, None, False, zoo
    blocktype = flag_or_record(opt.blocktype, recorded_blocktype, "-t", opt.load, "block type",
                               default=DEFAULT_BLOCKTYPE)
    assumed = opt.blocktype is None and recorded_blocktype is None
    return arch, blocktype, assumed, zoo


def resolve_dataset(opt: argparse.Namespace, checkpoint) -> str | None:
    """``--dataset``, else the data set the checkpoint records, else None; a flag contradicting
    the record stops with one line."""
    recorded = recorded_dataset(checkpoint)
    if opt.dataset is None and recorded is None:
        return None
    return flag_or_record(opt.dataset, recorded, "--dataset", opt.load, "data set")


def load_model(opt: argparse.Namespace, checkpoint, arch: str, blocktype: str | None,
               assumed: bool, zoo: ModelZoo) -> tuple[torch.nn.Module, str]:
    """The model in ``--load`` and what it held: ``'train'`` (a rep student's train form),
    ``'deploy'`` (a deploy file: accepted for ``--onnx`` alone) or ``'plain'``."""
    if blocktype is None:
        return load_model_from_file(opt.load, arch, deploy=False, zoo=zoo)[0], "plain"
    try:
        return load_model_from_file(opt.load, arch, deploy=False, blocktype=blocktype, zoo=zoo)[0], "train"
    except UserError as err:
        if fitting_blocktypes(zoo, arch, checkpoint, opt.load, True, [blocktype]):
            if opt.save is None:
                return load_model_from_file(opt.load, arch, deploy=True, blocktype=blocktype,
                                            zoo=zoo)[0], "deploy"
            raise UserError(f"{opt.load} already holds the deploy form of {arch}: nothing to convert "
                            f"(validation.py reads it with --deploy_flag True; --onnx FILE alone "
                            f"exports it)") from None
        hint = blocktype_hint(zoo, arch, checkpoint, opt.load, False, blocktype) if assumed else ""
        raise UserError(f"{err}{hint}") from None


def export(model: torch.nn.Module, arch: str, blocktype: str | None, zoo: ModelZoo,
           dataset: str | None):
    """The ONNX graph of the deployed (or plain) ``model``, for the input size of ``dataset``'s
    spec (None: that of the data set that selects the zoo), recording the data set when known."""
    size = dataset_spec(dataset or zoo_dataset(zoo.kind)).image_size
    form = "plain" if blocktype is None else "deploy"
    meta = {"arch": arch, "form": form, **({"blocktype": blocktype} if blocktype else {}),
            **({"dataset": dataset} if dataset else {})}
    label = f"{arch} ({form} form{f', block type {blocktype}' if blocktype else ''})"
    return export_onnx(model, size, label, meta)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    opt = parse_option(argv)
    zoo = dataset_zoo(opt.dataset) if opt.dataset is not None else None
    if opt.arch is not None and zoo is not None:  # a misspelt -a is told before the file is read
        check_architecture(zoo, opt.arch, "-a")
    elif opt.arch is not None:
        zoo_of(opt.arch)
    checkpoint = load_checkpoint(opt.load)
    dataset = resolve_dataset(opt, checkpoint)
    if zoo is None and dataset is not None:
        zoo = dataset_zoo(dataset)
    arch, blocktype, assumed, zoo = resolve_architecture(opt, checkpoint, zoo)
    model, held = load_model(opt, checkpoint, arch, blocktype, assumed, zoo)
    before = count_parameters(model)
    reparameterize_model(model.eval())
    proto = export(model, arch, blocktype, zoo, dataset) if opt.onnx is not None else None
    if held == "train":
        target = opt.save if opt.save is not None else "deploy form"
        if opt.save is not None:
            payload = with_digest(model.state_dict(),  # the digest covers the attributes
                                  attributes={"arch": arch, "blocktype": blocktype, "dataset": dataset})
            atomic_write(opt.save, lambda f: torch.save(payload, f))
        print(f"converted {opt.load} ({arch}, block type {blocktype}, {before} parameters) -> "
              f"{target} ({count_parameters(model)} parameters)")
    if proto is not None:
        write_onnx(opt.onnx, proto)
        counts = node_counts(proto)
        print(f"exported {arch} ({'plain' if blocktype is None else 'deploy'} form) -> {opt.onnx} "
              f"(ONNX opset {OPSET}, dynamic batch; {counts['Conv']} Conv, "
              f"{counts['BatchNormalization']} BatchNormalization nodes, {parameter_count(proto)} parameters)")


if __name__ == "__main__":
    main()
