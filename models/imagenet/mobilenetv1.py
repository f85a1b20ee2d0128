"""ImageNet MobileNet (v1) (Howard et al., "MobileNets: Efficient Convolutional Neural Networks
for Mobile Vision Applications", 2017, Table 1), the usual ImageNet student of the KD literature
(ResNet-50 -> MobileNet in CRD follow-ups, OFD, ReviewKD, DKD).

Parameter names follow the PyTorch port those repositories share (``model.<i>.<j>``,
``fc``): ``model`` is a standard 3x3 conv followed by 13 depthwise-separable blocks and the
pooling. Departure from that port: the final pooling is adaptive instead of a fixed 7x7 average
pool, so smaller inputs also work (identical at 224x224; no parameters change).

Feature interface (CRD/RepDistiller): ``forward(x, is_feat=True, preact=...)`` returns
``([f0, f1, f2, f3, f4, pooled], logits)``: the stem output and the ends of the 128-, 256-, 512-
and 1024-channel stages (strides 4, 8, 16, 32; pre-ReLU with ``preact=True``), and the 1024-d
embedding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_imagenet_model

# (out_channels, stride) of the 13 depthwise-separable blocks (Howard 2017, Table 1).
DW_SETTING: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
# Indices in ``model`` of the blocks ending a stage (the feature points).
FEATURE_BLOCKS: tuple[int, ...] = (3, 5, 11, 13)


class ConvBNReLU(nn.Sequential):
    """Standard 3x3 convolution -> BN -> ReLU (the first layer)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv -> BN -> ReLU -> 1x1 pointwise conv -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def preact(self, x: Tensor) -> Tensor:
        """Output before the last ReLU."""
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


class MobileNetV1(nn.Module):
    """MobileNet v1, width multiplier 1, for 224x224 inputs (any size works)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU(3, 32, 2)]
        in_ch = 32
        for out_ch, stride in DW_SETTING:
            layers.append(DepthwiseSeparable(in_ch, out_ch, stride))
            in_ch = out_ch
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_feat_modules(self) -> nn.ModuleList:
        """The feature extractor (everything but the classifier), as in RepDistiller."""
        return nn.ModuleList([self.model])

    def get_bn_before_relu(self) -> list[nn.Module]:
        """Pointwise BN of each stage's last block."""
        return [self.model[i][-2] for i in FEATURE_BLOCKS]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        x = self.model[0](x)
        feats, pre_feats = [x], [x]
        for i in range(1, len(DW_SETTING) + 1):
            if i in FEATURE_BLOCKS:
                pre = self.model[i].preact(x)
                x = F.relu(pre)
                feats.append(x)
                pre_feats.append(pre)
            else:
                x = self.model[i](x)
        pooled = torch.flatten(self.model[-1](x), 1)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        return (pre_feats if preact else feats) + [pooled], logits


@register_imagenet_model()
def mobilenet_v1(num_classes: int = 1000) -> MobileNetV1:
    """MobileNet v1 (Howard 2017), ImageNet student of the KD literature."""
    return MobileNetV1(num_classes=num_classes)
