"""The fused-BN training kernels of :mod:`models.rep_blocks` and their ``vmap`` workarounds.

The fused training forward of a :class:`~models.rep_blocks.RepBlock` runs one conv over all
branches and then *one* batch-norm call over every branch's channels
(:func:`batch_norm_branches`); this is a departure from KDrefine's code (which runs one BN per
branch) that keeps its outputs, gradients and running statistics (tested in
``tests/test_reparam.py``). :func:`bn_fusion_mode` says when the branch BNs can be computed as
one. The running-statistics bookkeeping uses the multi-tensor ``torch._foreach_*`` kernels,
which have no batching rule under ``torch.func.vmap`` (stacked ``--trials`` students), hence
the per-tensor fallbacks of :func:`foreach_add_` and :func:`foreach_copy_`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..fusion import stack_branches, unstack_branches

__all__ = ["bn_fusion_mode", "batch_norm_branches", "under_vmap", "foreach_add_", "foreach_copy_"]


def bn_fusion_mode(bns: list[nn.BatchNorm2d]) -> str | None:
    """'train' / 'eval' when the branch BNs can be computed as one, else None.

    They must agree in mode, eps, momentum and tracking; in train mode with cumulative averaging
    (``momentum=None``) also in ``num_batches_tracked``; in eval mode they need running stats.
    """
    first = bns[0]
    for bn in bns[1:]:
        if (bn.training != first.training or bn.eps != first.eps or bn.momentum != first.momentum
                or bn.track_running_stats != first.track_running_stats
                or bn.affine != first.affine):
            return None
    if not first.affine:
        return None
    if first.training:
        if first.track_running_stats and first.momentum is None:
            counts = {int(bn.num_batches_tracked) for bn in bns}
            if len(counts) > 1:
                return None
        return "train"
    if first.running_mean is None:
        return None
    return "eval"


def batch_norm_branches(y: Tensor, bns: list[nn.BatchNorm2d], groups: int) -> Tensor:
    """Train-mode BN of the stacked branch output ``y`` (channels ``(g, branch, c)``).

    Same statistics, outputs, gradients and running-stat updates as each ``bns[b]`` applied to
    its own chunk (what ``nn.BatchNorm2d.forward`` does in train mode).
    """
    first = bns[0]
    weight = stack_branches([bn.weight for bn in bns], groups)
    bias = stack_branches([bn.bias for bn in bns], groups)
    if not first.track_running_stats:
        return F.batch_norm(y, None, None, weight, bias, True, 0.0, first.eps)
    foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    factor = first.momentum if first.momentum is not None else \
        1.0 / float(first.num_batches_tracked)
    running_mean = stack_branches([bn.running_mean for bn in bns], groups)
    running_var = stack_branches([bn.running_var for bn in bns], groups)
    out = F.batch_norm(y, running_mean, running_var, weight, bias, True, factor, first.eps)
    with torch.no_grad():
        means = unstack_branches(running_mean, len(bns), groups).unbind(0)
        variances = unstack_branches(running_var, len(bns), groups).unbind(0)
        foreach_copy_([bn.running_mean for bn in bns] + [bn.running_var for bn in bns],
                      list(means) + list(variances))
    return out


def under_vmap(tensor: Tensor) -> bool:
    """Whether ``tensor`` is batched by ``torch.func.vmap`` (stacked ``--trials`` students):
    the multi-tensor ``_foreach_*`` kernels have no batching rule there."""
    return torch._C._functorch.is_batchedtensor(tensor)


def foreach_add_(tensors: list[Tensor], value: int) -> None:
    """In-place ``t += value`` for each tensor (one multi-tensor kernel outside vmap)."""
    if under_vmap(tensors[0]):
        for t in tensors:
            t.add_(value)
    else:
        torch._foreach_add_(tensors, value)


def foreach_copy_(targets: list[Tensor], sources: list[Tensor]) -> None:
    """In-place ``t.copy_(s)`` pairwise (one multi-tensor kernel outside vmap)."""
    if under_vmap(targets[0]):
        for t, s in zip(targets, sources):
            t.copy_(s)
    else:
        torch._foreach_copy_(targets, sources)
