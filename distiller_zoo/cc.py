"""Correlation congruence (Peng et al., ICCV 2019), in the form the authors gave the CRD code:
the batch mean of the product of consecutive samples' absolute embedding differences."""
from __future__ import annotations

import torch
import torch.nn as nn


class Correlation(nn.Module):
    """``mean_i sum_d |f_s - f_t|[i, d] * |f_s - f_t|[i+1, d]``."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        delta = torch.abs(f_s - f_t)
        return torch.mean((delta[:-1] * delta[1:]).sum(1))
