"""Variational information distillation (Ahn et al., CVPR 2019), the authors' code as used by CRD.

A 1x1-conv regressor predicts the teacher map's mean; a learned per-channel variance
(softplus of ``log_scale``, plus ``eps``) gives the Gaussian negative log-likelihood (without
the constant), averaged over all elements.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .pooling import match_spatial


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, padding=0, bias=False)


class VIDLoss(nn.Module):
    """VID loss for one (student, teacher) feature pair; it owns trainable parameters."""

    def __init__(self, num_input_channels: int, num_mid_channel: int, num_target_channels: int,
                 init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            _conv1x1(num_input_channels, num_mid_channel),
            nn.ReLU(),
            _conv1x1(num_mid_channel, num_mid_channel),
            nn.ReLU(),
            _conv1x1(num_mid_channel, num_target_channels),
        )
        init = math.log(math.exp(init_pred_var - eps) - 1.0)
        self.log_scale = nn.Parameter(init * torch.ones(num_target_channels))
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        input, target = match_spatial(input, target)
        pred_mean = self.regressor(input)
        pred_var = torch.log(1.0 + torch.exp(self.log_scale)) + self.eps
        pred_var = pred_var.view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return torch.mean(neg_log_prob)
