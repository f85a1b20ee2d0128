"""Self-supervised KD with SVD (Lee et al., "Self-supervised Knowledge Distillation Using
Singular Value Decomposition", ECCV 2018), as ported to PyTorch in the CRD code.

For each feature map the top right-singular vectors (k for the teacher, k + 3 for the student,
student vectors sign/permutation-aligned to the teacher's) are scaled by the teacher's
normalised singular values; RBF kernels between consecutive layers are matched with an L2 loss
(non-finite entries zeroed), summed and divided by the batch size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def truncated_svd(feat: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of each ``(H*H, C)`` matrix, first ``n`` components, each L2-normalised as in CRD."""
    size = feat.shape
    if len(size) != 4:
        raise ValueError(f"KDSVD expects 4-D feature maps, got shape {tuple(size)}")
    x = feat.reshape(-1, size[1], size[2] * size[2]).transpose(-2, -1)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    u, s, v = _finite(u), _finite(s), _finite(vh.transpose(-2, -1))
    if n > 0:
        u = F.normalize(u[:, :, :n], dim=1)
        s = F.normalize(s[:, :n], dim=1)
        v = F.normalize(v[:, :, :n], dim=1)
    return u, s, v


def align_rsv(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, for each column of ``b``, the column of ``a`` with the largest |cosine|, signed."""
    cosine = torch.matmul(a.transpose(-2, -1), b)
    max_abs_cosine, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
    mask = torch.where(torch.eq(max_abs_cosine, torch.abs(cosine)), torch.sign(cosine),
                       torch.zeros_like(cosine))
    return torch.matmul(a, mask), b


class KDSVD(nn.Module):
    """One loss per pair of consecutive layers (``len(g_s) - 1`` values)."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.k = k

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        v_sb = v_tb = None
        losses = []
        for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
            _, s_t, v_t = truncated_svd(f_t, self.k)
            _, _, v_s = truncated_svd(f_s, self.k + 3)
            v_s, v_t = align_rsv(v_s, v_t)
            s_t = s_t.unsqueeze(1)
            v_t = v_t * s_t
            v_s = v_s * s_t
            if i > 0:
                s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
                t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
                l2loss = _finite((s_rbf - t_rbf.detach()).pow(2))
                losses.append(l2loss.sum())
            v_tb, v_sb = v_t, v_s
        bsz = g_s[0].shape[0]
        return [loss / bsz for loss in losses]
