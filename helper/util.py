"""Small training utilities shared by the entry scripts (as in the CRD code's helper/util.py)."""
from __future__ import annotations

import random
from dataclasses import fields
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np
import torch

from helper.errors import UserError

D = TypeVar("D")


def dataclass_from_flags(cls: type[D], flags: Mapping[str, Any], **derived: Any) -> D:
    """The dataclass ``cls`` holding, for each field, ``derived``'s value or else the parsed
    flag's (``flags``: ``vars`` of the namespace). A field neither fills is a programming error
    (a setting no flag defines), raised as a :class:`TypeError`."""
    names = [f.name for f in fields(cls)]
    missing = [name for name in names if name not in derived and name not in flags]
    if missing:
        raise TypeError(f"{cls.__name__}: no flag defines {', '.join(missing)}")
    return cls(**{name: derived[name] if name in derived else flags[name] for name in names})


def parse_decay_epochs(text: str | Sequence[int]) -> list[int]:
    """``'150,180,210'`` → ``[150, 180, 210]`` (the ``--lr_decay_epochs`` flag)."""
    if not isinstance(text, str):
        return [int(e) for e in text]
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--lr_decay_epochs expects comma-separated integers such as "
                        f"150,180,210, got {text!r}") from None


def learning_rate_at(epoch: int, base_lr: float, decay_epochs: Sequence[int], decay_rate: float) -> float:
    """Step schedule of the CRD code: multiply by ``decay_rate`` once per milestone passed
    (``epoch > milestone``), epochs counted from 1."""
    steps = sum(epoch > m for m in decay_epochs)
    return base_lr * decay_rate ** steps


def adjust_learning_rate(epoch: int, schedule, optimizer: torch.optim.Optimizer) -> float:
    """Set every parameter group's learning rate for ``epoch`` (``schedule``: anything with
    ``learning_rate``, ``lr_decay_epochs`` and ``lr_decay_rate``, such as the engine's
    optimization section or the CRD code's options); returns it."""
    lr = learning_rate_at(epoch, schedule.learning_rate, schedule.lr_decay_epochs, schedule.lr_decay_rate)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class AverageMeter:
    """Running average of a scalar (kept for users of the CRD helpers)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[torch.Tensor]:
    """Top-k accuracies in percent (0–100) of a batch, as 1-element tensors."""
    with torch.no_grad():
        correct = correct_topk(output, target, topk)
        return [c.float().mul(100.0 / target.size(0)).reshape(1) for c in correct]


def correct_topk(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k predictions, for each k (on device)."""
    maxk = min(max(topk), output.size(1))
    pred = output.topk(maxk, 1, True, True).indices
    hits = pred.eq(target.view(-1, 1))
    return [hits[:, :min(k, maxk)].any(dim=1).sum() for k in topk]


def set_seed(seed: int | None) -> None:
    """Seed Python, NumPy and PyTorch (no-op when ``seed`` is None)."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_seed(seed: int | None, trial: str) -> int:
    """Seed of the loader's shuffling and augmentation: ``seed`` when given, else the trial
    number (so that unseeded trials 1..5 of a table cell see different data orders), else 0."""
    if seed is not None:
        return seed
    return int(trial) if str(trial).isdigit() else 0


def resolve_device(name: str | None = None) -> torch.device:
    """``cuda`` when available unless ``name`` says otherwise."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)
