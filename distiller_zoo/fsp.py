"""Flow of solution procedure (Yim et al., "A Gift from Knowledge Distillation", CVPR 2017).

FSP matrices of consecutive feature maps (the lower pooled to the upper's size when they
differ); the loss per matrix is the mean squared difference. Needs equal channel counts in
every paired student/teacher feature.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from helper.errors import UserError

from .pooling import match_spatial


def fsp_matrices(g: list[torch.Tensor]) -> list[torch.Tensor]:
    """``G[n, i, j] = mean_hw top[n, i, hw] * bot[n, j, hw]`` for consecutive maps."""
    out = []
    for bot, top in zip(g[:-1], g[1:]):
        bot, top = match_spatial(bot, top)
        bot = bot.flatten(2)
        top = top.flatten(2)
        out.append(torch.bmm(top, bot.transpose(1, 2)) / bot.shape[-1])
    return out


class FSP(nn.Module):
    """One FSP loss per consecutive pair of feature maps."""

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise UserError(f"FSP needs as many student as teacher features, got {len(s_shapes)} "
                            f"and {len(t_shapes)}; pick a student/teacher pair of the same family")
        s_c = [int(s[1]) for s in s_shapes]
        t_c = [int(t[1]) for t in t_shapes]
        if s_c != t_c:
            raise UserError(f"FSP needs equal channel counts in paired features, but the student "
                            f"has {s_c} and the teacher {t_c}; choose another method or pair")

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        s_fsp = fsp_matrices(g_s)
        t_fsp = fsp_matrices(g_t)
        return [(s - t).pow(2).mean() for s, t in zip(s_fsp, t_fsp)]
