"""Relational KD (Park et al., CVPR 2019): distance-wise plus angle-wise smooth-L1 losses."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pairwise_distance(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix with a zero diagonal (squared distances clamped at ``eps``)."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    off_diagonal = 1.0 - torch.eye(len(e), dtype=d.dtype, device=d.device)
    return d * off_diagonal


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


class RKDLoss(nn.Module):
    """``w_d * distance loss + w_a * angle loss``; the teacher side carries no gradient."""

    def __init__(self, w_d: float = 25, w_a: float = 50) -> None:
        super().__init__()
        self.w_d = w_d
        self.w_a = w_a

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        student = f_s.reshape(f_s.shape[0], -1)
        teacher = f_t.reshape(f_t.shape[0], -1)
        with torch.no_grad():
            t_d = pairwise_distance(teacher)
            t_d = t_d / t_d[t_d > 0].mean()
            t_angle = _angles(teacher)
        d = pairwise_distance(student)
        d = d / d[d > 0].mean()
        loss_d = F.smooth_l1_loss(d, t_d)
        loss_a = F.smooth_l1_loss(_angles(student), t_angle)
        return self.w_d * loss_d + self.w_a * loss_a
