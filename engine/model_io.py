"""Building a model from a weights file: shared by convert.py and validation.py."""
from __future__ import annotations

import argparse
from typing import Any, Mapping

import torch

from dataset import dataset_names
from helper.checkpoint import (describe_mismatch, extract_state_dict, load_checkpoint, load_weights,
                               num_classes_from_state_dict)
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


def load_model_from_file(path: str, arch: str, deploy: bool = False, blocktype: str | None = None,
                         zoo: ModelZoo = CIFAR_ZOO):
    """Build ``arch`` of ``zoo`` (the CIFAR models by default) with the class count of
    ``path``'s classifier and load its weights strictly.

    ``deploy`` only matters for re-parameterizable students. Returns ``(model, state_dict)``.
    """
    zoo.check_name(arch, "--model/-a")
    state = extract_state_dict(load_checkpoint(path), path)
    n_cls = num_classes_from_state_dict(state, path)
    deploy = deploy and zoo.is_rep(arch)
    model = zoo.build(arch, num_classes=n_cls, blocktype=blocktype, deploy=deploy)
    problem = describe_mismatch(model, state)
    hint = _form_hint(deploy, state) if problem and zoo.is_rep(arch) else ""
    load_weights(model, state, path, arch + (" (deploy form)" if deploy else ""), hint)
    return model, state


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
