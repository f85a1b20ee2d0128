"""Building the train/test loaders of one image set with either loader kind.

``loader='device'`` (default): :class:`dataset.device_loader.DeviceLoader`, data on the
training device, batched augmentation. ``loader='torchvision'``: the classic PIL + torchvision
``DataLoader`` path of the CRD code. Both give the same augmentation distribution, the same
number of batches and the same item layouts. With ``world_size > 1`` each process (``rank``)
reads its shard of every training epoch (padded to equal sizes) and an exact shard of the test
split (:mod:`dataset.sharding`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dataset.contrast import CONTRAST_MODES, ContrastSampler
from dataset.device_loader import DeviceLoader
from dataset.sharding import Shard
from dataset.torchvision_loader import (ArrayImageDataset, TorchvisionLoader, test_transform,
                                        train_transform)
from helper.errors import UserError

LOADER_KINDS = ("device", "torchvision")
Loader = DeviceLoader | TorchvisionLoader


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


def build_loaders(data: ImageData, *, batch_size: int, num_workers: int,
                  loader: str = "device", device: torch.device | str = "cpu", seed: int = 0,
                  is_instance: bool = False, contrast: ContrastConfig | None = None,
                  channels_last: bool = False, drop_last: bool = False, rank: int = 0,
                  world_size: int = 1) -> tuple[Loader, Loader, int]:
    """Train and test loaders of ``data`` and the number of training samples.

    The test loader uses ``batch_size // 2`` and ``num_workers // 2`` as the original code.
    Train items: ``(x, y)``, ``(x, y, index)`` with ``is_instance`` or ``contrast`` without
    ``is_sample``, ``(x, y, index, contrast_idx)`` with ``contrast.is_sample``; indices (and
    contrast indices) always refer to the whole training split. ``batch_size`` is per process;
    ``n_data`` is the size of the whole training split.
    """
    check_options(loader, contrast)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    sampler = None
    if contrast is not None and contrast.is_sample:
        sampler = ContrastSampler(data.train_labels, data.num_classes, contrast.k,
                                  mode=contrast.mode, percent=contrast.percent, seed=seed)
    with_index = is_instance or contrast is not None
    test_bs = max(1, batch_size // 2)
    n_data = len(data.train_labels)
    train_shard = Shard(rank, world_size, pad=True)
    test_shard = Shard(rank, world_size, pad=False)
    if loader == "device":
        common = dict(mean=data.mean, std=data.std, device=device, seed=seed,
                      channels_last=channels_last, padding=data.padding)
        train = DeviceLoader(to_nchw(data.train_images), torch.from_numpy(data.train_labels),
                             batch_size=batch_size, shuffle=True, augment=True, flip=data.flip,
                             with_indices=with_index, contrast=sampler, drop_last=drop_last,
                             shard=train_shard, **common)
        test = DeviceLoader(to_nchw(data.test_images), torch.from_numpy(data.test_labels),
                            batch_size=test_bs, shuffle=False, augment=False, shard=test_shard,
                            **common)
        return train, test, n_data
    pin = torch.device(device).type == "cuda" and torch.cuda.is_available()
    size = data.train_images.shape[1]
    train_set = ArrayImageDataset(
        data.train_images, data.train_labels,
        train_transform(data.mean, data.std, flip=data.flip, padding=data.padding, size=size),
        with_index=with_index, contrast=sampler)
    test_set = ArrayImageDataset(data.test_images, data.test_labels,
                                 test_transform(data.mean, data.std))
    train = TorchvisionLoader(train_set, batch_size=batch_size, shuffle=True,
                              num_workers=num_workers, seed=seed, pin_memory=pin,
                              channels_last=channels_last, drop_last=drop_last, shard=train_shard)
    test = TorchvisionLoader(test_set, batch_size=test_bs, shuffle=False,
                             num_workers=num_workers // 2, seed=seed, pin_memory=pin,
                             channels_last=channels_last, shard=test_shard)
    return train, test, n_data
