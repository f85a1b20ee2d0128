"""Re-parameterizable CIFAR ResNets (KDrefine's ``represnet20/32/8x4``).

The CIFAR ResNet of the CRD benchmark (He et al., 2016; ``models/resnet.py``) with every 3x3
conv+BN replaced by a re-parameterizable block (:mod:`models.rep_blocks`, AMBB by default), as in
KDrefine. The 1x1 downsample shortcut stays a plain conv+BN, in training and in deploy form, as in
the original. After :func:`models.rep_blocks.reparameterize_model` the network has exactly the
convs of the plain ResNet, each with a bias instead of a BN.

Departures from KDrefine's code: block type / deploy / fused are constructor arguments (no global
switches); ``get_feat_modules`` and ``get_bn_before_relu`` work (the original refers to ``bn1``
/ ``bn2`` attributes the rep model does not have): the rep block that replaced a conv+BN stands
in for that BN, since its output is the same pre-ReLU value.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import PreactBlock, init_conv_bn_, run_stage, select_features
from .registry import register_model
from .rep_blocks import DEFAULT_BLOCKTYPE, ConvBNFactory, block_factory

__all__ = ["RepResNet", "RepBasicBlock", "represnet20", "represnet32", "represnet8x4"]


class RepBasicBlock(PreactBlock):
    """ResNet basic block: rep(3x3) -> ReLU -> rep(3x3) (+ shortcut) -> ReLU.

    Always returns a tensor; :meth:`forward_preact` also returns the sum before the last ReLU
    (the original's ``is_last`` blocks returned a tuple instead).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, conv_bn: ConvBNFactory, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_planes, planes, 3, stride=stride, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv_bn(planes, planes, 3, stride=1, padding=1)
        self.downsample = downsample
        self.stride = stride

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        residual = x if self.downsample is None else self.downsample(x)
        preact = out + residual
        return F.relu(preact), preact


class RepResNet(nn.Module):
    """CIFAR ResNet (depth 6n+2) built from rep blocks; see the module docstring."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100,
                 blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                 fused: bool | str = "auto") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (e.g. 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        conv_bn = block_factory(blocktype, deploy, fused)
        self.inplanes = num_filters[0]
        self.conv1 = conv_bn(3, num_filters[0], 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(conv_bn, num_filters[1], n)
        self.layer2 = self._make_layer(conv_bn, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(conv_bn, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * RepBasicBlock.expansion, num_classes)

        init_conv_bn_(self)  # as the original: linear layers keep PyTorch's default init

    def _make_layer(self, conv_bn: ConvBNFactory, planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * RepBasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * RepBasicBlock.expansion, kernel_size=1,
                          stride=stride, bias=False),
                nn.BatchNorm2d(planes * RepBasicBlock.expansion),
            )
        layers = [RepBasicBlock(self.inplanes, planes, conv_bn, stride, downsample)]
        self.inplanes = planes * RepBasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(RepBasicBlock(self.inplanes, planes, conv_bn))
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        """Modules producing the features (the plain ResNet's list; conv1 includes its BN)."""
        return nn.ModuleList([self.conv1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.Module]:
        """The last block's second rep block per stage: its output is the plain model's ``bn2``
        output (before the residual add and the ReLU)."""
        return [self.layer1[-1].conv2, self.layer2[-1].conv2, self.layer3[-1].conv2]

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        x = self.relu(self.conv1(x))  # 32x32
        f0 = x
        f1, f1_pre = run_stage(self.layer1, x)  # 32x32
        f2, f2_pre = run_stage(self.layer2, f1)  # 16x16
        f3, f3_pre = run_stage(self.layer3, f2)  # 8x8
        f4 = self.avgpool(f3).flatten(1)
        logits = self.fc(f4)
        return select_features(is_feat, preact, [f0, f1, f2, f3, f4],
                               [f0, f1_pre, f2_pre, f3_pre, f4], logits)


@register_model("represnet20", rep=True)
def represnet20(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                fused: bool | str = "auto") -> RepResNet:
    return RepResNet(20, [16, 16, 32, 64], num_classes, blocktype, deploy, fused)


@register_model("represnet32", rep=True)
def represnet32(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                fused: bool | str = "auto") -> RepResNet:
    return RepResNet(32, [16, 16, 32, 64], num_classes, blocktype, deploy, fused)


@register_model("represnet8x4", rep=True)
def represnet8x4(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                 fused: bool | str = "auto") -> RepResNet:
    return RepResNet(8, [32, 64, 128, 256], num_classes, blocktype, deploy, fused)


@register_model("represnet8", rep=True)
def represnet8(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
               fused: bool | str = "auto") -> RepResNet:
    """Not in the KDrefine table: the rep form of resnet8, small enough for CPU quickstarts."""
    return RepResNet(8, [16, 16, 32, 64], num_classes, blocktype, deploy, fused)


@register_model("represnet14", rep=True)
def represnet14(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                fused: bool | str = "auto") -> RepResNet:
    """Not in the KDrefine table: the rep form of resnet14."""
    return RepResNet(14, [16, 16, 32, 64], num_classes, blocktype, deploy, fused)
