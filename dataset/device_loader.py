"""A device-resident image loader: the whole split lives on the training device as uint8 and
each batch is cropped, flipped and normalized there with a few vectorized ops.

The idea follows airbench's ``CifarLoader`` (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds
on a single GPU", 2024); the augmentation reproduces the standard CIFAR pipeline of the CRD
benchmark (Krizhevsky 2009 data; ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
``ToTensor()``, ``Normalize(mean, std)``) pixel for pixel: the crop pads with zeros in pixel
space, before normalization, so padded pixels become ``(0 - mean) / std`` exactly as with
torchvision on a PIL image. :func:`augment_batch` is the pure function that the equivalence
test checks against ``torchvision.transforms.functional``.

With ``strong`` each batch's images are a pair: the weak view above and MLKD's strong view
(:mod:`dataset.strong_augment`: its own crop and flip, RandAugment, Cutout), batched on the
device too and pixel-identical to the authors' Pillow pipeline (:func:`strong_batch`).

Randomness is reproducible and resumable: epoch ``e`` draws its permutation, crop offsets and
flips from a generator seeded with ``(seed, e, 0)``, its CRD contrast indices from one
seeded with ``(seed, e, 1)`` and its strong views from a host generator seeded with
``(seed, e, 2)``. Iterating uses the current epoch and then advances it;
:meth:`DeviceLoader.set_epoch` picks the epoch explicitly (as ``DistributedSampler`` does).

In a data-parallel run every rank draws the same epoch plan and reads its :class:`Shard` of it
(:mod:`dataset.sharding`): the ranks' batches of one epoch are disjoint and together the whole
split, each sample with the crop and flip it gets in a one-process run. Contrast indices still
index the full training set; rank ``r`` draws them from ``(seed, e, 1, r)``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from dataset.contrast import ContrastSampler
from dataset.sharding import Shard
from dataset.epochs import SeededEpochs
from dataset.strong_augment import StrongPlan, draw_strong_plan, strong_images

Stats = Sequence[float] | Tensor


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit generator seed derived from ``seed`` and ``keys`` (epoch, stream)."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(
        1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def _stat(values: Stats, like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=like.device).view(-1, 1, 1)


def normalize_batch(images_uint8: Tensor, mean: Stats | None = None,
                    std: Stats | None = None) -> Tensor:
    """uint8 (B, C, H, W) -> float32, ``x / 255`` then ``(x - mean) / std`` in the same float32
    operations as torchvision's ``to_tensor`` + ``normalize`` (bitwise identical)."""
    x = images_uint8.to(torch.float32).div_(255)
    if mean is not None:
        x.sub_(_stat(mean, x)).div_(_stat(std, x))
    return x


def augment_batch(images_uint8: Tensor, crop_offsets: Tensor, flip_mask: Tensor,
                  mean: Stats | None = None, std: Stats | None = None,
                  padding: int = 4) -> Tensor:
    """Padded random crop + horizontal flip + normalization of a uint8 (B, C, H, W) batch.

    Args:
        images_uint8: (B, C, H, W) uint8 images.
        crop_offsets: (B, 2) integer (top, left) corners of the crop in the zero-padded
            (H + 2p, W + 2p) image, each in ``0..2p`` (torchvision's ``RandomCrop.get_params``).
        flip_mask: (B,) bool, mirror the cropped image left-right where True.
        mean, std: per-channel statistics; None skips normalization (values in [0, 1]).
        padding: zero padding ``p`` on every side, in pixel space.

    Returns:
        float32 (B, C, H, W); one gather for crop and flip together (:func:`crop_flip`).
    """
    return normalize_batch(crop_flip(images_uint8, crop_offsets, flip_mask, padding), mean, std)


def strong_batch(images_uint8: Tensor, plan: StrongPlan, mean: Stats | None = None,
                 std: Stats | None = None, padding: int = 4) -> Tensor:
    """MLKD's strong view of a uint8 (B, C, H, W) batch for its draws ``plan`` (on the images'
    device): the plan's own crop and flip, RandAugment and Cutout on the uint8 pixels
    (:func:`dataset.strong_augment.strong_images`), then normalization; float32 out."""
    cropped = crop_flip(images_uint8, plan.crop_offsets, plan.flip_mask, padding)
    return normalize_batch(strong_images(cropped, plan), mean, std)


def crop_flip(images_uint8: Tensor, crop_offsets: Tensor, flip_mask: Tensor, padding: int = 4) -> Tensor:
    """The padded crop and flip of :func:`augment_batch` on the uint8 pixels (uint8 out)."""
    b, c, h, w = images_uint8.shape
    dev = images_uint8.device
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = torch.nn.functional.pad(images_uint8, (padding,) * 4)  # zeros, uint8
    offsets = crop_offsets.to(dev, torch.long)
    rows = offsets[:, :1] + torch.arange(h, device=dev)[None, :]  # (B, H)
    cols = torch.arange(w, device=dev)[None, :].expand(b, w)
    cols = torch.where(flip_mask.to(dev)[:, None], (w - 1) - cols, cols) + offsets[:, 1:]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded.reshape(b, c, hp * wp), 2, flat).view(b, c, h, w)


@dataclass(frozen=True)
class EpochPlan:
    """The random choices of one epoch: sample order and per-position crop/flip."""

    order: Tensor  # (N,) int64, the sample index at each position
    crop_offsets: Tensor  # (N, 2) int64, (top, left) in 0..2p
    flip_mask: Tensor  # (N,) bool


class DeviceLoader(SeededEpochs):
    """Batches of a uint8 image tensor kept on ``device``.

    Yields ``(images, targets)``; ``(images, targets, indices)`` with ``with_indices``; and
    ``(images, targets, indices, contrast_idx)`` with a CRD ``contrast`` sampler. With ``strong``
    ``images`` is the pair ``(weak, strong)``. Images are
    float32 NCHW (channels_last memory format on request), everything on ``device``. The last
    partial batch is kept unless ``drop_last``.

    Args:
        images: (N, C, H, W) uint8 tensor.
        labels: (N,) integer labels.
        batch_size: samples per batch.
        mean, std: per-channel normalization statistics (on the [0, 1] scale).
        shuffle: new seeded permutation each epoch (else in order).
        augment: padded random crop (+ flip if ``flip``); else normalize only.
        flip: horizontal flips with p = 0.5 (off for digits: a mirrored digit is another symbol).
        padding: crop padding in pixels.
        device: where data and batches live.
        seed: base seed of all randomness.
        with_indices: also yield the sample indices.
        contrast: CRD sampler; implies indices and adds contrast indices.
        channels_last: return batches in ``torch.channels_last`` memory format.
        drop_last: drop the last partial batch.
        shard: the part of every epoch this process reads (all of it by default).
        strong: also MLKD's strong view of every image (:func:`strong_batch`).
    """

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int, mean: Stats,
                 std: Stats, shuffle: bool = True, augment: bool = True, flip: bool = True,
                 padding: int = 4, device: torch.device | str = "cpu", seed: int = 0,
                 with_indices: bool = False, contrast: ContrastSampler | None = None,
                 channels_last: bool = False, drop_last: bool = False,
                 shard: Shard = Shard(), strong: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        self.dataset = TensorDataset(self.images, self.labels)
        self.batch_size = int(batch_size)
        self.mean = _stat(mean, self.images)
        self.std = _stat(std, self.images)
        self.shuffle, self.augment, self.flip = shuffle, augment, flip
        self.padding = int(padding)
        self.seed = int(seed)
        self.with_indices = with_indices or contrast is not None
        self.contrast = None if contrast is None else contrast.to(self.device)
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.shard = shard
        self.strong = strong
        self._epoch = 0

    def with_seed(self, seed: int) -> "DeviceLoader":
        """This loader with base seed ``seed`` at epoch 0, sharing the device-resident data."""
        clone = copy.copy(self)
        clone.seed, clone._epoch = int(seed), 0
        return clone

    def __len__(self) -> int:
        n = self.shard.size(len(self.labels))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self, epoch: int, stream: int, *keys: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, epoch, stream, *keys))
        return gen

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """Order, crop offsets and flips of ``epoch`` (deterministic in ``seed`` and epoch)."""
        n, dev = len(self.labels), self.device
        gen = self._generator(epoch, 0)
        if self.shuffle:
            order = torch.randperm(n, generator=gen, device=dev)
        else:
            order = torch.arange(n, device=dev)
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=gen, device=dev)
        if self.flip:
            flips = torch.rand(n, generator=gen, device=dev) < 0.5
        else:
            flips = torch.zeros(n, dtype=torch.bool, device=dev)
        return EpochPlan(order, offsets, flips)

    def strong_plan(self, epoch: int) -> StrongPlan:
        """The strong views' draws of ``epoch``, per position of the epoch (as :meth:`epoch_plan`),
        drawn on the host from ``(seed, epoch, 2)`` and moved to the device."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 2))
        h, w = self.images.shape[2:]
        return draw_strong_plan(len(self.labels), gen, h, w, self.padding, self.flip).to(self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        epoch = self._epoch
        self._epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, ...]]:
        plan = self.epoch_plan(epoch)
        contrast_gen = None
        if self.contrast is not None:
            rank_key = (self.shard.rank,) if self.shard.world_size > 1 else ()
            contrast_gen = self._generator(epoch, 1, *rank_key)
        strong = self.strong_plan(epoch) if self.strong else None
        if self.shard.world_size > 1:  # this rank's positions of the epoch's plan
            mine = self.shard.positions(len(self.labels), self.device)
            plan = EpochPlan(plan.order[mine], plan.crop_offsets[mine], plan.flip_mask[mine])
            strong = None if strong is None else strong.select(mine)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = plan.order[sl]
            raw = self.images.index_select(0, idx)
            if self.augment:
                x = augment_batch(raw, plan.crop_offsets[sl], plan.flip_mask[sl],
                                  self.mean, self.std, self.padding)
            else:
                x = normalize_batch(raw, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if strong is not None:
                x_strong = strong_batch(raw, strong.select(sl), self.mean, self.std, self.padding)
                if self.channels_last:
                    x_strong = x_strong.contiguous(memory_format=torch.channels_last)
                x = (x, x_strong)
            y = self.labels.index_select(0, idx)
            if self.contrast is not None:
                yield x, y, idx, self.contrast.sample(idx, y, contrast_gen)
            elif self.with_indices:
                yield x, y, idx
            else:
                yield x, y
