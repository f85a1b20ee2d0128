"""ImageNet architectures, in their own registry :data:`imagenet_model_dict`.

Teachers ``resnet18``/``resnet34``/``resnet50``/``mobilenet_v2`` are torchvision-compatible
(their pretrained state dicts load with ``strict=True``); students ``mobilenet_v1`` (Howard
2017) and the re-parameterizable ``represnet18`` (KDrefine). Every network has
``forward(x, is_feat=False, preact=False)``, ``get_feat_modules()`` and
``get_bn_before_relu()`` as the CIFAR models of :data:`models.model_dict`.
"""
from .registry import (build_imagenet_model, check_imagenet_model_name, imagenet_model_dict,
                       imagenet_rep_model_names, is_imagenet_rep_model, register_imagenet_model)

# Importing the architecture modules fills the registry.
from . import resnet, mobilenetv1, mobilenetv2, represnet  # noqa: E402,F401

__all__ = ["imagenet_model_dict", "imagenet_rep_model_names", "register_imagenet_model",
           "build_imagenet_model", "check_imagenet_model_name", "is_imagenet_rep_model"]
