"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

As in the CRD code, the attention map is the channel *mean* of ``|f|^p`` (the paper uses the
sum; the L2 normalisation makes the two equal) and the loss is the mean, not the paper's
p-norm, of the squared difference of the normalised maps.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pooling import match_spatial


class Attention(nn.Module):
    """One AT loss per (student, teacher) feature pair."""

    def __init__(self, p: int = 2) -> None:
        super().__init__()
        self.p = p

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.at_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def at_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_spatial(f_s, f_t)
        return (self.at(f_s) - self.at(f_t)).pow(2).mean()

    def at(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(self.p).mean(1).reshape(f.size(0), -1))
