"""Logit distillation: Hinton's KD loss and logit standardization.

* Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
* Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024 (Z-score of the
  logits before the temperature softmax); KDrefine applies the same transform with a
  multiplier of 2.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

STANDARDIZE_EPS = 1e-7


def standardize_logits(z: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """``multiplier * (z - mean) / (std + 1e-7)`` over the classes (dim 1, unbiased std).

    With ``multiplier=1`` this is the Z-score pre-process of Sun et al. (CVPR 2024); KDrefine
    uses ``multiplier=2`` for both student and teacher logits.
    """
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True)
    return (z - mean) * multiplier / (std + STANDARDIZE_EPS)


class DistillKL(nn.Module):
    """KL divergence between temperature-softened distributions (Hinton et al., 2015).

    ``KL(softmax(y_t/T) || softmax(y_s/T)) * T^2``, summed over classes and averaged over the
    batch, exactly as the CRD code computes it.
    """

    def __init__(self, T: float) -> None:
        super().__init__()
        self.T = T

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        log_p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="sum") * (self.T ** 2) / y_s.shape[0]
