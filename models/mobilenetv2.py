"""MobileNetV2 of the CRD benchmark (``MobileNetV2`` = the original ``mobile_half``).

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018: inverted residual blocks (1x1 expand, 3x3 depthwise, linear 1x1
project) with the paper's Table 2 settings, here at width 0.5 and expansion 6 as in the CRD code
(which takes it from "Knowledge Distillation via Route Constrained Optimization", Jin et al.,
ICCV 2019). Departures kept from that code: the stem has stride 2 while the second stage has
stride 1, so a 32x32 input ends at 2x2; the first stage also has an expansion conv (factor 1);
the last 1x1 conv keeps 1280 channels at width 0.5.

The architecture has no pre-activation features: ``preact=True`` returns the same features.
"""
from __future__ import annotations

from torch import Tensor, nn

from .cifar_common import init_conv_bn_, init_linear_, select_features
from .registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobile_half"]


def conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand + BN + ReLU, 3x3 depthwise + BN + ReLU, 1x1 project + BN (no ReLU).

    The input is added back when the block keeps stride 1 and width.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs with expansion ``expand_ratio`` and width ``width_mult``.

    Initialization as in the original: convs He-normal (fan-out), BN (1, 0), classifier
    ``N(0, 0.01)`` with zero bias.
    """

    def __init__(self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 input_size: int = 32, remove_avg: bool = False) -> None:
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.remove_avg = remove_avg
        t = expand_ratio
        # expansion t, output channels c, repeats n, first stride s
        self.interverted_residual_setting = [
            [1, 16, 1, 1],
            [t, 24, 2, 1],
            [t, 32, 3, 2],
            [t, 64, 4, 2],
            [t, 96, 3, 1],
            [t, 160, 3, 2],
            [t, 320, 1, 1],
        ]
        channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t_i, c, n, s in self.interverted_residual_setting:
            out_channels = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t_i))
                channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, self.last_channel, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        init_conv_bn_(self)
        init_linear_(self, weight_std=0.01)

    def get_bn_before_relu(self) -> list[nn.Module]:
        """The projection BN of the last block of stages 1, 2, 4 and 6 (``feat[1:-1]``)."""
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (trained in the AB/FT/FSP init stage)."""
        return nn.ModuleList([self.conv1, self.blocks])

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        """Logits, or ``([f0, ..., f4, pooled], logits)`` with ``is_feat``.

        ``f0`` is the stem output; ``f1..f4`` are the outputs of stages 1, 2, 4 and 6 (linear
        bottlenecks, no ReLU); ``preact`` changes nothing.
        """
        out = self.conv1(x)
        feats = [out]
        for i, stage in enumerate(self.blocks):
            out = stage(out)
            if i in (1, 2, 4, 6):
                feats.append(out)
        out = self.conv2(out)
        if not self.remove_avg:
            out = self.avgpool(out)
        out = out.flatten(1)
        feats.append(out)
        logits = self.classifier(out)
        return select_features(is_feat, preact, feats, feats, logits)


def mobilenetv2_T_w(T: int, W: float, num_classes: int = 100, **kwargs) -> MobileNetV2:
    """MobileNetV2 with expansion ``T`` and width ``W`` (the original's helper)."""
    return MobileNetV2(expand_ratio=T, width_mult=W, num_classes=num_classes, **kwargs)


@register_model("MobileNetV2", lr_group="low")
def mobile_half(num_classes: int = 100, **kwargs) -> MobileNetV2:
    """MobileNetV2 at width 0.5, expansion 6."""
    return mobilenetv2_T_w(6, 0.5, num_classes=num_classes, **kwargs)
