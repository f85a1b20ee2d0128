"""Training and evaluation loops.

One epoch loop serves teachers and students: it takes a ``compute_loss`` callable, so it never
needs to know which distillation method runs. Losses and accuracies accumulate on the device
and are read once per print interval (no host sync inside a step).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from helper.distributed import DistContext
from helper.errors import UserError
from helper.util import correct_topk


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the run stops without saving."""


@dataclass
class Batch:
    """One training batch: images, targets and, for instance/CRD methods, sample indices."""

    images: torch.Tensor
    target: torch.Tensor
    index: torch.Tensor | None = None
    contrast_idx: torch.Tensor | None = None


def to_batch(data, device: torch.device, channels_last: bool = False) -> Batch:
    """Unpack what a loader yields — (x, y), (x, y, idx) or (x, y, idx, contrast_idx) — onto ``device``."""
    parts = [t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in data]
    images = parts[0].float()
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return Batch(images, parts[1], *parts[2:4])


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16, or fp16 on CUDA devices without bf16 support (those need a grad scaler)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def make_grad_scaler(device: torch.device, amp: bool) -> "torch.amp.GradScaler | None":
    """A grad scaler when mixed precision runs in fp16, else None (bf16 needs none)."""
    if amp and amp_dtype(device) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def autocast_context(device: torch.device, amp: bool):
    """Autocast to :func:`amp_dtype` when ``amp``, else nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


class DeviceMeter:
    """Sums of loss, correct predictions and sample count kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, n

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch; everything stays on the device (no host sync)."""
        n = target.size(0)
        top1, top5 = correct_topk(logits, target, (1, 5))
        loss_sum = loss.detach().double() * n
        self.sums += torch.stack([loss_sum, top1.double(), top5.double(), torch.full_like(loss_sum, n)])

    def read(self, dist: DistContext | None = None) -> dict[str, float]:
        """Mean loss and top-1/top-5 accuracy (percent); with ``dist``, over the sums of all
        processes (every process must call it at the same point)."""
        sums = self.sums if dist is None else dist.all_reduce_sum(self.sums)
        loss, top1, top5, n = sums.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "acc": 100.0 * top1 / n, "acc_top5": 100.0 * top5 / n}


def train_epoch(train_modules: Iterable[torch.nn.Module], loader: Iterable,
                optimizer: torch.optim.Optimizer,
                compute_loss: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, epoch: int, print_freq: int = 100, amp: bool = False,
                scaler: "torch.amp.GradScaler | None" = None, channels_last: bool = False,
                desc: str = "train", dist: DistContext | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and top-1/top-5 accuracy (percent).

    ``train_modules`` are put in train mode (everything else keeps its mode: the teacher stays
    in eval). ``compute_loss(batch)`` returns ``(loss, logits)``. The loss is checked for NaN/inf once per
    ``print_freq`` steps and at the end: a non-finite loss raises :class:`NonFiniteLossError`
    before anything is saved.

    With ``dist`` (several processes, each reading its shard) the statistics, and so the
    NaN/inf check, are over all processes: every process stops at the same step.
    """
    for module in train_modules:
        module.train()
    meter = DeviceMeter(device)
    bar = tqdm(loader, desc=f"{desc} epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=bar_disabled(dist))
    step = 0
    for step, data in enumerate(bar, 1):
        batch = to_batch(data, device, channels_last)
        loss, logits = optimize(lambda: compute_loss(batch), optimizer, scaler, device, amp)
        meter.update(loss, logits.float(), batch.target)
        if print_freq and step % print_freq == 0:
            stats = checked(meter, epoch, step, dist)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['acc']:.2f}")
    return checked(meter, epoch, step, dist)


def optimize(compute_loss: Callable[[], tuple[torch.Tensor, torch.Tensor]],
             optimizer: torch.optim.Optimizer, scaler: "torch.amp.GradScaler | None",
             device: torch.device, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``compute_loss()`` (under autocast when ``amp``, through
    ``scaler`` when given); returns its ``(loss, logits)``. A loss with one value per stacked
    trial (:mod:`helper.stacked`) is summed for the backward pass: the trials share no
    parameter, so each gets the gradient of its own loss."""
    with autocast_context(device, amp):
        loss, logits = compute_loss()
    total = loss.sum() if loss.dim() else loss
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    return loss, logits


def bar_disabled(dist: DistContext | None) -> bool | None:
    """tqdm's ``disable``: None (auto: off without a terminal) on rank 0, True elsewhere."""
    return None if dist is None or dist.is_main else True


def checked(meter: DeviceMeter, epoch: int, step: int,
             dist: DistContext | None = None) -> dict[str, float]:
    stats = meter.read(dist)
    if not math.isfinite(stats["loss"]):
        raise NonFiniteLossError(
            f"training loss became {stats['loss']} at epoch {epoch} (by step {step}); the run stopped "
            f"and the last good checkpoint was left intact — lower --learning_rate or check the loss weights")
    return stats


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Iterable, device: torch.device, amp: bool = False,
             channels_last: bool = False, desc: str = "test",
             dist: DistContext | None = None) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``.

    With ``dist`` each process passes the loader of its disjoint shard of the split and the
    sums (loss x n, top-1, top-5, n) are added over processes: the result is that of one
    process over the whole split, no sample counted twice or left out.
    """
    model.eval()
    meter = DeviceMeter(device)
    for data in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=bar_disabled(dist)):
        batch = to_batch(data, device, channels_last)
        with autocast_context(device, amp):
            logits = model(batch.images)
        logits = logits.float()
        meter.update(F.cross_entropy(logits, batch.target), logits, batch.target)
    return meter.read(dist)
