"""Fusion maths for structural re-parameterization, as small pure functions on tensors.

A conv followed by an inference-mode batch-norm is one conv with a bias; parallel convs whose
sliding windows coincide add up to one conv; a Kx1, 1xK or 1x1 kernel is a KxK kernel that is
zero off its centre row/column/pixel; an identity (a BN-only branch) is a KxK kernel with a
single one at its centre. These are the transforms I-VI of DBB (Ding et al., "Diverse Branch
Block", CVPR 2021) as far as the blocks here need them; ACNet (Ding et al., ICCV 2019), RepVGG
(Ding et al., CVPR 2021) and KDrefine's AMBB are all combinations of them.

The last two functions, :func:`stack_branches` and :func:`unstack_branches`, arrange per-branch
tensors so that several parallel (possibly grouped) convs run as one conv with more output
channels; they serve the fused training forward of :mod:`models.rep_blocks`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "fuse_conv_bn",
    "fuse_bn_module",
    "embed_center",
    "identity_kernel",
    "add_identity",
    "add_branches",
    "stack_branches",
    "unstack_branches",
]


def fuse_conv_bn(kernel: Tensor, running_mean: Tensor, running_var: Tensor, gamma: Tensor,
                 beta: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Fold an inference-mode BN into the conv before it (DBB transform I).

    ``BN(conv(x, K)) = conv(x, K * gamma/std) + (beta - mean * gamma/std)`` with
    ``std = sqrt(var + eps)``.
    ``kernel`` has its output channels first; returns ``(kernel, bias)``. Differentiable.
    """
    scale = gamma / torch.sqrt(running_var + eps)
    return kernel * scale.reshape(-1, *([1] * (kernel.dim() - 1))), beta - running_mean * scale


def fuse_bn_module(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """:func:`fuse_conv_bn` reading the running statistics and affine parameters of ``bn``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fuse a BatchNorm without running statistics "
                         "(track_running_stats=False)")
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    return fuse_conv_bn(kernel, bn.running_mean, bn.running_var, gamma, beta, bn.eps)


def embed_center(kernel: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Zero-pad a ``kh x kw`` kernel to ``size`` (KxK), keeping it centred (DBB transform VI).

    Covers Kx1 and 1xK (ACNet) and 1x1 (RepVGG) kernels. The result computes the same conv as the
    small kernel only when the small conv's padding is the big one's minus the offset, i.e.
    ``(p - (K - kh)//2, p - (K - kw)//2)``, so that the sliding windows coincide; the blocks in
    :mod:`models.rep_blocks` build their branches that way.
    """
    target_h, target_w = (size, size) if isinstance(size, int) else size
    dh, dw = target_h - kernel.shape[-2], target_w - kernel.shape[-1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[-2:])} kernel in "
                         f"{(target_h, target_w)}: sizes must differ by an even, "
                         "non-negative amount")
    if dh == 0 and dw == 0:
        return kernel
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def identity_kernel(channels: int, groups: int, kernel_size: int | tuple[int, int] = 3, *,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """The KxK kernel of a (grouped) conv that returns its input unchanged (RepVGG's identity).

    Shape ``(channels, channels // groups, K, K)``: output channel ``i`` reads input channel
    ``i % (channels // groups)`` of its own group at the centre tap. Depthwise convs
    (``groups == channels``) get a single-entry ``1x1`` slice per channel.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx % per_group, kh // 2, kw // 2] = 1
    return kernel


def add_identity(kernel: Tensor, scale: Tensor, groups: int = 1) -> Tensor:
    """``kernel + identity_kernel(...) * scale[:, None, None, None]`` without building the identity.

    Adds the per-channel ``scale`` of a BN-only branch at the centre taps that
    :func:`identity_kernel` sets to one; differentiable, and cheap for wide layers.
    """
    channels, per_group, kh, kw = kernel.shape
    if channels != per_group * groups:
        raise ValueError(f"an identity needs as many input as output channels; kernel "
                         f"{tuple(kernel.shape)} with groups={groups} has not")
    idx = torch.arange(channels, device=kernel.device)
    centre_h = torch.full_like(idx, kh // 2)
    centre_w = torch.full_like(idx, kw // 2)
    return kernel.index_put((idx, idx % per_group, centre_h, centre_w), scale.to(kernel.dtype),
                            accumulate=True)


def add_branches(kernels: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Parallel convs with coinciding windows sum to one conv (DBB transform II)."""
    if not kernels or len(kernels) != len(biases):
        raise ValueError("need one bias per kernel and at least one branch")
    kernel, bias = kernels[0], biases[0]
    for k, b in zip(kernels[1:], biases[1:]):
        kernel, bias = kernel + k, bias + b
    return kernel, bias


def stack_branches(tensors: Sequence[Tensor], groups: int = 1) -> Tensor:
    """Concatenate per-branch tensors along output channels, group-major: ``(g, branch, c)``.

    ``tensors`` are B kernels ``(out, in/g, K, K)`` (or B per-channel vectors ``(out,)``) of B
    parallel convs with ``groups=g``. The result is a kernel (or vector) for ONE conv with
    ``groups=g`` and ``B*out`` output channels whose group ``i`` holds every branch's share of
    group ``i``, so each branch still sees only its own input group. Its output channel
    ``(i*B + b)*c + j`` is channel ``i*c + j`` of branch ``b`` (``c = out // g``). With ``g == 1``
    this is plain concatenation.
    """
    stacked = torch.stack(list(tensors), 0)  # (B, out, ...)
    if groups == 1:
        return stacked.reshape(-1, *stacked.shape[2:])
    num, out = stacked.shape[:2]
    rest = stacked.shape[2:]
    return stacked.reshape(num, groups, out // groups, *rest).transpose(0, 1).reshape(-1, *rest)


def unstack_branches(stacked: Tensor, num_branches: int, groups: int = 1) -> Tensor:
    """Inverse of :func:`stack_branches` along dim 0: returns ``(B, out, ...)``."""
    rest = stacked.shape[1:]
    if groups == 1:
        return stacked.reshape(num_branches, -1, *rest)
    per = stacked.shape[0] // (groups * num_branches)
    return (stacked.reshape(groups, num_branches, per, *rest).transpose(0, 1)
            .reshape(num_branches, groups * per, *rest))
