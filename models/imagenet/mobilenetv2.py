"""ImageNet MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018).

Parameter names and shapes follow torchvision's ``mobilenet_v2`` (``features.*``,
``classifier.1.*``), so its ImageNet weights load with ``strict=True``.

Feature interface (CRD/RepDistiller): ``forward(x, is_feat=True)`` returns
``([f0, f1, f2, f3, f4, pooled], logits)``: the stem output, the ends of the 24-, 32-, 96- and
320-channel stages (strides 4, 8, 16, 32) and the 1280-d pooled embedding. The bottlenecks are
linear (no ReLU after the residual sum), so ``preact=True`` returns the same tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_imagenet_model

# t (expansion), c (channels), n (repeats), s (stride of the first repeat) — Sandler 2018 Table 2.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Stages whose last block gives a distillation feature (the 24/32/96/320-channel ones).
FEATURE_STAGES: tuple[int, ...] = (1, 2, 4, 6)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never going down by more than 10%."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU6; indices 0/1/2 as torchvision's ``Conv2dNormActivation``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t=1), 3x3 depthwise, linear 1x1 projection, residual if shapes
    allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 224x224 inputs (any size works: the pooling is adaptive)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        self.feature_indices: list[int] = []
        for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
            if stage in FEATURE_STAGES:
                self.feature_indices.append(len(features) - 1)
        features.append(ConvBNReLU6(in_ch, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(self.last_channel, num_classes))

        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_feat_modules(self) -> nn.ModuleList:
        """The feature extractor (everything but the classifier), as in RepDistiller."""
        return nn.ModuleList([self.features])

    def get_bn_before_relu(self) -> list[nn.Module]:
        """Last BN of each feature stage's last block."""
        return [self.features[i].conv[-1] for i in self.feature_indices]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        x = self.features[0](x)
        feats = [x]
        for i in range(1, len(self.features) - 1):
            x = self.features[i](x)
            if i in self.feature_indices:
                feats.append(x)
        x = self.features[-1](x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        logits = self.classifier(pooled)
        if not is_feat:
            return logits
        return feats + [pooled], logits


@register_imagenet_model()
def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNetV2 (Sandler 2018), torchvision-compatible parameters."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult)
