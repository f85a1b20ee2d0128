"""Softmax regression representation learning (Yang et al., "Knowledge Distillation via
Softmax Regression Representation Learning", ICLR 2021), as KDrefine wires it.

``SRRL`` maps the student's pooled feature through a 1x1 conv + BN + ReLU to the teacher's
feature width and feeds it to the teacher's (frozen) classifier. ``SRRLLoss`` is the criterion
KDrefine's training loop computes but its ``train_student.py`` never builds (the ``srrl`` branch
leaves ``criterion_kd`` undefined): feature MSE plus MSE between the teacher classifier's output
on the translated student feature and the teacher's logits.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class SRRL(nn.Module):
    """The student-to-teacher feature translator; ``forward`` returns
    ``(translated feature, teacher classifier applied to it)``."""

    def __init__(self, *, s_n: int, t_n: int) -> None:
        super().__init__()
        self.transfer = nn.Sequential(
            nn.Conv2d(s_n, t_n, kernel_size=1, padding=0, stride=1, bias=False),
            nn.BatchNorm2d(t_n),
            nn.ReLU(inplace=True),
        )

    def forward(self, feat_s: torch.Tensor, cls_t: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.transfer(feat_s.unsqueeze(-1).unsqueeze(-1))
        trans_feat_s = x.reshape(x.size(0), -1)
        return trans_feat_s, cls_t(trans_feat_s)


class SRRLLoss(nn.Module):
    """``MSE(trans_feat_s, feat_t) + MSE(pred_feat_s, logit_t)``."""

    def forward(self, trans_feat_s: torch.Tensor, pred_feat_s: torch.Tensor, feat_t: torch.Tensor,
                logit_t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(trans_feat_s, feat_t) + F.mse_loss(pred_feat_s, logit_t)
