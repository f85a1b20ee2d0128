"""Registry of the ImageNet architectures: ``imagenet_model_dict[name](num_classes=1000, **kw)``.

A separate dictionary from :data:`models.model_dict`, because the CRD benchmark already uses
some ImageNet-sounding names for CIFAR networks (``ResNet50``, ``MobileNetV2``, ``resnet50``):
those keep their CIFAR meaning there, and the ImageNet networks live here.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from helper.errors import UserError

imagenet_model_dict: dict[str, Callable[..., nn.Module]] = {}
imagenet_rep_model_names: set[str] = set()


def register_imagenet_model(name: str | None = None,
                            rep: bool = False) -> Callable[[Callable], Callable]:
    """Decorator adding a constructor to :data:`imagenet_model_dict` (default key: its name).

    ``rep=True`` marks a re-parameterizable student that takes ``blocktype=``, ``deploy=`` and
    ``fused=`` keywords.
    """

    def decorator(fn: Callable) -> Callable:
        key = name or fn.__name__
        if key in imagenet_model_dict:
            raise ValueError(f"ImageNet model {key!r} registered twice")
        imagenet_model_dict[key] = fn
        if rep:
            imagenet_rep_model_names.add(key)
        return fn

    return decorator


def is_imagenet_rep_model(name: str) -> bool:
    """True when ``name`` is a re-parameterizable ImageNet student (has a deploy form)."""
    return name in imagenet_rep_model_names


def check_imagenet_model_name(name: str, flag: str = "--model") -> str:
    """Return ``name`` if registered, else raise a :class:`UserError` listing the known names."""
    if name not in imagenet_model_dict:
        known = ", ".join(sorted(imagenet_model_dict))
        raise UserError(f"unknown ImageNet model {name!r} given to {flag}; known ImageNet models: "
                        f"{known}")
    return name


def build_imagenet_model(name: str, num_classes: int = 1000, blocktype: str | None = None,
                         deploy: bool = False, **kw) -> nn.Module:
    """Build ``name``; block type and deploy flag only reach re-parameterizable students."""
    check_imagenet_model_name(name)
    if is_imagenet_rep_model(name):
        if blocktype is not None:
            kw["blocktype"] = blocktype
        kw["deploy"] = deploy
    return imagenet_model_dict[name](num_classes=num_classes, **kw)
