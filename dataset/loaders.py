"""Building the train/test loaders of one image set with either loader kind.

``loader='device'`` (default): :class:`dataset.device_loader.DeviceLoader`, data on the
training device, batched augmentation. ``loader='torchvision'``: the classic PIL + torchvision
``DataLoader`` path of the CRD code. Both give the same augmentation distribution, the same
number of batches and the same item layouts (with ``strong_view``, images as the pair
``(weak, strong)`` in both). With ``world_size > 1`` each process (``rank``)
reads its shard of every training epoch (padded to equal sizes) and an exact shard of the test
split (:mod:`dataset.sharding`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dataset.contrast import CONTRAST_MODES, ContrastSampler
from dataset.device_loader import DeviceLoader
from dataset.sharding import Shard
from dataset.strong_augment import StrongTransform
from dataset.torchvision_loader import (ArrayImageDataset, TorchvisionLoader, TwoViews, test_transform,
                                        train_transform)
from helper.errors import UserError

LOADER_KINDS = ("device", "torchvision")
Loader = DeviceLoader | TorchvisionLoader
Stats = tuple[float, ...]


@dataclass(frozen=True)
class ImageData:
    """One image set in memory: uint8 (N, H, W, 3) images, int64 labels, statistics."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True  # horizontal flips in training augmentation
    padding: int = 4  # zero padding of the random crop


@dataclass(frozen=True)
class LoaderOptions:
    """The loader arguments every data set takes, declared once.

    ``batch_size`` is per process; ``num_workers`` is used by the torchvision loader only;
    ``loader`` is one of :data:`LOADER_KINDS`; ``device`` is where the device loader keeps the
    data; all randomness derives from ``seed``; process ``rank`` of ``world_size`` reads its
    shard (:mod:`dataset.sharding`); with ``is_instance`` train batches carry their indices; with
    ``strong_view`` their images are the pair ``(weak, strong)`` (MLKD's strong augmentation,
    :mod:`dataset.strong_augment`).
    """

    batch_size: int = 64
    num_workers: int = 8
    data_folder: str | Path = "./data"
    loader: str = "device"
    device: torch.device | str = "cpu"
    seed: int = 0
    channels_last: bool = False
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    is_instance: bool = False
    strong_view: bool = False

    @property
    def test_batch_size(self) -> int:
        """The test loaders' batch size: half the training one, as the CRD code."""
        return max(1, self.batch_size // 2)

    def shard(self, pad: bool) -> Shard:
        """This process's shard: ``pad`` for training (equal sizes), exact for testing."""
        return Shard(self.rank, self.world_size, pad=pad)


@dataclass(frozen=True)
class ContrastConfig:
    """CRD sampling options (the original's ``k``, ``mode``, ``is_sample``, ``percent``)."""

    k: int
    mode: str = "exact"
    is_sample: bool = True
    percent: float = 1.0


def to_nchw(images_hwc: np.ndarray) -> Tensor:
    """uint8 (N, H, W, C) array -> contiguous uint8 (N, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2).contiguous()


def check_options(loader: str, contrast: ContrastConfig | None = None) -> None:
    """Reject unknown loader kinds and CRD modes before any data is read."""
    if loader not in LOADER_KINDS:
        raise UserError(f"unknown data loader {loader!r}; known: {', '.join(LOADER_KINDS)}")
    if contrast is not None and contrast.mode not in CONTRAST_MODES:
        raise UserError(f"unknown CRD sampling mode {contrast.mode!r}; "
                        f"known: {', '.join(CONTRAST_MODES)}")


def build_loaders(data: ImageData, options: LoaderOptions,
                  contrast: ContrastConfig | None = None) -> tuple[Loader, Loader, int]:
    """Train and test loaders of ``data`` and the number of training samples.

    The test loader uses ``batch_size // 2`` and ``num_workers // 2`` as the original code.
    Train items: ``(x, y)``, ``(x, y, index)`` with ``options.is_instance`` or ``contrast``
    without ``is_sample``, ``(x, y, index, contrast_idx)`` with ``contrast.is_sample``; indices
    (and contrast indices) always refer to the whole training split. ``batch_size`` is per
    process; ``n_data`` is the size of the whole training split.
    """
    check_options(options.loader, contrast)
    if options.batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {options.batch_size}")
    sampler = None
    if contrast is not None and contrast.is_sample:
        sampler = ContrastSampler(data.train_labels, data.num_classes, contrast.k,
                                  mode=contrast.mode, percent=contrast.percent, seed=options.seed)
    with_index = options.is_instance or contrast is not None
    build = _device_loaders if options.loader == "device" else _torchvision_loaders
    train, test = build(data, options, with_index, sampler)
    return train, test, len(data.train_labels)


def _device_loaders(data: ImageData, options: LoaderOptions, with_index: bool,
                    sampler: ContrastSampler | None) -> tuple[DeviceLoader, DeviceLoader]:
    """``loader='device'``: both splits on ``options.device``, batched augmentation."""
    common = dict(mean=data.mean, std=data.std, device=options.device, seed=options.seed,
                  channels_last=options.channels_last, padding=data.padding)
    train = DeviceLoader(to_nchw(data.train_images), torch.from_numpy(data.train_labels),
                         batch_size=options.batch_size, shuffle=True, augment=True,
                         flip=data.flip, with_indices=with_index, contrast=sampler,
                         drop_last=options.drop_last, shard=options.shard(pad=True),
                         strong=options.strong_view, **common)
    test = DeviceLoader(to_nchw(data.test_images), torch.from_numpy(data.test_labels),
                        batch_size=options.test_batch_size, shuffle=False, augment=False,
                        shard=options.shard(pad=False), **common)
    return train, test


def _torchvision_loaders(data: ImageData, options: LoaderOptions, with_index: bool,
                         sampler: ContrastSampler | None
                         ) -> tuple[TorchvisionLoader, TorchvisionLoader]:
    """``loader='torchvision'``: PIL transforms in ``DataLoader`` workers, as the CRD code."""
    pin = torch.device(options.device).type == "cuda" and torch.cuda.is_available()
    size = data.train_images.shape[1]
    transform = train_transform(data.mean, data.std, flip=data.flip, padding=data.padding, size=size)
    if options.strong_view:
        transform = TwoViews(transform, StrongTransform(data.mean, data.std, flip=data.flip,
                                                       padding=data.padding, size=size))
    train_set = ArrayImageDataset(data.train_images, data.train_labels, transform,
                                  with_index=with_index, contrast=sampler)
    test_set = ArrayImageDataset(data.test_images, data.test_labels,
                                 test_transform(data.mean, data.std))
    common = dict(seed=options.seed, pin_memory=pin, channels_last=options.channels_last)
    train = TorchvisionLoader(train_set, batch_size=options.batch_size, shuffle=True,
                              num_workers=options.num_workers, drop_last=options.drop_last,
                              shard=options.shard(pad=True), **common)
    test = TorchvisionLoader(test_set, batch_size=options.test_batch_size, shuffle=False,
                             num_workers=options.num_workers // 2,
                             shard=options.shard(pad=False), **common)
    return train, test


def memory_test_loader(images: Tensor, labels: Tensor, mean: Stats, std: Stats,
                       options: LoaderOptions) -> DeviceLoader:
    """The test split alone on ``options.device``, unaugmented and in order (for
    :func:`dataset.get_test_loader`; the whole split, full ``batch_size``)."""
    return DeviceLoader(images, labels, batch_size=options.batch_size, mean=mean, std=std,
                        shuffle=False, augment=False, device=options.device)
