"""The ImageNet zoo under its original names: ``imagenet_model_dict[name](num_classes=1000)``.

A separate registry from :data:`models.model_dict`, because the CRD benchmark already uses
some ImageNet-sounding names for CIFAR networks (``ResNet50``, ``MobileNetV2``, ``resnet50``):
those keep their CIFAR meaning there, and the ImageNet networks live here. Both are
:class:`models.registry.ModelRegistry` objects; this module names the ImageNet one's parts.
"""
from __future__ import annotations

from torch import nn

from ..registry import IMAGENET_ZOO

imagenet_model_dict = IMAGENET_ZOO.models
imagenet_rep_model_names = IMAGENET_ZOO.rep_names
register_imagenet_model = IMAGENET_ZOO.register
is_imagenet_rep_model = IMAGENET_ZOO.is_rep


def check_imagenet_model_name(name: str, flag: str = "--model") -> str:
    """Return ``name`` if registered, else raise a :class:`UserError` listing the known names."""
    return IMAGENET_ZOO.check_name(name, flag)


def build_imagenet_model(name: str, num_classes: int = 1000, blocktype: str | None = None,
                         deploy: bool = False, **kw) -> nn.Module:
    """Build the ImageNet model ``name`` (:meth:`models.registry.ModelRegistry.build`)."""
    return IMAGENET_ZOO.build(name, num_classes, blocktype=blocktype, deploy=deploy, **kw)
