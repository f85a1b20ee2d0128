"""Neuron selectivity transfer (Huang & Wang, "Like What You Like", 2017): squared MMD with a
degree-2 polynomial kernel between the spatially normalised channel activations (full form,
teacher-teacher term detached, as in the CRD code)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pooling import match_spatial


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``k[n, i, j] = (b[n, i] . a[n, j])^2`` for ``(N, C, HW)`` inputs."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


class NSTLoss(nn.Module):
    """One NST loss per (student, teacher) feature pair."""

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_spatial(f_s, f_t)
        f_s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
        f_t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
        return (poly_kernel(f_t, f_t).mean().detach() + poly_kernel(f_s, f_s).mean()
                - 2 * poly_kernel(f_s, f_t).mean())
