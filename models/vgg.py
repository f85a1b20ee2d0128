"""VGG networks of the CRD benchmark (``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``).

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, configurations A/B/D/E (plus the CRD code's 8-layer "S"), with batch normalization
after every convolution (the registered names are the ``*_bn`` models of the original) and the
three fully connected layers replaced by global average pooling and one linear classifier.

Departures from the paper kept from the CRD code: the convolutions keep their bias next to BN;
each of the five blocks ends with a BN (its ReLU is applied outside, so the pre-activation
feature is the block output); and for 32x32 inputs the fourth max-pool is skipped, so the last
two blocks both run at 4x4 (the pool is applied only for 64x64 inputs).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import init_conv_bn_, init_linear_, select_features
from .registry import register_model

__all__ = ["VGG", "CFGS", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# Output widths of the convolutions of each of the five blocks.
CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def make_block(widths: Sequence[int], in_channels: int, batch_norm: bool = True) -> nn.Sequential:
    """3x3 conv (+BN) layers joined by ReLUs; the block ends without its final ReLU."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        if i > 0:
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Five conv blocks separated by 2x2 max-pools, global average pooling, linear classifier.

    Initialization as in the original: convs He-normal (fan-out) with zero bias, BN (1, 0),
    classifier ``N(0, 0.01)`` with zero bias.
    """

    def __init__(self, cfg: Sequence[Sequence[int]], batch_norm: bool = True,
                 num_classes: int = 100) -> None:
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in cfg[:-1]]
        self.block0 = make_block(cfg[0], in_channels[0], batch_norm)
        self.block1 = make_block(cfg[1], in_channels[1], batch_norm)
        self.block2 = make_block(cfg[2], in_channels[2], batch_norm)
        self.block3 = make_block(cfg[3], in_channels[3], batch_norm)
        self.block4 = make_block(cfg[4], in_channels[4], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        init_conv_bn_(self)
        init_linear_(self, weight_std=0.01)

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (trained in the AB/FT/FSP init stage)."""
        return nn.ModuleList([self.block0, self.pool0, self.block1, self.pool1, self.block2,
                              self.pool2, self.block3, self.pool3, self.block4, self.pool4])

    def get_bn_before_relu(self) -> list[nn.Module]:
        """The last layer (a BN) of blocks 1-4, whose ReLU yields ``feat[1:-1]``."""
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        """Logits, or ``([f0, ..., f4, pooled], logits)`` with ``is_feat``.

        ``f0`` is block 0 after its ReLU; ``f1..f4`` are blocks 1-4 after (or, with ``preact``,
        before) their ReLU, taken before the following max-pool.
        """
        height = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        out = self.pool3(f3) if height == 64 else f3
        f4_pre = self.block4(out)
        f4 = F.relu(f4_pre)
        f5 = self.pool4(f4).flatten(1)
        logits = self.classifier(f5)
        return select_features(is_feat, preact, [f0, f1, f2, f3, f4, f5],
                               [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], logits)


def _vgg(cfg: str, num_classes: int, **kwargs) -> VGG:
    return VGG(CFGS[cfg], batch_norm=True, num_classes=num_classes, **kwargs)


@register_model("vgg8")
def vgg8(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-8 (configuration "S") with BN."""
    return _vgg("S", num_classes, **kwargs)


@register_model("vgg11")
def vgg11(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-11 (configuration "A") with BN."""
    return _vgg("A", num_classes, **kwargs)


@register_model("vgg13")
def vgg13(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-13 (configuration "B") with BN."""
    return _vgg("B", num_classes, **kwargs)


@register_model("vgg16")
def vgg16(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-16 (configuration "D") with BN."""
    return _vgg("D", num_classes, **kwargs)


@register_model("vgg19")
def vgg19(num_classes: int = 100, **kwargs) -> VGG:
    """VGG-19 (configuration "E") with BN."""
    return _vgg("E", num_classes, **kwargs)
