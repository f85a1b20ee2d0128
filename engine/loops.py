"""The pieces of the training loop (:mod:`engine.fit`) and evaluation: batches, mixed
precision, one optimizer step, device-side meters, the progress bar and lines, and
:func:`validate`.

Losses, accuracies and the method's named loss terms accumulate on the device and are read
once per print interval (no host sync inside a step): shown in the tqdm bar on a terminal,
printed as a line otherwise (:mod:`helper.logging_utils`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.dot import DistillationOrientedSGD, SplitLoss
from helper import logging_utils
from helper.distributed import DistContext
from helper.errors import UserError
from helper.util import correct_topk


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; the run stops without saving."""


@dataclass
class Batch:
    """One training batch: images, targets and, for instance/CRD methods, sample indices; for a
    method reading a strongly augmented second view of each image (MLKD), that view (``strong``)."""

    images: torch.Tensor
    target: torch.Tensor
    index: torch.Tensor | None = None
    contrast_idx: torch.Tensor | None = None
    strong: torch.Tensor | None = None


def _images(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True).float()
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def to_batch(data, device: torch.device, channels_last: bool = False) -> Batch:
    """Unpack what a loader yields — (x, y), (x, y, idx) or (x, y, idx, contrast_idx), ``x``
    possibly the pair (weak, strong) — onto ``device``."""
    views = list(data[0]) if isinstance(data[0], (list, tuple)) else [data[0]]
    images, *strong = (_images(x, device, channels_last) for x in views)
    parts = [t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in data[1:]]
    return Batch(images, parts[0], *parts[1:3], strong=strong[0] if strong else None)


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


class StepOutput(tuple):
    """What a training step returns: it unpacks as ``(loss, logits)`` and carries the method's
    named loss terms (unweighted, detached; e.g. ``cls``, ``div``, ``kd``) as ``.terms``, which
    the meters accumulate for TensorBoard. A step may also return a plain ``(loss, logits)``.
    A step for DOT also carries its task and distillation losses apart as ``.split``
    (:class:`engine.dot.SplitLoss`)."""

    def __new__(cls, loss: torch.Tensor, logits: torch.Tensor,
                terms: Mapping[str, torch.Tensor] | None = None,
                split: "SplitLoss | None" = None) -> "StepOutput":
        out = super().__new__(cls, (loss, logits))
        out.terms = dict(terms or {})
        out.split = split
        return out


class DeviceMeter:
    """Sums of loss, correct predictions, sample count and the named loss terms, kept on the
    device; :meth:`totals` reads them (one host sync)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, n
        self.term_names: list[str] = []
        self.term_sums = torch.zeros(0, device=device, dtype=torch.float64)  # term x n, per name

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
               terms: Mapping[str, torch.Tensor] | None = None) -> None:
        """Add one batch; everything stays on the device (no host sync)."""
        n = target.size(0)
        top1, top5 = correct_topk(logits, target, (1, 5))
        loss_sum = loss.detach().double() * n
        self.sums += torch.stack([loss_sum, top1.double(), top5.double(), torch.full_like(loss_sum, n)])
        if terms:
            names = list(terms)
            if names != self.term_names:
                self._add_names(names)
            values = torch.stack([terms[k].detach().double().reshape(()) for k in names]) * n
            if names == self.term_names:
                self.term_sums += values
            else:  # the terms in another order, or some of them only
                index = torch.tensor([self.term_names.index(k) for k in names],
                                     device=self.term_sums.device)
                self.term_sums.index_add_(0, index, values)

    def _add_names(self, names: list[str]) -> None:
        new = [k for k in names if k not in self.term_names]
        if new:
            self.term_names += new
            self.term_sums = torch.cat([self.term_sums, self.term_sums.new_zeros(len(new))])

    def totals(self, dist: DistContext | None = None) -> list[float]:
        """The sums as host numbers (loss x n, top-1, top-5, n, then each term x n); with
        ``dist``, over all processes (every process must call it at the same point)."""
        sums = torch.cat([self.sums, self.term_sums])
        if dist is not None:
            sums = dist.all_reduce_sum(sums)
        return sums.tolist()

    def stats(self, totals: list[float], since: list[float] | None = None) -> dict[str, float]:
        """Mean loss, top-1/top-5 accuracy (percent) and ``loss_<term>`` means of ``totals``
        (minus the earlier ``since``: the interval between two reads)."""
        if since is not None:
            since = since + [0.0] * (len(totals) - len(since))
            totals = [a - b for a, b in zip(totals, since)]
        loss, top1, top5, n = totals[:4]
        n = max(n, 1.0)
        out = {"loss": loss / n, "acc": 100.0 * top1 / n, "acc_top5": 100.0 * top5 / n}
        out.update({f"loss_{k}": v / n for k, v in zip(self.term_names, totals[4:])})
        return out

    def read(self, dist: DistContext | None = None) -> dict[str, float]:
        """Mean loss and top-1/top-5 accuracy (percent), and ``loss_<name>`` for each named term;
        with ``dist``, over the sums of all processes (every process must call it at the same
        point)."""
        return self.stats(self.totals(dist))


def shows_bar(dist: DistContext | None, terminal: bool | None) -> bool:
    """Whether this process shows a tqdm bar: rank 0, on a terminal (``terminal=None`` asks
    :func:`helper.logging_utils.is_terminal`)."""
    if dist is not None and not dist.is_main:
        return False
    return logging_utils.is_terminal() if terminal is None else terminal


def progress_bar(iterable, desc: str, show: bool, total: int | None = None):
    """The tqdm bar of a loop, on the real stdout (not into ``train.log``), or none."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=not show, file=logging_utils.console())


def loader_length(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


class ProgressPrinter:
    """Every ``print_freq`` steps of piped output: one RepDistiller-style line, from the meter's
    totals read at that step (the interval's values, then the epoch's means)."""

    def __init__(self, epoch: int, total: int | None, label: str = "") -> None:
        self.epoch, self.total, self.label = epoch, total, label
        self.timer = logging_utils.StepTimer()
        self.previous: list[float] | None = None

    def print(self, meter: DeviceMeter, totals: list[float], step: int) -> None:
        seconds = self.timer.lap(step)
        recent = meter.stats(totals, since=self.previous)
        self.previous = totals
        print(logging_utils.progress_line(self.epoch, step, self.total, seconds, recent,
                                          meter.stats(totals), self.label), flush=True)


def optimize(compute_loss: Callable[[], tuple[torch.Tensor, torch.Tensor]],
             optimizer: torch.optim.Optimizer, scaler: "torch.amp.GradScaler | None",
             device: torch.device, amp: bool):
    """One optimizer step on ``compute_loss()`` (under autocast when ``amp``, through
    ``scaler`` when given); returns what it returned: ``(loss, logits)``, possibly a
    :class:`StepOutput` with the named terms. A loss with one value per stacked trial
    (:mod:`engine.stacked`) is summed for the backward pass: the trials share no parameter, so
    each gets the gradient of its own loss. DOT's optimizer takes the step's two losses apart
    (its ``split``; :meth:`engine.dot.DistillationOrientedSGD.backward_and_step`)."""
    with autocast_context(device, amp):
        output = compute_loss()
    if isinstance(optimizer, DistillationOrientedSGD):
        optimizer.backward_and_step(output.split, scaler)
        return output
    loss = output[0]
    total = loss.sum() if loss.dim() else loss
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    return output


def check_finite(stats: dict[str, float], epoch: int, step: int) -> dict[str, float]:
    """``stats``, or :class:`NonFiniteLossError` when its loss is NaN/inf (the message says
    when; the loop adds which checkpoint is kept, :func:`engine.fit.kept_checkpoint`)."""
    if not math.isfinite(stats["loss"]):
        raise NonFiniteLossError(f"training loss became {stats['loss']} at epoch {epoch} (by step {step})")
    return stats


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Iterable, device: torch.device, amp: bool = False,
             channels_last: bool = False, desc: str = "test",
             dist: DistContext | None = None, terminal: bool | None = None) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``.

    With ``dist`` each process passes the loader of its disjoint shard of the split and the
    sums (loss x n, top-1, top-5, n) are added over processes: the result is that of one
    process over the whole split, no sample counted twice or left out.
    """
    model.eval()
    meter = DeviceMeter(device)
    for data in progress_bar(loader, desc, shows_bar(dist, terminal)):
        batch = to_batch(data, device, channels_last)
        with autocast_context(device, amp):
            logits = model(batch.images)
        logits = logits.float()
        meter.update(F.cross_entropy(logits, batch.target), logits, batch.target)
    return meter.read(dist)
