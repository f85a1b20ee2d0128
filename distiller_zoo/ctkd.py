"""Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023).

CTKD replaces the fixed temperature of the KD loss by a learnable one, trained adversarially:
the temperature's parameter sits behind a gradient reversal layer (Ganin & Lempitsky, 2015), so
the optimizer step that lowers the distillation loss for the student raises it for the
temperature. The reversal's weight ``lambda`` grows from ``lambda_min`` to ``lambda_max`` along
a cosine over the first ``epochs`` epochs (the paper's easy-to-hard curriculum)::

    lambda_n = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * min(n, E) / E)) / 2

The global temperature (the paper's CIFAR default, "Global-T") is one parameter ``theta``,
mapped into ``(t_start, t_start + t_range)`` by ``t_start + t_range * sigmoid(theta)``, with
``theta = 1`` at the start, as the authors' ``models/temp_global.py`` and ``helper/loops.py``
compute it (their flags ``--t_start`` and ``--t_end``, the latter being the range's width).

The authors write the schedule with the signs folded in: their ``CosineDecay(max_value=0,
min_value=-1)`` yields ``-lambda_n`` and their reversal layer multiplies the gradient by that
value; here ``lambda_n`` is the paper's non-negative weight and the layer multiplies by
``-lambda_n``, which is the same number.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged; its gradient multiplied by ``-scale`` on the way back (the gradient
    reversal layer of Ganin & Lempitsky, 2015, with weight ``scale``)."""
    return _ReverseGradient.apply(x, scale)


def cosine_lambda(epoch: int, lambda_min: float, lambda_max: float, epochs: int) -> float:
    """The reversal weight of ``epoch`` (CTKD's cosine curriculum): ``lambda_min`` at epoch 0,
    ``lambda_max`` from epoch ``epochs`` on. Epochs count from 1, as the training loop's do."""
    n = min(max(epoch, 0), epochs)
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(math.pi * n / epochs)) / 2.0


class GlobalTemperature(nn.Module):
    """CTKD's global temperature: ``t_start + t_range * sigmoid(theta)`` with one learnable
    ``theta`` (initially 1), whose gradient is reversed with the weight given to
    :meth:`forward`."""

    def __init__(self, t_start: float = 1.0, t_range: float = 20.0, theta: float = 1.0) -> None:
        super().__init__()
        self.t_start = t_start
        self.t_range = t_range
        self.theta = nn.Parameter(torch.full((1,), float(theta)))

    def forward(self, reversal: float) -> torch.Tensor:
        """The temperature, shape ``(1,)``; ``reversal``: the weight of the gradient reversal."""
        return self.t_start + self.t_range * torch.sigmoid(reverse_gradient(self.theta, reversal))

    def extra_repr(self) -> str:
        return f"t_start={self.t_start:g}, t_range={self.t_range:g}"


def kl_at_temperature(y_s: torch.Tensor, y_t: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(y_t/T) || softmax(y_s/T)) * T^2`` averaged over the batch, for a tensor
    temperature ``T`` through which the gradient flows (shape ``(1,)`` or ``()``); a 0-dim
    result. The KD loss of :class:`distiller_zoo.kd.DistillKL`, differentiable in ``T``."""
    log_p_s = F.log_softmax(y_s / temperature, dim=1)
    p_t = F.softmax(y_t / temperature, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="sum") / y_s.shape[0]
    return (kl * temperature * temperature).reshape(())
