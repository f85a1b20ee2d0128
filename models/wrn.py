"""Wide ResNets of the CRD benchmark: ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016: pre-activation blocks
(BN-ReLU-conv, He et al., ECCV 2016) in three stages of width 16k, 32k, 64k at 32, 16 and 8
pixels, ``depth = 6n + 4``, then BN-ReLU, global average pooling and a linear classifier.
Dropout inside the blocks is available (``drop_rate``) but off, as in the CRD benchmark.

Because the blocks are pre-activation, a stage output has no ReLU of its own: its
"pre-activation" feature is the stage output passed through the BN that opens the next stage
(or the final BN), exactly as the original computes it.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_common import init_conv_bn_, init_linear_, select_features
from .registry import register_model

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1",
           "wrn_40_2"]


class BasicBlock(nn.Module):
    """Pre-activation block ``x + conv(relu(bn(conv(relu(bn(x))))))``.

    When the width or stride changes, the shortcut is a 1x1 convolution of the *activated*
    input, as in the WRN reference code.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1,
                               bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride,
                                          bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``nb_layers`` blocks, the first changing width and carrying the stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                       drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs.

    Initialization as in the original: convs He-normal (fan-out), BN (1, 0), classifier bias 0
    with PyTorch's default weight.
    """

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        self.nChannels = widths[3]
        init_conv_bn_(self)
        init_linear_(self)

    def get_feat_modules(self) -> nn.ModuleList:
        """The modules that produce the features (trained in the AB/FT/FSP init stage)."""
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BNs applied to ``feat[1:-1]``: those opening stages 2 and 3, and the final BN."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        """Logits, or ``([f0, f1, f2, f3, pooled], logits)`` with ``is_feat``.

        ``f0`` is the stem convolution's output (no BN/ReLU yet). With ``preact``, ``f1..f3`` are
        passed through :meth:`get_bn_before_relu`'s BNs; like the original, in training mode
        this calls those BNs a second time (their running statistics are updated again).
        """
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        out = self.relu(self.bn1(f3))
        out = F.avg_pool2d(out, 8).flatten(1)
        f4 = out
        logits = self.fc(out)
        feats = [f0, f1, f2, f3, f4]
        if not (is_feat and preact):
            return select_features(is_feat, False, feats, feats, logits)
        bn_f1, bn_f2, bn_f3 = self.get_bn_before_relu()
        return select_features(True, True, feats, [f0, bn_f1(f1), bn_f2(f2), bn_f3(f3), f4], logits)


@register_model("wrn_16_1", low_init_lr=True)
def wrn_16_1(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=16, widen_factor=1, num_classes=num_classes, **kwargs)


@register_model("wrn_16_2", low_init_lr=True)
def wrn_16_2(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=16, widen_factor=2, num_classes=num_classes, **kwargs)


@register_model("wrn_40_1", low_init_lr=True)
def wrn_40_1(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=40, widen_factor=1, num_classes=num_classes, **kwargs)


@register_model("wrn_40_2", low_init_lr=True)
def wrn_40_2(num_classes: int = 100, **kwargs) -> WideResNet:
    return WideResNet(depth=40, widen_factor=2, num_classes=num_classes, **kwargs)
