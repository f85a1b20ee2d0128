"""ShuffleNetV2 of the CRD benchmark (``ShuffleV2``: 1x width, 116/232/464 then 1024 channels).

Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018: each unit splits its channels in two, transforms one half
(1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU), concatenates and shuffles; a downsampling unit
transforms two copies of the whole input with stride 2. As in the CRD code the ImageNet stem
(3x3 stride-2 conv + max-pool) is a 1x1 convolution to 24 channels at full 32x32 resolution.

The pre-activation feature of a stage is that of its last unit: the untouched half concatenated
with the transformed half before its ReLU, taken before the channel shuffle (as the original).

No explicit initialization: every layer keeps PyTorch's default, as in the original.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import PreactBlock, channel_shuffle, run_stage, select_features
from .registry import register_model

__all__ = ["BasicBlock", "DownBlock", "ShuffleNetV2", "CONFIGS", "ShuffleV2"]

# net size -> (stage widths and last conv width, units per stage)
CONFIGS: dict[float, dict[str, tuple[int, ...]]] = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class BasicBlock(PreactBlock):
    """Stride-1 unit (Ma et al., 2018, Fig. 3c): split, transform one half, concat, shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1,
                               groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.size(1) * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
        return out, torch.cat([x1, pre], 1)


class DownBlock(nn.Module):
    """Stride-2 unit (Ma et al., 2018, Fig. 3d): two branches on the full input, concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        # left branch: depthwise 3x3 stride 2, then 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        # right branch: 1x1, depthwise 3x3 stride 2, 1x1
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, mid_channels, kernel_size=3, stride=2, padding=1,
                               groups=mid_channels, bias=False)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)

    def forward(self, x: Tensor) -> Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 32x32 inputs; ``net_size`` picks a row of :data:`CONFIGS`."""

    def __init__(self, net_size: float = 1, num_classes: int = 100) -> None:
        super().__init__()
        out_channels = CONFIGS[net_size]["out_channels"]
        num_blocks = CONFIGS[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1,
                               padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (trained in the AB/FT/FSP init stage)."""
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Not defined for ShuffleNetV2 (as in the original): half of a stage's pre-activation
        feature is the untouched split, which no BN precedes, so no BN describes the whole."""
        raise NotImplementedError('ShuffleNetV2 currently is not supported for "Overhaul" teacher')

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        """Logits, or ``([f0, f1, f2, f3, pooled], logits)`` with ``is_feat``.

        ``f0`` is the stem after ReLU; ``f1..f3`` are the stage outputs (or, with ``preact``,
        the last unit's unshuffled pre-activation); the pooled feature follows the last
        1x1 conv-BN-ReLU.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        f0 = out
        out, f1_pre = run_stage(self.layer1, out)
        f1 = out
        out, f2_pre = run_stage(self.layer2, out)
        f2 = out
        out, f3_pre = run_stage(self.layer3, out)
        f3 = out
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 4).flatten(1)
        f4 = out
        logits = self.linear(out)
        return select_features(is_feat, preact, [f0, f1, f2, f3, f4],
                               [f0, f1_pre, f2_pre, f3_pre, f4], logits)


@register_model("ShuffleV2", lr_group="low")
def ShuffleV2(num_classes: int = 100, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(net_size=1, num_classes=num_classes, **kwargs)
