"""Re-parameterizable MobileNetV2 (KDrefine's ``repmobilenetv2``: expansion 6, width 0.5).

MobileNetV2 (Sandler et al., CVPR 2018) as in the CRD benchmark, with every conv+BN built by
:func:`models.rep_blocks.make_conv_bn`: the 3x3 stem and the 3x3 depthwise convs become
re-parameterizable blocks (AMBB by default), the 1x1 convs a :class:`~models.rep_blocks.ConvBN`
-- so after conversion every conv, 1x1 ones included, carries a bias and no BN is left.

Departures from KDrefine's code: no global switches; the constructor takes ``num_classes`` (the
original ``repmobilenetv2()`` takes none and always has 100 outputs); no ``print``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_common import init_conv_bn_, init_linear_
from .registry import register_model
from .rep_blocks import DEFAULT_BLOCKTYPE, ConvBNFactory, block_factory

__all__ = ["RepMobileNetV2", "RepInvertedResidual", "repmobilenetv2"]


class RepInvertedResidual(nn.Module):
    """Inverted residual: 1x1 expand -> ReLU -> 3x3 depthwise (rep) -> ReLU -> 1x1 project."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 conv_bn: ConvBNFactory) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            conv_bn(inp, hidden, 1, stride=1, padding=0),  # pw
            nn.ReLU(inplace=True),
            conv_bn(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),  # dw
            nn.ReLU(inplace=True),
            conv_bn(hidden, oup, 1, stride=1, padding=0),  # pw-linear
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class RepMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs with rep blocks; ``T`` expansion, ``width_mult`` width."""

    def __init__(self, T: int, feature_dim: int, input_size: int = 32, width_mult: float = 1.0,
                 remove_avg: bool = False, blocktype: str = DEFAULT_BLOCKTYPE,
                 deploy: bool = False, fused: bool | str = "auto") -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        conv_bn = block_factory(blocktype, deploy, fused)
        self.remove_avg = remove_avg
        self.interverted_residual_setting = [
            # t, c, n, s
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = nn.Sequential(conv_bn(3, input_channel, 3, stride=2, padding=1),
                                   nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([])
        for t, c, n, s in self.interverted_residual_setting:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(RepInvertedResidual(input_channel, output_channel, stride, t,
                                                  conv_bn))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))

        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(conv_bn(input_channel, self.last_channel, 1, stride=1,
                                           padding=0),
                                   nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
        self.avgpool = nn.AvgPool2d(input_size // (32 // 2), ceil_mode=True)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """As the original: N(0, sqrt(2/(k*k*out))) convs, BN 1/0, linear N(0, 0.01), biases 0."""
        init_conv_bn_(self)
        init_linear_(self, weight_std=0.01)

    def get_bn_before_relu(self) -> list[nn.Module]:
        """The pw-linear conv+BN block ending stages 1, 2, 4 and 6 (the plain model's BN)."""
        return [self.blocks[1][-1].conv[-1], self.blocks[2][-1].conv[-1],
                self.blocks[4][-1].conv[-1], self.blocks[6][-1].conv[-1]]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.blocks])

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        out = self.conv1(x)
        f0 = out
        out = self.blocks[0](out)
        out = self.blocks[1](out)
        f1 = out
        out = self.blocks[2](out)
        f2 = out
        out = self.blocks[3](out)
        out = self.blocks[4](out)
        f3 = out
        out = self.blocks[5](out)
        out = self.blocks[6](out)
        f4 = out
        out = self.conv2(out)
        if not self.remove_avg:
            out = self.avgpool(out)
        out = out.view(out.size(0), -1)
        f5 = out
        out = self.classifier(out)
        if is_feat:  # MobileNetV2's features carry no ReLU at the stage ends: preact is the same
            return [f0, f1, f2, f3, f4, f5], out
        return out


@register_model("repmobilenetv2", rep=True, lr_group="low")
def repmobilenetv2(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE,
                   deploy: bool = False, fused: bool | str = "auto") -> RepMobileNetV2:
    """MobileNetV2 with expansion 6 and width 0.5 (the CRD benchmark's ``MobileNetV2``)."""
    return RepMobileNetV2(T=6, feature_dim=num_classes, width_mult=0.5, blocktype=blocktype,
                          deploy=deploy, fused=fused)
