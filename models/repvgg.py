"""Re-parameterizable VGG-8 (KDrefine's ``repvgg8``).

The CIFAR VGG of the CRD benchmark (Simonyan & Zisserman, 2015) with every 3x3 conv+BN a
re-parameterizable block (AMBB by default); converts into a plain VGG-8 whose convs carry biases
instead of BNs. Not to be confused with RepVGG the architecture: here ``repvgg8`` means "VGG-8
with rep blocks", and ``blocktype='RepVGG'`` picks the RepVGG *block*.

Departures from KDrefine's code: no global switches; inside a stage with several convs a ReLU
follows each conv but the last (the plain VGG's layout; the original puts none, which makes no
difference for VGG-8, whose stages have one conv each).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import init_conv_bn_, init_linear_
from .registry import register_model
from .rep_blocks import DEFAULT_BLOCKTYPE, ConvBNFactory, block_factory

__all__ = ["RepVGGNet", "repvgg8"]


class RepVGGNet(nn.Module):
    """VGG for 32x32 inputs: five stages of rep 3x3 conv blocks, max-pooling between them."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 100,
                 blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                 fused: bool | str = "auto") -> None:
        super().__init__()
        conv_bn = block_factory(blocktype, deploy, fused)
        self.block0 = self._make_layers(conv_bn, cfg[0], 3)
        self.block1 = self._make_layers(conv_bn, cfg[1], cfg[0][-1])
        self.block2 = self._make_layers(conv_bn, cfg[2], cfg[1][-1])
        self.block3 = self._make_layers(conv_bn, cfg[3], cfg[2][-1])
        self.block4 = self._make_layers(conv_bn, cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        self._initialize_weights()

    @staticmethod
    def _make_layers(conv_bn: ConvBNFactory, cfg: list[int], in_channels: int) -> nn.Sequential:
        layers = []
        for i, v in enumerate(cfg):
            last = i == len(cfg) - 1
            layers.append(conv_bn(in_channels, v, 3, stride=1, padding=1,
                                  nonlinear=None if last else nn.ReLU(inplace=True)))
            in_channels = v
        return nn.Sequential(*layers)

    def _initialize_weights(self) -> None:
        """As the original: N(0, sqrt(2/(k*k*out))) convs, BN 1/0, linear N(0, 0.01), biases 0."""
        init_conv_bn_(self)
        init_linear_(self, weight_std=0.01)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.block0, self.pool0, self.block1, self.pool1, self.block2,
                              self.pool2, self.block3, self.pool3, self.block4, self.pool4])

    def get_bn_before_relu(self) -> list[nn.Module]:
        """Each stage's last rep block (its output is the plain VGG's last BN output)."""
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        h = x.shape[2]
        x = F.relu(self.block0(x))
        f0 = x
        x = self.pool0(x)
        x = self.block1(x)
        f1_pre = x
        x = F.relu(x)
        f1 = x
        x = self.pool1(x)
        x = self.block2(x)
        f2_pre = x
        x = F.relu(x)
        f2 = x
        x = self.pool2(x)
        x = self.block3(x)
        f3_pre = x
        x = F.relu(x)
        f3 = x
        if h == 64:
            x = self.pool3(x)
        x = self.block4(x)
        f4_pre = x
        x = F.relu(x)
        f4 = x
        x = self.pool4(x)
        x = x.view(x.size(0), -1)
        f5 = x
        x = self.classifier(x)
        if is_feat:
            if preact:
                return [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], x
            return [f0, f1, f2, f3, f4, f5], x
        return x


@register_model("repvgg8", rep=True)
def repvgg8(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
            fused: bool | str = "auto") -> RepVGGNet:
    """VGG-8: one rep conv per stage, widths 64-128-256-512-512."""
    return RepVGGNet([[64], [128], [256], [512], [512]], num_classes, blocktype, deploy, fused)
