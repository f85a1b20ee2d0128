"""Activation-boundary distillation (Heo et al., AAAI 2019), the authors' code as used by CRD.

Uses pre-activation features; the alternative-L2 margin loss of each pair is weighted by
``2^(i - n + 1)``, divided by the batch size and scaled by ``3 / 1000`` (the CRD code's
constants).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ABLoss(nn.Module):
    """One weighted AB loss per (connected student, teacher) pre-activation pair."""

    def __init__(self, feat_num: int, margin: float = 1.0) -> None:
        super().__init__()
        self.w = [2 ** (i - feat_num + 1) for i in range(feat_num)]
        self.margin = margin

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        bsz = g_s[0].shape[0]
        losses = [w * self.criterion_alternative_l2(s, t) for w, s, t in zip(self.w, g_s, g_t)]
        return [loss / bsz / 1000 * 3 for loss in losses]

    def criterion_alternative_l2(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.margin
        below = ((source > -m) & (target <= 0)).float()
        above = ((source <= m) & (target > 0)).float()
        loss = (source + m) ** 2 * below + (source - m) ** 2 * above
        return torch.abs(loss).sum()
