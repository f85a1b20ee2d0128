"""Overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul
of Feature Distillation", ICCV 2019).

The student's pre-ReLU feature of each stage goes through a connector (1x1 conv + BN)
to the teacher's channels and is matched to the teacher's pre-ReLU feature (average-pooled to
the student's size) with the partial L2 distance against the teacher transformed by
the margin ReLU ``max(t, m)``: positions where the student is already below a non-positive
target cost nothing. The per-channel margin ``m`` is the expectation of the negative
pre-ReLU responses, ``E[x | x < 0]`` for ``x ~ N(beta, gamma^2)`` read off the teacher's BN
before the ReLU (``-3 |gamma|`` where ``P(x < 0) <= 0.001``). Stage ``i`` of ``n`` is weighted
``1 / 2^(n - 1 - i)``; the sum over positions is divided by the batch size.

Follows the authors' code (clovaai/overhaul-distillation ``distiller.py`` and its copy in
megvii-research/mdistiller ``distillers/OFD.py``). Departure: when the teacher has more stages
than the student the stages are aligned from the deepest, as both codes align features and
connectors; mdistiller pairs those stages with the margins of the teacher's *first* BNs (its
margin list is not aligned), here each stage takes its own BN's margin.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: ``P(x < 0)`` below which the margin is ``-3 |gamma|`` instead of the conditional mean.
MIN_NEGATIVE_MASS = 0.001


def bn_margin(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-channel margin ``E[x | x < 0]`` of ``x ~ N(bias, weight^2)`` (Heo et al., 2019):
    ``m - s * phi(m / s) / Phi(-m / s)`` with ``s = |weight|``, ``m = bias``, or ``-3 s``
    where ``Phi(-m / s) <= 0.001``. Computed in float64, returned as float32."""
    s = weight.detach().double().abs()
    m = bias.detach().double()
    z = -m / s.clamp_min(torch.finfo(torch.float64).tiny)
    negative_mass = torch.special.ndtr(z)
    density = torch.exp(-(z ** 2) / 2) / math.sqrt(2 * math.pi)
    conditional = m - s * density / negative_mass.clamp_min(MIN_NEGATIVE_MASS)
    return torch.where(negative_mass > MIN_NEGATIVE_MASS, conditional, -3 * s).float()


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Partial L2 distance to the margin-ReLU'd target (Heo et al., 2019), summed over
    all positions and divided by the batch size: ``(s - max(t, m))^2`` where ``s > max(t, m)``
    or ``t > 0``, zero elsewhere."""
    target = torch.maximum(target, margin)
    keep = (source > target) | (target > 0)
    return ((source - target) ** 2 * keep).sum() / source.shape[0]


class ConvBNConnector(nn.Sequential):
    """``k x k`` conv (no bias, ``N(0, 2 / (k k C_t))``) + BN (1, 0) from the student's to the
    teacher's channels (Heo et al., 2019)."""

    def __init__(self, s_channels: int, t_channels: int, kernel_size: int = 1) -> None:
        conv = nn.Conv2d(s_channels, t_channels, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        bn = nn.BatchNorm2d(t_channels)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        super().__init__(conv, bn)


class OFDLoss(nn.Module):
    """Connectors, margins and the stage-weighted partial L2 of OFD.

    ``s_channels`` / ``t_channels``: the paired stages' channels, shallowest first; ``margins``:
    the teacher's per-channel margins of those stages (:func:`bn_margin`), kept as buffers.
    """

    def __init__(self, s_channels: Sequence[int], t_channels: Sequence[int], margins: Sequence[torch.Tensor],
                 kernel_size: int = 1) -> None:
        super().__init__()
        if not len(s_channels) == len(t_channels) == len(margins):
            raise ValueError(f"OFDLoss needs one student stage, teacher stage and margin per pair, got "
                             f"{len(s_channels)}, {len(t_channels)} and {len(margins)}")
        self.connectors = nn.ModuleList(ConvBNConnector(s, t, kernel_size) for s, t in zip(s_channels, t_channels))
        for i, (t, margin) in enumerate(zip(t_channels, margins)):
            if margin.numel() != t:
                raise ValueError(f"stage {i}: {margin.numel()} margins for {t} teacher channels")
            self.register_buffer(f"margin{i}", margin.detach().float().reshape(1, -1, 1, 1).clone())

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.connectors))]

    def forward(self, feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
        n = len(self.connectors)
        if len(feats_s) != n or len(feats_t) != n:
            raise ValueError(f"OFDLoss was built for {n} stages, got {len(feats_s)} and {len(feats_t)}")
        total = feats_s[0].new_zeros(())
        for i, (connector, f_s, f_t, margin) in enumerate(zip(self.connectors, feats_s, feats_t, self.margins())):
            source = connector(f_s)
            target = F.adaptive_avg_pool2d(f_t, tuple(source.shape[-2:])).detach()
            total = total + partial_l2(source, target, margin.to(source.dtype)) / 2 ** (n - 1 - i)
        return total
