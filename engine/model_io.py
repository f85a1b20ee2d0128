"""Building a model from a weights file, the one path of every entry script: the teacher of
``train_student.py`` (:func:`read_teacher`), the model ``convert.py`` converts or exports and
the one ``validation.py`` evaluates (:func:`load_model_from_file`) all go through
:func:`model_from_checkpoint` (the state dict, its class count, the zoo's constructor, a strict
load whose mismatch is one line). ``--resume`` restores whole runs instead
(:func:`engine.trainer.resume`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping

import torch

from dataset import dataset_names, num_classes
from engine.config import check_architecture, dataset_zoo
from helper.checkpoint import (describe_mismatch, extract_state_dict, load_checkpoint, load_weights,
                               num_classes_from_state_dict)
from helper.errors import UserError
from helper.naming import teacher_arch_from_path
from models import CIFAR_ZOO, ModelZoo
from models.rep_blocks import state_dict_forms


def _form_hint(model_is_deploy: bool, state: dict[str, torch.Tensor]) -> str:
    """A hint when ``state`` holds the other form (train/deploy) of the registered blocks than
    the model built, as the block classes tell by their state-dict key markers."""
    forms = state_dict_forms(state)
    if not model_is_deploy and "deploy" in forms:
        return " (the file holds deploy-form weights: pass --deploy_flag True)"
    if model_is_deploy and "train" in forms:
        return " (the file holds train-form weights: pass --deploy_flag False, or convert it with convert.py)"
    return ""


def model_from_checkpoint(checkpoint: Any, path: str, arch: str, zoo: ModelZoo, *,
                          blocktype: str | None = None, deploy: bool = False,
                          check_classes: Callable[[int], None] | None = None,
                          form_hint: bool = False) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """``arch`` of ``zoo`` with the class count of the classifier in ``checkpoint`` (loaded
    from ``path``; ``check_classes`` may refuse that count) and its weights, loaded strictly.

    ``deploy`` only matters for re-parameterizable models; with ``form_hint`` a mismatch of a
    rep model says when the file holds the other form (which ``--deploy_flag`` to pass).
    Returns ``(model, state_dict)``."""
    state = extract_state_dict(checkpoint, path)
    n_cls = num_classes_from_state_dict(state, path)
    if check_classes is not None:
        check_classes(n_cls)
    deploy = deploy and zoo.is_rep(arch)
    model = zoo.build(arch, num_classes=n_cls, blocktype=blocktype, deploy=deploy)
    hint = ""
    if form_hint and zoo.is_rep(arch) and describe_mismatch(model, state):
        hint = _form_hint(deploy, state)
    load_weights(model, state, path, arch + (" (deploy form)" if deploy else ""), hint)
    return model, state


def load_model_from_file(path: str, arch: str, deploy: bool = False, blocktype: str | None = None,
                         zoo: ModelZoo = CIFAR_ZOO):
    """Build ``arch`` of ``zoo`` (the CIFAR models by default) with the class count of
    ``path``'s classifier and load its weights strictly (:func:`model_from_checkpoint`, with
    the train/deploy form hint). Returns ``(model, state_dict)``."""
    check_architecture(zoo, arch, "--model/-a")
    return model_from_checkpoint(load_checkpoint(path), path, arch, zoo, blocktype=blocktype,
                                 deploy=deploy, form_hint=True)


def teacher_architecture(path: str, ckpt: Any, dataset: str, model_t: str | None = None) -> str:
    """The teacher's architecture: the checkpoint's 'arch' entry, else ``--model_t``, else its
    RepDistiller folder name; ``--model_t`` contradicting the entry stops with one line."""
    zoo = dataset_zoo(dataset)
    recorded = ckpt.get("arch") if isinstance(ckpt, dict) and isinstance(ckpt.get("arch"), str) else None
    if recorded and model_t and recorded != model_t:
        raise UserError(f"--model_t {model_t} contradicts {path}, which records the architecture "
                        f"{recorded}; leave --model_t out")
    arch = recorded or model_t or teacher_arch_from_path(path, list(zoo.models))
    check_architecture(zoo, arch, "--path_t (teacher architecture; name it with --model_t)")
    return arch


def read_teacher(path: str, dataset: str, data_folder: str = "./data", model_t: str | None = None,
                 ckpt: Any = None) -> tuple[str, torch.nn.Module]:
    """``(arch, model)`` of the teacher file ``path`` (see :func:`teacher_architecture`;
    ``ckpt``: the file, if already loaded), whose class count must be ``--dataset``'s."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    arch = teacher_architecture(path, ckpt, dataset, model_t)

    def check_classes(n_cls: int) -> None:
        expected = num_classes(dataset, data_folder)
        if n_cls != expected:
            raise UserError(f"{path} is a {n_cls}-class teacher but --dataset {dataset} has "
                            f"{expected} classes")

    model, _ = model_from_checkpoint(ckpt, path, arch, dataset_zoo(dataset), check_classes=check_classes)
    return arch, model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def recorded_dataset(checkpoint: Any) -> str | None:
    """The data set a checkpoint records: ``config['dataset']`` (``train_teacher.py``'s and
    ``train_student.py``'s files), the original code's ``opt.dataset``, or the attribute
    ``dataset`` of ``convert.py``'s deploy state dicts; None when it records none, or a name
    that is not one of :func:`dataset.dataset_names` (a crafted or damaged file)."""
    if not isinstance(checkpoint, Mapping):
        return None
    config, opt = checkpoint.get("config"), checkpoint.get("opt")
    for value in (getattr(checkpoint, "__dict__", {}).get("dataset"),
                  config.get("dataset") if isinstance(config, Mapping) else None,
                  vars(opt).get("dataset") if isinstance(opt, argparse.Namespace) else None):
        if isinstance(value, str) and value in dataset_names():
            return value
    return None
