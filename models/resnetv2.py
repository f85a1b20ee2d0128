"""ImageNet-style ResNet adapted to CIFAR (``ResNet50`` of the CRD benchmark).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1: four
stages of bottleneck blocks (3, 4, 6, 3) at widths 64/128/256/512 (x4 expansion). For 32x32
inputs the 7x7 stride-2 stem and the max-pool are replaced by one 3x3 stride-1 convolution, as
in the CRD code; the stages then run at 32, 16, 8 and 4 pixels.

The blocks are those of :mod:`models.resnet`; only the shortcut's checkpoint name differs.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from . import resnet
from .cifar_common import init_conv_bn_, run_stage, select_features
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNetV2", "ResNet50"]


class BasicBlock(resnet.BasicBlock):
    """:class:`models.resnet.BasicBlock` with its projection stored as ``shortcut``."""

    shortcut_name = "shortcut"


class Bottleneck(resnet.Bottleneck):
    """:class:`models.resnet.Bottleneck` with its projection stored as ``shortcut``."""

    shortcut_name = "shortcut"


class ResNetV2(nn.Module):
    """Four-stage ResNet for 32x32 inputs.

    Convolutions are He-normal (fan-out), BN starts at (1, 0), the classifier keeps PyTorch's
    default initialization. ``zero_init_residual`` (off by default, as in the original) sets the
    last BN scale of every residual branch to 0 (Goyal et al., 2017).
    """

    def __init__(self, block: type[resnet.ResidualBlock], num_blocks: tuple[int, int, int, int],
                 num_classes: int = 100, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        width = 64
        self.layer1, width = resnet.make_stage(block, width, 64, num_blocks[0], stride=1)
        self.layer2, width = resnet.make_stage(block, width, 128, num_blocks[1], stride=2)
        self.layer3, width = resnet.make_stage(block, width, 256, num_blocks[2], stride=2)
        self.layer4, width = resnet.make_stage(block, width, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(width, num_classes)

        init_conv_bn_(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, resnet.ResidualBlock):
                    nn.init.zeros_(m.last_bn.weight)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (trained in the AB/FT/FSP init stage)."""
        return nn.ModuleList([self.conv1, self.bn1, *self.stages])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BN of each stage: the one before the ReLU that yields ``feat[1:-1]``."""
        return [stage[-1].last_bn for stage in self.stages]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        """Logits, or ``([f0, f1, f2, f3, f4, pooled], logits)`` with ``is_feat``.

        ``f0`` is the stem output after ReLU; with ``preact`` the stage features are taken
        before their last ReLU.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        feats, preact_feats = [out], [out]
        for stage in self.stages:
            out, pre = run_stage(stage, out)
            feats.append(out)
            preact_feats.append(pre)
        out = self.avgpool(out).flatten(1)
        feats.append(out)
        preact_feats.append(out)
        logits = self.linear(out)
        return select_features(is_feat, preact, feats, preact_feats, logits)


@register_model("ResNet50")
def ResNet50(num_classes: int = 100, **kwargs) -> ResNetV2:
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)
