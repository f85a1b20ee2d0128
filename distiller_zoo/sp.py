"""Similarity-preserving KD (Tung & Mori, ICCV 2019)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Similarity(nn.Module):
    """One SP loss per pair: squared Frobenius distance of the row-normalised batch Gram
    matrices divided by ``bsz^2``.

    The CRD code returns each value as a 1-element tensor; here each is a 0-dim tensor.
    """

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        bsz = f_s.shape[0]
        f_s = f_s.reshape(bsz, -1)
        f_t = f_t.reshape(bsz, -1)
        g_s = F.normalize(f_s @ f_s.t())
        g_t = F.normalize(f_t @ f_t.t())
        diff = g_t - g_s
        return (diff * diff).sum() / (bsz * bsz)
