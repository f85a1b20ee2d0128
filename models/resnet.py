"""CIFAR ResNets of the CRD benchmark: ``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2: a
3x3 stem and three stages of ``n`` blocks at 32, 16 and 8 pixels, ``depth = 6n + 2``, global
average pooling and one linear classifier. As in the CRD code (and unlike the paper's CIFAR
option A) a shortcut that changes shape is a 1x1 convolution + BN (option B), and the ``x4``
variants widen the stages to 64/128/256 channels after a 32-channel stem.

The residual blocks defined here are shared with :mod:`models.resnetv2`; the two original files
differ only in the attribute name of the projection shortcut (``downsample`` here, ``shortcut``
there), which a subclass sets through :attr:`ResidualBlock.shortcut_name`.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import (PreactBlock, init_conv_bn_, projection_shortcut, run_stage,
                           select_features)
from .registry import register_model

__all__ = ["ResidualBlock", "BasicBlock", "Bottleneck", "make_stage", "ResNet",
           "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
           "resnet8x4", "resnet32x4"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ResidualBlock(PreactBlock):
    """``relu(residual(x) + shortcut(x))``; the sum before the ReLU is the pre-activation.

    The shortcut is the identity, or a 1x1 conv + BN when the stride or the width changes; it is
    registered under :attr:`shortcut_name` so that checkpoint keys match the original file.
    """

    expansion: int = 1
    shortcut_name: str = "downsample"

    def _add_shortcut(self, in_planes: int, out_planes: int, stride: int) -> None:
        if stride != 1 or in_planes != out_planes:
            self.add_module(self.shortcut_name, projection_shortcut(in_planes, out_planes, stride))

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose output (plus the shortcut) enters the block's final ReLU."""
        raise NotImplementedError

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        projection = self._modules.get(self.shortcut_name)
        shortcut = x if projection is None else projection(x)
        preact = self.residual(x) + shortcut
        return F.relu(preact), preact


class BasicBlock(ResidualBlock):
    """Two 3x3 conv-BN layers with a ReLU between them (He et al., 2016, Fig. 2)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._add_shortcut(in_planes, planes * self.expansion, stride)

    def residual(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4 (He et al., 2016, Fig. 5)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self._add_shortcut(in_planes, planes * self.expansion, stride)

    def residual(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


def make_stage(block: type[ResidualBlock], in_planes: int, planes: int, num_blocks: int,
               stride: int) -> tuple[nn.Sequential, int]:
    """``num_blocks`` blocks, the first one carrying ``stride``; returns the stage and its width."""
    layers = []
    for i in range(num_blocks):
        layers.append(block(in_planes, planes, stride if i == 0 else 1))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes


class ResNet(nn.Module):
    """CIFAR ResNet with three stages; ``num_filters`` = (stem, stage1, stage2, stage3) widths.

    ``block_name`` is ``'basicblock'`` (``depth = 6n + 2``) or ``'bottleneck'``
    (``depth = 9n + 2``). Convolutions are He-normal (fan-out), BN starts at (1, 0) and the
    classifier keeps PyTorch's default initialization, as in the original.
    """

    def __init__(self, depth: int, num_filters: Sequence[int], block_name: str = "basicblock",
                 num_classes: int = 100) -> None:
        super().__init__()
        kind = block_name.lower()
        if kind == "basicblock" and (depth - 2) % 6 == 0:
            block, n = BasicBlock, (depth - 2) // 6
        elif kind == "bottleneck" and (depth - 2) % 9 == 0:
            block, n = Bottleneck, (depth - 2) // 9
        else:
            raise ValueError(f"unsupported ResNet depth/block {depth}/{block_name!r}: basicblock "
                             "needs depth 6n+2, bottleneck depth 9n+2")

        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        width = num_filters[0]
        self.layer1, width = make_stage(block, width, num_filters[1], n, stride=1)
        self.layer2, width = make_stage(block, width, num_filters[2], n, stride=2)
        self.layer3, width = make_stage(block, width, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(width, num_classes)
        init_conv_bn_(self)

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (trained in the AB/FT/FSP init stage)."""
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2,
                              self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BN of each stage: the one before the ReLU that yields ``feat[1:-1]``."""
        return [stage[-1].last_bn for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        """Logits, or ``([f0, f1, f2, f3, pooled], logits)`` with ``is_feat``.

        ``f0`` is the stem output after ReLU; with ``preact`` the stage features are taken
        before their last ReLU.
        """
        x = self.relu(self.bn1(self.conv1(x)))
        f0 = x
        x, f1_pre = run_stage(self.layer1, x)
        f1 = x
        x, f2_pre = run_stage(self.layer2, x)
        f2 = x
        x, f3_pre = run_stage(self.layer3, x)
        f3 = x
        x = self.avgpool(x).flatten(1)
        f4 = x
        logits = self.fc(x)
        return select_features(is_feat, preact, [f0, f1, f2, f3, f4],
                               [f0, f1_pre, f2_pre, f3_pre, f4], logits)


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8", low_init_lr=True)
def resnet8(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(8, _THIN, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet14", low_init_lr=True)
def resnet14(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(14, _THIN, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet20", low_init_lr=True)
def resnet20(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(20, _THIN, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet32", low_init_lr=True)
def resnet32(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(32, _THIN, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet44", low_init_lr=True)
def resnet44(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(44, _THIN, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet56", low_init_lr=True)
def resnet56(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(56, _THIN, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet110", low_init_lr=True)
def resnet110(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(110, _THIN, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet8x4", low_init_lr=True)
def resnet8x4(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(8, _WIDE, "basicblock", num_classes=num_classes, **kwargs)


@register_model("resnet32x4", low_init_lr=True)
def resnet32x4(num_classes: int = 100, **kwargs) -> ResNet:
    return ResNet(32, _WIDE, "basicblock", num_classes=num_classes, **kwargs)
