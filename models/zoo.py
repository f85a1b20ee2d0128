"""Which model registry a data set uses: the CIFAR zoo (:data:`models.model_dict`) for
``cifar100``/``digits``, the ImageNet zoo (:data:`models.imagenet_model_dict`) for ``imagenet``.

The two registries stay separate because the CRD benchmark already gives ImageNet-sounding names
to CIFAR networks (``ResNet50``, ``MobileNetV2``); a name keeps the meaning of its data set's
zoo, and an unknown name is a one-line error listing that zoo's names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from torch import nn

from helper.errors import UserError

from .imagenet import (build_imagenet_model, check_imagenet_model_name, imagenet_model_dict,
                       is_imagenet_rep_model)
from .registry import build_model, check_model_name, is_rep_model, model_dict


@dataclass(frozen=True)
class ModelZoo:
    """One registry with its name check, constructor and re-parameterizable-student test."""

    name: str
    models: Mapping[str, Callable[..., nn.Module]]
    check: Callable[[str, str], str]
    build: Callable[..., nn.Module]
    is_rep: Callable[[str], bool]

    def check_name(self, name: str, flag: str = "--model") -> str:
        """``name`` if this zoo has it, else a :class:`UserError` listing the zoo's names (and
        pointing at the other zoo when the name lives there)."""
        if name not in self.models:
            other = IMAGENET_ZOO if self is CIFAR_ZOO else CIFAR_ZOO
            if name in other.models:
                dataset = "imagenet" if other is IMAGENET_ZOO else "cifar100"
                raise UserError(f"{flag} {name} is {other.name} model; pass --dataset {dataset}, "
                                f"or one of: {', '.join(sorted(self.models))}")
        return self.check(name, flag)


CIFAR_ZOO = ModelZoo("a CIFAR", model_dict, check_model_name, build_model, is_rep_model)
IMAGENET_ZOO = ModelZoo("an ImageNet", imagenet_model_dict, check_imagenet_model_name,
                        build_imagenet_model, is_imagenet_rep_model)


def zoo_for(dataset: str) -> ModelZoo:
    """The registry of ``dataset``: ImageNet's for ``imagenet``, the CIFAR one otherwise."""
    return IMAGENET_ZOO if dataset == "imagenet" else CIFAR_ZOO


def known_model_names() -> set[str]:
    """Names of every registered architecture, CIFAR and ImageNet (to parse run names)."""
    return set(CIFAR_ZOO.models) | set(IMAGENET_ZOO.models)


def zoo_of(name: str) -> ModelZoo:
    """The registry holding ``name`` (CIFAR first: CIFAR names keep their CIFAR meaning), for
    tools that take an architecture without a data set (``convert.py``)."""
    for zoo in (CIFAR_ZOO, IMAGENET_ZOO):
        if name in zoo.models:
            return zoo
    raise UserError(f"unknown model {name!r}; known CIFAR models: {', '.join(sorted(model_dict))}; "
                    f"known ImageNet models: {', '.join(sorted(imagenet_model_dict))}")
