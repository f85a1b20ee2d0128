"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), the authors' cosine-kernel
form: KL divergence between the row-normalised cosine-similarity distributions."""
from __future__ import annotations

import torch
import torch.nn as nn


def _cosine_probs(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / torch.sum(sim, dim=1, keepdim=True)


class PKT(nn.Module):
    """``mean(P_t * log((P_t + eps) / (P_s + eps)))`` with ``eps = 1e-7``."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return self.cosine_similarity_loss(f_s, f_t)

    @staticmethod
    def cosine_similarity_loss(output_net: torch.Tensor, target_net: torch.Tensor,
                               eps: float = 1e-7) -> torch.Tensor:
        p_s = _cosine_probs(output_net, eps)
        p_t = _cosine_probs(target_net, eps)
        return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))
