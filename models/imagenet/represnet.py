"""``represnet18``: KDrefine's re-parameterizable ImageNet student.

ResNet-18 (He et al. 2016; :mod:`models.imagenet.resnet`) whose 3x3 conv+BN pairs in the basic
blocks are re-parameterizable blocks (:mod:`models.rep_blocks`; AMBB by default), as KDrefine
(Zheng et al., "Knowledge distillation with refined logits") does for its CIFAR ResNets. The 7x7
stem and the 1x1 projection shortcuts stay plain conv+BN (the stem keeps torchvision's ``conv1``
/ ``bn1`` names), as the 1x1 shortcuts do in the original CIFAR students.

After :func:`models.rep_blocks.reparameterize_model` every block is one 3x3 conv with a bias (key
``...conv1.tdb_reparam.*`` / ``...conv2.tdb_reparam.*``): the deploy network is a plain ResNet-18
up to the BN folding, computing the same function as the trained one in eval mode.
"""
from __future__ import annotations

from ..rep_blocks import DEFAULT_BLOCKTYPE, block_factory
from .registry import register_imagenet_model
from .resnet import BasicBlock, ResNet


@register_imagenet_model(rep=True)
def represnet18(num_classes: int = 1000, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                fused: bool | str = "auto") -> ResNet:
    """Re-parameterizable ResNet-18 (KDrefine); ``deploy=True`` builds the converted form."""
    conv_bn = block_factory(blocktype, deploy, fused)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, conv_bn=conv_bn)
