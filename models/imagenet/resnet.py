"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The layout is torchvision's "ResNet v1.5" (stride on the 3x3 convolution of the bottleneck), and
the parameter names and shapes are torchvision's, so ``torchvision.models.resnet18(weights=...)``
state dicts load with ``strict=True`` — the usual source of ImageNet teacher weights.

On top of torchvision the networks expose the CRD/RepDistiller feature interface:
``forward(x, is_feat=True, preact=...)`` returns ``([f0, f1, f2, f3, f4, pooled], logits)``
where ``f0`` is the stem output (after ReLU, before max-pooling), ``f1..f4`` the outputs of the
four stages (their pre-ReLU sums with ``preact=True``) and ``pooled`` the 512/2048-d embedding.

The 3x3 convolution+BN pairs of the blocks can be built by a conv+BN factory (``conv_bn``, see
:func:`models.rep_blocks.block_factory`), which is how the re-parameterizable student
``represnet18`` (KDrefine) reuses this network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rep_blocks import ConvBNFactory
from .registry import register_imagenet_model


def _conv3x3_bn_pair(in_ch: int, out_ch: int, stride: int,
                     conv_bn: ConvBNFactory | None) -> tuple[nn.Module, nn.Module]:
    """A 3x3 conv and its BN: plain (torchvision's names), or one conv+BN block from the factory
    followed by an ``nn.Identity`` in the BN's place."""
    if conv_bn is None:
        return (nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_ch))
    return conv_bn(in_ch, out_ch, 3, stride=stride, padding=1), nn.Identity()


def _bn_or_block(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """The BN of a conv/BN pair, or the conv+BN block itself when the BN is an Identity: the
    block's output is the plain network's BN output."""
    return conv if isinstance(bn, nn.Identity) else bn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None,
                 conv_bn: ConvBNFactory | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3_bn_pair(inplanes, planes, stride, conv_bn)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv3x3_bn_pair(planes, planes, 1, conv_bn)
        self.downsample = downsample
        self.stride = stride

    def preact(self, x: Tensor) -> Tensor:
        """Residual sum before the final ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.preact(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None,
                 conv_bn: ConvBNFactory | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3_bn_pair(planes, planes, stride, conv_bn)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def preact(self, x: Tensor) -> Tensor:
        """Residual sum before the final ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.preact(x))


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool, linear.

    ``conv_bn`` (optional) builds every 3x3 conv+BN pair of the blocks; the stem (7x7) and the
    1x1 projection shortcuts stay plain convolutions.
    """

    def __init__(self, block: Block, layers: list[int], num_classes: int = 1000,
                 conv_bn: ConvBNFactory | None = None) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, conv_bn)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, conv_bn)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, conv_bn)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, conv_bn)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # torchvision's initialisation (He et al. 2015 for convolutions, unit BN).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int,
                    conv_bn: ConvBNFactory | None) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, conv_bn)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, conv_bn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def get_feat_modules(self) -> nn.ModuleList:
        """The feature extractor (everything but the classifier), as in RepDistiller."""
        return nn.ModuleList([self.conv1, self.bn1, *self.stages])

    def get_bn_before_relu(self) -> list[nn.Module]:
        """Last BN of the residual branch of each stage's last block (for AB / OFD margins);
        with conv+BN blocks, the block standing in for that BN."""
        return [stage[-1].bn3 if isinstance(stage[-1], Bottleneck)
                else _bn_or_block(stage[-1].conv2, stage[-1].bn2) for stage in self.stages]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        x = self.relu(self.bn1(self.conv1(x)))
        feats, pre_feats = [x], [x]
        x = self.maxpool(x)
        for stage in self.stages:
            for block in list(stage)[:-1]:
                x = block(x)
            pre = stage[-1].preact(x)
            x = F.relu(pre)
            feats.append(x)
            pre_feats.append(pre)
        pooled = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        return (pre_feats if preact else feats) + [pooled], logits


@register_imagenet_model()
def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (He 2016), torchvision-compatible parameters."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_imagenet_model()
def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34 (He 2016), torchvision-compatible parameters."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes)


@register_imagenet_model()
def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (He 2016; torchvision's v1.5 bottleneck), torchvision-compatible parameters."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)
