"""Contrastive index sampling for CRD (Tian, Krishnan & Isola, "Contrastive Representation
Distillation", ICLR 2020).

For a training sample ``i`` of class ``c`` the CRD data set returns ``k + 1`` indices: first a
positive (``i`` itself in ``'exact'`` mode, a uniformly drawn index of class ``c`` in ``'relax'``
mode, possibly ``i`` again), then ``k`` negatives drawn uniformly from the indices of all other
classes, without replacement unless ``k`` exceeds that pool (then with replacement, as the
original's ``np.random.choice(..., replace=k > len(pool))``). With ``0 < percent < 1`` the
negative pool of every class is cut, once per run, to a random subset of
``int(len(pool of class 0) * percent)`` indices, as in the original.

The same per-class tables serve two paths: :meth:`ContrastSampler.sample` draws a whole batch
with vectorized ops on the tables' device (random keys + ``topk``: the ``k`` smallest of
i.i.d. uniform keys are a uniform ``k``-subset, i.e. sampling without replacement), and
:meth:`ContrastSampler.sample_one` draws for one item in a classic ``Dataset.__getitem__``.
Departure from the original: the order of the ``k`` negatives within a row is unspecified
(the CRD loss treats the negatives as an unordered set).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from helper.errors import UserError

CONTRAST_MODES = ("exact", "relax")


def _class_tables(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Padded per-class tables: positives (C, maxP) and negatives (C, maxM), with counts.

    Row ``c`` of the positive table lists the indices of class ``c`` in ascending order; row
    ``c`` of the negative table lists all other indices in class-then-index order (the
    original's ``cls_negative``). Padding entries repeat a valid index and are never drawn.
    """
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    n = labels.numel()
    max_pos = int(counts.max())
    col = torch.arange(max_pos)
    pos_src = (starts[:, None] + col[None, :]).clamp_max(n - 1)
    pos_table = order[pos_src]
    neg_counts = n - counts
    max_neg = max(int(neg_counts.max()), 1)
    col = torch.arange(max_neg)
    # skip over the class's own segment [start, start + count) of the sorted order
    neg_src = col[None, :] + (col[None, :] >= starts[:, None]).long() * counts[:, None]
    neg_table = order[neg_src.clamp_max(n - 1)]
    return pos_table, counts, neg_table, neg_counts


class ContrastSampler:
    """Per-class index tables and the CRD positive/negative sampler.

    Args:
        labels: (N,) integer class labels of the training set.
        num_classes: number of classes (``labels.max() + 1`` when None).
        k: number of negatives per sample.
        mode: ``'exact'`` (positive = the sample itself) or ``'relax'`` (same class).
        percent: fraction of each negative pool kept (``0 < percent <= 1``).
        seed: seeds the one-off ``percent`` subsetting.
    """

    def __init__(self, labels: Tensor | np.ndarray, num_classes: int | None, k: int,
                 mode: str = "exact", percent: float = 1.0, seed: int = 0) -> None:
        if mode not in CONTRAST_MODES:
            raise UserError(f"unknown CRD sampling mode {mode!r}; "
                            f"known: {', '.join(CONTRAST_MODES)}")
        if k < 1:
            raise UserError(f"the number of CRD negatives must be at least 1, got --nce_k {k}")
        if not 0 < percent <= 1:
            raise UserError(f"CRD negative-pool percent must be in (0, 1], got {percent}")
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
        present = torch.bincount(labels, minlength=num_classes)
        if present.numel() > num_classes or int((present > 0).sum()) < 2:
            raise UserError("CRD sampling needs labels from at least two classes within "
                            f"0..{num_classes - 1}")
        self.k, self.mode, self.percent = int(k), mode, float(percent)
        self.num_classes = num_classes
        self.pos_table, self.pos_counts, self.neg_table, self.neg_counts = _class_tables(
            labels, num_classes)
        if 0 < percent < 1:
            self._subsample_negatives(seed)
        # host-side facts so that sampling never has to sync with the device
        self._min_neg = int(self.neg_counts.min())
        self._max_neg = int(self.neg_counts.max())

    def _subsample_negatives(self, seed: int) -> None:
        n_keep = int(int(self.neg_counts[0]) * self.percent)
        if n_keep < 1:
            raise UserError(f"CRD percent {self.percent} leaves no negatives to sample from")
        gen = torch.Generator().manual_seed(seed)
        keys = torch.rand(self.neg_table.shape, generator=gen)
        width = self.neg_table.shape[1]
        keys[torch.arange(width)[None, :] >= self.neg_counts[:, None]] = 2.0
        picked = torch.argsort(keys, dim=1)[:, :n_keep]
        self.neg_table = torch.gather(self.neg_table, 1, picked)
        self.neg_counts = self.neg_counts.clamp_max(n_keep)

    @property
    def device(self) -> torch.device:
        return self.neg_table.device

    def to(self, device: torch.device | str) -> "ContrastSampler":
        """Move the tables to ``device`` (in place); returns self."""
        for name in ("pos_table", "pos_counts", "neg_table", "neg_counts"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def sample(self, indices: Tensor, targets: Tensor,
               generator: torch.Generator | None = None) -> Tensor:
        """Contrast indices for a batch: (B, k + 1) int64, column 0 the positive.

        Vectorized on the tables' device; no host synchronisation.
        """
        dev = self.device
        b = targets.shape[0]
        if self.mode == "exact":
            positive = indices.to(dev, torch.long)
        else:
            counts = self.pos_counts[targets]
            r = (torch.rand(b, generator=generator, device=dev) * counts).long()
            r = torch.minimum(r, counts - 1)
            positive = self.pos_table[targets, r]
        counts = self.neg_counts[targets]  # (B,)
        width = self.neg_table.shape[1]
        pos = None
        if self.k <= self._max_neg:  # some rows (all when k <= min) sample without replacement
            keys = torch.rand(b, width, generator=generator, device=dev)
            keys.masked_fill_(torch.arange(width, device=dev)[None, :] >= counts[:, None], 2.0)
            pos = torch.topk(keys, self.k, dim=1, largest=False, sorted=False).indices
        if self.k > self._min_neg:  # some rows (all when k > max) need replacement
            u = torch.rand(b, self.k, generator=generator, device=dev)
            rep = torch.minimum((u * counts[:, None]).long(), counts[:, None] - 1)
            pos = rep if pos is None else torch.where((self.k > counts)[:, None], rep, pos)
        negatives = self.neg_table.view(-1)[targets[:, None] * width + pos]
        return torch.cat([positive[:, None], negatives], dim=1)

    def sample_one(self, index: int, target: int) -> Tensor:
        """Contrast indices for one item, (k + 1,) int64, drawn with torch's global RNG
        (which DataLoader workers seed per worker)."""
        if self.mode == "exact":
            positive = index
        else:
            count = int(self.pos_counts[target])
            positive = int(self.pos_table[target, int(torch.randint(count, ()))])
        count = int(self.neg_counts[target])
        if self.k > count:
            pos = torch.randint(count, (self.k,))
        else:
            pos = torch.randperm(count)[: self.k]
        negatives = self.neg_table[target, pos]
        return torch.cat([torch.tensor([positive]), negatives])
