"""The model zoo: CIFAR models of the CRD benchmark and KDrefine's re-parameterizable students.

Importing this package registers every architecture in :data:`model_dict` (the CIFAR zoo) and
:data:`imagenet_model_dict` (the ImageNet zoo), both :class:`ModelRegistry` objects' mappings.
"""
from .registry import (CIFAR_ZOO, IMAGENET_ZOO, ModelFacts, ModelRegistry, build_model,
                       check_model_name, is_rep_model, model_dict, register_model, zoo_named)

# Importing the architecture modules fills the registry.
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, ShuffleNetv1, ShuffleNetv2  # noqa: E402,F401
from . import represnet, repvgg, repmobilenetv2, repShuffleNetv1, repwrn  # noqa: E402,F401
from .rep_blocks import BLOCK_TYPES, reparameterize_model, set_fused  # noqa: E402
from .imagenet import imagenet_model_dict  # noqa: E402
from .zoo import ModelZoo, known_model_names, zoo_of  # noqa: E402

__all__ = ["model_dict", "imagenet_model_dict", "register_model", "build_model", "check_model_name",
           "is_rep_model", "reparameterize_model", "set_fused", "BLOCK_TYPES", "ModelZoo",
           "ModelRegistry", "ModelFacts", "CIFAR_ZOO", "IMAGENET_ZOO", "known_model_names",
           "zoo_of", "zoo_named"]
