"""Semantic calibration for cross-layer KD (Chen et al., "Cross-Layer Distillation with Semantic
Calibration", AAAI 2021), as in the KDrefine / early SemCKD code.

``SelfA`` builds per-layer batch similarity matrices, embeds them into student queries and
teacher keys, and softmax-normalises ``query . key / soft`` into per-sample student-layer x
teacher-layer attention; every student layer is projected (``Proj``) onto every teacher layer
(pooling the larger map). ``SemCKDLoss`` weights the per-sample MSE of each projection by that
attention. Departures: the loss is built on the inputs' device (the original hard-codes
``.cuda()``). Kept as in the original: ``SelfA`` is sized for a fixed batch (``feat_dim`` is the
batch size, so a smaller last batch must be dropped) and ``MLPEmbed`` holds an unused
``regressor`` branch (same parameters and initialisation order as the original).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .modules import Normalize


class SemCKDLoss(nn.Module):
    """``sum_{n,i,j} weight[n,i,j] * MSE(s_value[i][j][n], f_target[i][j][n]) / (bsz * n_stu)``."""

    def forward(self, s_value: list[list[torch.Tensor]], f_target: list[list[torch.Tensor]],
                weight: torch.Tensor) -> torch.Tensor:
        bsz, num_stu, num_tea = weight.shape
        ind_loss = torch.stack([
            torch.stack([F.mse_loss(s_value[i][j], f_target[i][j], reduction="none")
                         .reshape(bsz, -1).mean(-1) for j in range(num_tea)], dim=1)
            for i in range(num_stu)], dim=1)
        return (weight * ind_loss).sum() / (1.0 * bsz * num_stu)


class MLPEmbed(nn.Module):
    """Two-layer MLP with L2-normalised output (SemCKD's query/key embedding)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)
        self.l2norm = Normalize(2)
        # Never called, as in the original; kept so parameters and their init order match.
        # Frozen: it never gets a gradient (so data-parallel training need not look for it).
        self.regressor = nn.Sequential(nn.Linear(dim_in, 2 * dim_out), self.l2norm,
                                       nn.ReLU(inplace=True), nn.Linear(2 * dim_out, dim_out),
                                       self.l2norm).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return self.l2norm(self.linear2(x))


class Proj(nn.Module):
    """1x1 -> 3x3 -> 1x1 conv projection (mid width ``2 * target``) aligning channel counts."""

    def __init__(self, num_input_channels: int = 1024, num_target_channels: int = 128) -> None:
        super().__init__()
        mid = 2 * num_target_channels
        self.num_mid_channel = mid
        self.regressor = nn.Sequential(
            nn.Conv2d(num_input_channels, mid, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, num_target_channels, kernel_size=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(x)


class SelfA(nn.Module):
    """Cross-layer self-attention; ``feat_dim`` is the (fixed) batch size.

    ``forward(feat_s, feat_t)`` returns ``(proj_value_stu, value_tea, attention)``: nested
    ``[i][j]`` lists of projected student maps and (pooled) teacher maps, and the
    ``(bsz, n_stu, n_tea)`` attention weights.
    """

    def __init__(self, feat_dim: int, s_n: Sequence[int], t_n: Sequence[int], soft: float,
                 factor: int = 4) -> None:
        super().__init__()
        self.soft = soft
        self.s_len = len(s_n)
        self.t_len = len(t_n)
        self.feat_dim = feat_dim
        for i in range(self.s_len):
            setattr(self, f"query_{i}", MLPEmbed(feat_dim, feat_dim // factor))
        for i in range(self.t_len):
            setattr(self, f"key_{i}", MLPEmbed(feat_dim, feat_dim // factor))
        for i in range(self.s_len):
            for j in range(self.t_len):
                setattr(self, f"regressor{i}{j}", Proj(s_n[i], t_n[j]))

    def _similarity(self, f: torch.Tensor) -> torch.Tensor:
        flat = f.reshape(self.feat_dim, -1)
        return flat @ flat.t()

    def forward(self, feat_s: list[torch.Tensor], feat_t: list[torch.Tensor]):
        if feat_s[0].shape[0] != self.feat_dim:
            raise ValueError(f"SelfA was built for batches of {self.feat_dim} but got "
                             f"{feat_s[0].shape[0]} samples; drop the last incomplete batch")
        query = torch.stack([getattr(self, f"query_{i}")(self._similarity(feat_s[i]))
                             for i in range(self.s_len)], dim=1)
        key = torch.stack([getattr(self, f"key_{j}")(self._similarity(feat_t[j]))
                           for j in range(self.t_len)], dim=2)
        attention = F.softmax(torch.bmm(query, key) / self.soft, dim=-1)

        proj_value_stu: list[list[torch.Tensor]] = []
        value_tea: list[list[torch.Tensor]] = []
        for i in range(self.s_len):
            proj_value_stu.append([])
            value_tea.append([])
            for j in range(self.t_len):
                s_h, t_h = feat_s[i].shape[2], feat_t[j].shape[2]
                if s_h > t_h:
                    source = F.adaptive_avg_pool2d(feat_s[i], (t_h, t_h))
                    target = feat_t[j]
                else:
                    source = feat_s[i]
                    target = F.adaptive_avg_pool2d(feat_t[j], (s_h, s_h))
                proj_value_stu[i].append(getattr(self, f"regressor{i}{j}")(source))
                value_tea[i].append(target)
        return proj_value_stu, value_tea, attention
