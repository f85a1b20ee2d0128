"""The two model registries: the CIFAR zoo (:data:`models.model_dict`) and the ImageNet zoo
(:data:`models.imagenet_model_dict`). Which one a data set uses its spec says
(:class:`dataset.registry.DatasetSpec`'s ``model_zoo``, read by :func:`engine.config.dataset_zoo`).

Both are :class:`models.registry.ModelRegistry` objects (``ModelZoo`` is its older name); see
that module for why the zoos stay separate.
"""
from __future__ import annotations

from helper.errors import UserError

from .registry import CIFAR_ZOO, IMAGENET_ZOO, ZOOS, ModelFacts, ModelRegistry, zoo_named

#: The registry class under its former name.
ModelZoo = ModelRegistry

__all__ = ["ModelZoo", "ModelRegistry", "ModelFacts", "CIFAR_ZOO", "IMAGENET_ZOO", "zoo_named",
           "zoo_of", "known_model_names"]


def known_model_names() -> set[str]:
    """Names of every registered architecture, CIFAR and ImageNet (to parse run names)."""
    return {name for zoo in ZOOS.values() for name in zoo.models}


def zoo_of(name: str) -> ModelRegistry:
    """The registry holding ``name`` (CIFAR first: CIFAR names keep their CIFAR meaning), for
    tools that take an architecture without a data set (``convert.py``)."""
    for zoo in ZOOS.values():
        if name in zoo.models:
            return zoo
    raise UserError(f"unknown model {name!r}; known CIFAR models: "
                    f"{', '.join(sorted(CIFAR_ZOO.models))}; known ImageNet models: "
                    f"{', '.join(sorted(IMAGENET_ZOO.models))}")
