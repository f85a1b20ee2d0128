"""Knowledge review (Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021).

The student's features are read from the deepest level (the pooled vector, as a 1x1 map) to the
shallowest; at each level an attention-based fusion (:class:`ABF`) mixes
the level's own (1x1-projected) feature with the fused result of the deeper levels, and a 3x3
conv maps the mix to the teacher's channels at the teacher's resolution. Each output is matched
to the teacher's pre-activation feature of its level with the hierarchical context loss
(:func:`hcl_loss`): MSE of the maps plus MSE of their 4x4, 2x2 and 1x1 average pools
at halving weights, normalised by the sum of the weights.

What the authors' code (megvii-research/mdistiller ``distillers/ReviewKD.py``, as in
dvlab-research/ReviewKD) fixes in its configuration is read here off the features themselves:
the channels of each level (its ``IN_CHANNELS`` / ``OUT_CHANNELS``) and the spatial sizes
(``SHAPES`` / ``OUT_SHAPES``: each level's own size and the teacher's, which the fusion and the
output interpolate to). The fused width is ``min(max_mid_channels, C)`` for the student's
pooled width ``C``, as the authors' code computes it (it hard-codes 512 and leaves its
``MAX_MID_CHANNEL`` setting unread; here ``max_mid_channels`` is honoured, 512 by default).
Sizes are ``(H, W)`` pairs where the authors' code assumes square maps; on square maps both
interpolate alike.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Size = tuple[int, int]

#: The pooled sizes of the hierarchical context loss, coarsest last (Chen et al., 2021).
HCL_LEVELS = (4, 2, 1)


class ABF(nn.Module):
    """Attention-based fusion of one level.

    ``reduce`` (1x1 conv + BN) projects the student's feature to ``mid_channels``; with ``fuse``
    a 1x1 conv + sigmoid reads the projection and the deeper levels' fused map (upsampled to this
    level, nearest) and gives two per-pixel weights, one for each; the (weighted) map is
    resized to the teacher's size if it differs and ``output`` (3x3 conv + BN) maps it to the
    teacher's channels. Returns the output and the fused map handed to the next, shallower level.
    The two convs start Kaiming-uniform with ``a=1`` as in the authors' code.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                    nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: Size
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            if deeper is None:
                raise ValueError("a fusing ABF needs the deeper levels' fused map")
            deeper = F.interpolate(deeper, size=tuple(x.shape[-2:]), mode="nearest")
            weights = self.attention(torch.cat([x, deeper], dim=1))
            x = x * weights[:, :1] + deeper * weights[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.output(x), x


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """A pooled ``(N, C)`` vector as a ``(N, C, 1, 1)`` map; maps unchanged."""
    return feature[:, :, None, None] if feature.dim() == 2 else feature


def hcl_loss(f_s: Sequence[torch.Tensor], f_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss (Chen et al., 2021), summed over the pairs: per pair
    ``(MSE + sum_l w_l MSE(pool_l)) / (1 + sum_l w_l)`` over the pooled sizes ``l`` of
    :data:`HCL_LEVELS` smaller than the map's height, with ``w = 1/2, 1/4, 1/8``."""
    if len(f_s) != len(f_t):
        raise ValueError(f"hcl_loss pairs {len(f_s)} student maps with {len(f_t)} teacher maps")
    total = f_s[0].new_zeros(())
    for s, t in zip(f_s, f_t):
        loss = F.mse_loss(s, t)
        weight, norm = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= s.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            norm += weight
        total = total + loss / norm
    return total


class ReviewKDLoss(nn.Module):
    """The review path and the HCL loss, with the warm-up ``min(epoch / warmup, 1)``.

    ``in_channels`` / ``out_channels``: the student's / teacher's channels per level, shallowest
    first, the pooled vector last. :meth:`forward` takes the features in that order (pooled
    vectors as ``(N, C)``), runs the fusions from the deepest level up and returns
    ``min(epoch / warmup, 1) * hcl_loss(outputs, teacher features)``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], max_mid_channels: int = 512,
                 warmup: int = 20) -> None:
        super().__init__()
        if len(in_channels) != len(out_channels) or not in_channels:
            raise ValueError(f"ReviewKDLoss needs as many student levels ({len(in_channels)}) as "
                             f"teacher levels ({len(out_channels)}), at least one")
        mid = min(int(max_mid_channels), int(in_channels[-1]))
        deepest = len(in_channels) - 1
        # deepest level first: the order in which the review runs
        self.fusions = nn.ModuleList(ABF(int(in_channels[i]), mid, int(out_channels[i]), fuse=i < deepest)
                                     for i in range(deepest, -1, -1))
        self.warmup = int(warmup)

    def review(self, feats_s: Sequence[torch.Tensor], sizes_t: Sequence[Size]) -> list[torch.Tensor]:
        """The fused outputs, shallowest first, each at the teacher's size of its level."""
        outputs: list[torch.Tensor] = []
        fused = None
        for fusion, feature, size in zip(self.fusions, reversed(feats_s), reversed(sizes_t)):
            out, fused = fusion(as_map(feature), fused, size)
            outputs.insert(0, out)
        return outputs

    def forward(self, feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor], epoch: int) -> torch.Tensor:
        maps_t = [as_map(f) for f in feats_t]
        outputs = self.review(feats_s, [tuple(m.shape[-2:]) for m in maps_t])
        return min(epoch / self.warmup, 1.0) * hcl_loss(outputs, maps_t)
