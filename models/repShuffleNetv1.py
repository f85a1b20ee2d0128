"""Re-parameterizable ShuffleNetV1 (KDrefine's ``repshufflev1``; groups 3, widths 240-480-960).

ShuffleNet (Zhang et al., CVPR 2018) as in the CRD benchmark, with the 3x3 depthwise conv+BN of
every bottleneck a re-parameterizable block (AMBB by default). The grouped 1x1 convs keep their
own BNs (``conv1``/``bn1``, ``conv3``/``bn3``), in training and in deploy form, as in the original.

As in the original, no explicit initialization: every layer keeps PyTorch's default init.
Departure from KDrefine's code: no global switches.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import PreactBlock, channel_shuffle, run_stage, select_features
from .registry import register_model
from .rep_blocks import DEFAULT_BLOCKTYPE, ConvBNFactory, block_factory

__all__ = ["RepShuffleNet", "RepShuffleBottleneck", "repshufflev1"]


class ShuffleBlock(nn.Module):
    """Channel shuffle as a module (no parameters)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class RepShuffleBottleneck(PreactBlock):
    """1x1 group conv+BN -> ReLU -> shuffle -> 3x3 depthwise rep block -> ReLU -> 1x1 group
    conv+BN, plus the shortcut (avg-pool and concatenation when ``stride == 2``).

    Always returns a tensor; :meth:`forward_preact` also returns the value before the last ReLU.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int,
                 conv_bn: ConvBNFactory) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = conv_bn(mid_planes, mid_planes, 3, stride=stride, padding=1,
                             groups=mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.conv2(out))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(preact), preact


class RepShuffleNet(nn.Module):
    """ShuffleNetV1 for 32x32 inputs with rep depthwise convs."""

    def __init__(self, cfg: dict, num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE,
                 deploy: bool = False, fused: bool | str = "auto") -> None:
        super().__init__()
        out_planes, num_blocks, groups = cfg["out_planes"], cfg["num_blocks"], cfg["groups"]
        conv_bn = block_factory(blocktype, deploy, fused)
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(conv_bn, out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(conv_bn, out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(conv_bn, out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, conv_bn: ConvBNFactory, out_planes: int, num_blocks: int,
                    groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(RepShuffleBottleneck(self.in_planes, out_planes - cat_planes,
                                               stride=stride, groups=groups, conv_bn=conv_bn))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.Module]:
        """The last unit's ``bn3`` per stage (a plain BN in train and deploy form), as
        :meth:`models.ShuffleNetv1.ShuffleNet.get_bn_before_relu`."""
        return [stage[-1].bn3 for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        f0 = out
        f1, f1_pre = run_stage(self.layer1, out)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        f4 = F.avg_pool2d(f3, 4).flatten(1)
        logits = self.linear(f4)
        return select_features(is_feat, preact, [f0, f1, f2, f3, f4],
                               [f0, f1_pre, f2_pre, f3_pre, f4], logits)


@register_model("repshufflev1", rep=True, lr_group="low")
def repshufflev1(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                 fused: bool | str = "auto") -> RepShuffleNet:
    cfg = {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}
    return RepShuffleNet(cfg, num_classes, blocktype, deploy, fused)
