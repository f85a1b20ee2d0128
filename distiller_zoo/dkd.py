"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

Follows the paper's own code (mdistiller ``DKD.py``): ``alpha * TCKD + beta * NCKD`` scaled by
the warm-up factor ``min(epoch / warmup, 1)``. The KDrefine repository's copy returns only the
NCKD term (its TCKD is computed and dropped); this implementation keeps both, as the paper does.
With ``logit_stand=True`` both logits are standardized first (Sun et al., CVPR 2024, their
``dkd_loss(..., logit_stand)``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kd import standardize_logits


def _binary_probs(probs: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Per sample ``[p_target, 1 - p_target]`` as the sums over the target / other classes."""
    p_gt = (probs * gt_mask).sum(dim=1, keepdim=True)
    p_other = (probs * ~gt_mask).sum(dim=1, keepdim=True)
    return torch.cat([p_gt, p_other], dim=1)


def tckd_nckd(logits_s: torch.Tensor, logits_t: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The two DKD terms: target-class KD (binary KL) and non-target-class KD.

    NCKD masks the target logit with ``-1000`` before the softmax, as the paper's code does.
    """
    bsz = target.shape[0]
    gt_mask = torch.zeros_like(logits_s).scatter_(1, target.reshape(-1, 1), 1).bool()
    b_s = _binary_probs(F.softmax(logits_s / temperature, dim=1), gt_mask)
    b_t = _binary_probs(F.softmax(logits_t / temperature, dim=1), gt_mask)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature ** 2 / bsz
    mask = 1000.0 * gt_mask
    p_t_other = F.softmax(logits_t / temperature - mask, dim=1)
    log_p_s_other = F.log_softmax(logits_s / temperature - mask, dim=1)
    nckd = F.kl_div(log_p_s_other, p_t_other, reduction="sum") * temperature ** 2 / bsz
    return tckd, nckd


class DKDLoss(nn.Module):
    """``min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)`` (Zhao et al., CVPR 2022)."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup: int = 20, logit_stand: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup = warmup
        self.logit_stand = logit_stand

    def forward(self, logits_s: torch.Tensor, logits_t: torch.Tensor, target: torch.Tensor,
                epoch: int) -> torch.Tensor:
        if self.logit_stand:
            logits_s, logits_t = standardize_logits(logits_s), standardize_logits(logits_t)
        tckd, nckd = tckd_nckd(logits_s, logits_t, target, self.temperature)
        return min(epoch / self.warmup, 1.0) * (self.alpha * tckd + self.beta * nckd)
