"""Factor transfer (Kim et al., "Paraphrasing Complex Network", NeurIPS 2018).

The factors are the channel mean of ``f^p1``, flattened and L2-normalised; the loss is the mean
``|.|^p2`` difference (mean absolute difference for ``p2 = 1``), as in the CRD code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pooling import match_spatial


class FactorTransfer(nn.Module):
    """FT loss between the translator's and the paraphraser's factors."""

    def __init__(self, p1: int = 2, p2: int = 1) -> None:
        super().__init__()
        self.p1 = p1
        self.p2 = p2

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return self.factor_loss(f_s, f_t)

    def factor_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_spatial(f_s, f_t)
        diff = self.factor(f_s) - self.factor(f_t)
        if self.p2 == 1:
            return diff.abs().mean()
        return diff.pow(self.p2).mean()

    def factor(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(self.p1).mean(1).reshape(f.size(0), -1))
