"""Re-parameterizable Wide ResNets ``repwrn_16_2`` and ``repwrn_40_1`` (not in KDrefine's code).

The CRD benchmark's WRN (Zagoruyko & Komodakis, BMVC 2016; ``models/wrn.py``) with every 3x3 conv
a re-parameterizable block (AMBB by default), designed like KDrefine's rep students.

Where the BNs go. The WRN is pre-activation: a block computes
``bn1 -> relu -> conv1 -> bn2 -> relu -> conv2 (+ shortcut)``. Here:

* ``conv1`` + ``bn2`` form a conv+BN pair, so they become one rep block (``conv1``), whose
  branch BNs take the place of ``bn2``;
* ``conv2`` and the stem ``conv1`` have no BN of their own (what follows them, the next block's
  ``bn1``, is applied after the residual add, or -- in ``wrn_40_1``'s first block -- feeds only
  the residual path, so it cannot be folded into them). They become rep blocks too, each branch
  with its own BN, as ACNet (Ding et al., ICCV 2019) does when it puts ACBs into pre-activation
  networks: re-parameterization needs a BN per branch, otherwise parallel linear convs are just
  one conv;
* the pre-activation BNs (``bn1`` of each block and the final ``bn1``) stay plain BNs, in training
  and in deploy form, and so do the 1x1 ``convShortcut`` convs (no BN follows them).

Deploy form: the plain WRN with a bias on every 3x3 conv and without the ``bn2`` layers. Per
block the two conv biases (2 x out) replace ``bn2``'s weight and bias (2 x out), so the deploy
model has the plain WRN's parameter count plus the stem conv's bias (16): ``wrn_16_2`` 703,284
-> ``repwrn_16_2`` deploy 703,300; ``wrn_40_1`` 569,780 -> ``repwrn_40_1`` deploy 569,796.
The training-time model departs from the plain WRN by the BN that ends each residual branch
(``conv2``'s branch BNs) and after the stem.

Keys: ``conv1.<rep block>``, ``block{1,2,3}.layer.<i>.{bn1, conv1.<rep>, conv2.<rep>,
convShortcut}``, ``bn1``, ``fc`` -- the plain WRN's names, with ``bn2`` gone into ``conv1``.
``get_bn_before_relu`` and the ``preact`` features are the plain WRN's (the pre-activation BNs).
Initialization as the plain WRN: convs N(0, sqrt(2/(k*k*out))), BN 1/0, linear bias 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import init_conv_bn_, init_linear_
from .registry import register_model
from .rep_blocks import DEFAULT_BLOCKTYPE, ConvBNFactory, block_factory

__all__ = ["RepWideResNet", "RepWRNBlock", "repwrn_16_2", "repwrn_40_1"]


class RepWRNBlock(nn.Module):
    """Pre-activation basic block: bn1 -> relu -> rep(conv1, incl. bn2) -> relu -> rep(conv2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, conv_bn: ConvBNFactory,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv_bn(in_planes, out_planes, 3, stride=stride, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv_bn(out_planes, out_planes, 3, stride=1, padding=1)
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.conv1(act))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equalInOut else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` blocks (key ``layer.<i>`` as in the plain WRN)."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 conv_bn: ConvBNFactory, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            RepWRNBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                        conv_bn, drop_rate)
            for i in range(nb_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class RepWideResNet(nn.Module):
    """WRN-depth-k (depth 6n+4) with rep 3x3 convs; see the module docstring."""

    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1,
                 drop_rate: float = 0.0, blocktype: str = DEFAULT_BLOCKTYPE,
                 deploy: bool = False, fused: bool | str = "auto") -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        conv_bn = block_factory(blocktype, deploy, fused)
        self.conv1 = conv_bn(3, channels[0], 3, stride=1, padding=1)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, conv_bn, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, conv_bn, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, conv_bn, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]

        init_conv_bn_(self)  # as the plain WRN: linear weight default, bias 0
        init_linear_(self)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        out = self.conv1(x)
        f0 = out
        out = self.block1(out)
        f1 = out
        out = self.block2(out)
        f2 = out
        out = self.block3(out)
        f3 = out
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        out = out.view(-1, self.nChannels)
        f4 = out
        out = self.fc(out)
        if is_feat:
            if preact:
                f1 = self.block2.layer[0].bn1(f1)
                f2 = self.block3.layer[0].bn1(f2)
                f3 = self.bn1(f3)
            return [f0, f1, f2, f3, f4], out
        return out


@register_model("repwrn_16_2", rep=True)
def repwrn_16_2(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                fused: bool | str = "auto") -> RepWideResNet:
    return RepWideResNet(16, num_classes, 2, 0.0, blocktype, deploy, fused)


@register_model("repwrn_40_1", rep=True)
def repwrn_40_1(num_classes: int = 100, blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                fused: bool | str = "auto") -> RepWideResNet:
    return RepWideResNet(40, num_classes, 1, 0.0, blocktype, deploy, fused)
