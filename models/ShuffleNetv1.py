"""ShuffleNet (v1) of the CRD benchmark (``ShuffleV1``: 3 groups, widths 240/480/960).

Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018: bottleneck units with grouped 1x1 convolutions, a channel shuffle
and a 3x3 depthwise convolution; a stride-2 unit concatenates a 3x3 average-pooled shortcut
instead of adding it. As in the CRD code, the ImageNet stem (3x3 stride-2 conv + max-pool) is a
1x1 convolution to 24 channels at full 32x32 resolution, the first unit's 1x1 conv is not
grouped (24 input channels), and every unit ends with a ReLU (also after the concatenation).

No explicit initialization: every layer keeps PyTorch's default, as in the original.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import PreactBlock, channel_shuffle, run_stage, select_features
from .registry import register_model

__all__ = ["Bottleneck", "ShuffleNet", "ShuffleV1"]


class Bottleneck(PreactBlock):
    """ShuffleNet unit: GConv1x1-BN-ReLU, shuffle, DWConv3x3-BN, GConv1x1-BN, join, ReLU.

    With stride 2 the shortcut is a 3x3 average pool and is concatenated (so ``out_planes`` here
    counts only the new channels); with stride 1 it is the identity and is added.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.first_groups,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(preact), preact


class ShuffleNet(nn.Module):
    """ShuffleNet for 32x32 inputs; ``out_planes`` per stage, ``num_blocks`` units per stage."""

    def __init__(self, out_planes: Sequence[int], num_blocks: Sequence[int], groups: int,
                 num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # The stride-2 first unit concatenates its input, so it adds only the difference.
            new_planes = out_planes - self.in_planes if i == 0 else out_planes
            layers.append(Bottleneck(self.in_planes, new_planes, stride=2 if i == 0 else 1,
                                     groups=groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (trained in the AB/FT/FSP init stage)."""
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last unit's ``bn3`` per stage: its output plus the identity shortcut is the
        pre-activation ``feat[1:-1]`` (every stage ends in a stride-1 unit). The original left
        this undefined (no OFD/AB teacher); it is the ResNets' rule (the BN before the add)."""
        return [stage[-1].bn3 for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        """Logits, or ``([f0, f1, f2, f3, pooled], logits)`` with ``is_feat``.

        ``f0`` is the stem after ReLU; with ``preact`` the stage features are taken before the
        last unit's final ReLU.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        f0 = out
        out, f1_pre = run_stage(self.layer1, out)
        f1 = out
        out, f2_pre = run_stage(self.layer2, out)
        f2 = out
        out, f3_pre = run_stage(self.layer3, out)
        f3 = out
        out = F.avg_pool2d(out, 4).flatten(1)
        f4 = out
        logits = self.linear(out)
        return select_features(is_feat, preact, [f0, f1, f2, f3, f4],
                               [f0, f1_pre, f2_pre, f3_pre, f4], logits)


@register_model("ShuffleV1", lr_group="low")
def ShuffleV1(num_classes: int = 100, **kwargs) -> ShuffleNet:
    return ShuffleNet(out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3,
                      num_classes=num_classes, **kwargs)
