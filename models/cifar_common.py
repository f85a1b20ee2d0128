"""Small pieces shared by the plain CIFAR models of the CRD benchmark.

* :class:`PreactBlock` and :func:`run_stage`: a residual stage returns its output and the
  pre-activation of its last block, which is what ``forward(x, is_feat=True, preact=True)``
  reports (the original code let the last block of each stage return a tuple instead).
* :func:`init_conv_bn_` and :func:`init_linear_`: the weight-initialization rules of the
  original files, spelled once.
* :func:`channel_shuffle`: the channel shuffle of ShuffleNet (Zhang et al., 2018) and
  ShuffleNetV2 (Ma et al., 2018).
* :func:`select_features`: the ``is_feat`` / ``preact`` return convention.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["PreactBlock", "run_stage", "init_conv_bn_", "init_linear_", "channel_shuffle",
           "select_features", "projection_shortcut"]


class PreactBlock(nn.Module):
    """A block whose output is ``act(preact)``; :meth:`forward_preact` returns both.

    Subclasses implement :meth:`forward_preact`; :meth:`forward` keeps only the output, so the
    block can be used inside an ordinary :class:`torch.nn.Sequential`.
    """

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(output, pre-activation feature)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``stage``; return its output and the pre-activation of its last block."""
    for block in stage[:-1]:
        x = block(x)
    last = stage[-1]
    if not isinstance(last, PreactBlock):
        raise TypeError(f"last block of a stage must be a PreactBlock, got {type(last).__name__}")
    return last.forward_preact(x)


def select_features(is_feat: bool, preact: bool, feats: Sequence[Tensor],
                    preact_feats: Sequence[Tensor], logits: Tensor
                    ) -> Tensor | tuple[list[Tensor], Tensor]:
    """The CRD return convention: ``logits``, or ``(features, logits)`` when ``is_feat``."""
    if not is_feat:
        return logits
    return list(preact_feats if preact else feats), logits


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 convolution + BN on the shortcut path (option B of He et al., 2016)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


@torch.no_grad()
def init_conv_bn_(model: nn.Module) -> None:
    """Convs: He-normal with fan-out (``N(0, 2 / (k*k*out_channels))``), bias 0; BN: 1 and 0.

    This is the rule of every plain CRD model that initializes explicitly (ResNet, WRN, VGG,
    MobileNetV2): ``kaiming_normal_(mode='fan_out')`` and ``normal_(0, sqrt(2 / n))`` with
    ``n = k*k*out_channels`` draw from the same distribution, grouped convs included.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_linear_(model: nn.Module, weight_std: float | None = None) -> None:
    """Linear layers: bias 0; weight ``N(0, weight_std)`` or, if ``None``, PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if weight_std is not None:
                nn.init.normal_(m.weight, 0.0, weight_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: ``[N, g*c, H, W] -> [N, c*g, H, W]``."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
