"""Data sets of the benchmark, by name: ``cifar100`` (Krizhevsky 2009; the CRD benchmark of
Tian et al., ICLR 2020), ``digits`` (scikit-learn's 8x8 handwritten digits, an offline
stand-in) and ``imagenet`` (an ImageFolder tree, :mod:`dataset.imagenet`; its class count is
read from the folder). Unknown names raise :class:`helper.errors.UserError` listing the known
ones.

Every loader function takes ``rank`` and ``world_size``: in a data-parallel run each process
reads its shard of every training epoch and an exact shard of the test split
(:mod:`dataset.sharding`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from dataset import cifar100, digits, imagenet
from dataset.device_loader import DeviceLoader
from dataset.loaders import LOADER_KINDS, Loader
from helper.errors import UserError

#: name -> number of classes (None: read from the data folder)
DATASETS: dict[str, int | None] = {"cifar100": cifar100.NUM_CLASSES, "digits": digits.NUM_CLASSES,
                                   "imagenet": None}

_LOADERS: dict[str, Callable[..., tuple[Loader, Loader, int]]] = {
    "cifar100": cifar100.get_cifar100_dataloaders,
    "digits": digits.get_digits_dataloaders,
    "imagenet": imagenet.get_imagenet_loaders,
}
_SAMPLE_LOADERS: dict[str, Callable[..., tuple[Loader, Loader, int]]] = {
    "cifar100": cifar100.get_cifar100_dataloaders_sample,
    "digits": digits.get_digits_dataloaders_sample,
}

__all__ = ["DATASETS", "LOADER_KINDS", "default_loader", "get_dataloaders",
           "get_sample_dataloaders", "get_test_loader", "load_test_split", "num_classes",
           "normalization", "sample_k"]


def _check(dataset: str) -> str:
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return dataset


def num_classes(dataset: str, data_folder: str | Path = "./data") -> int:
    """Number of classes of ``dataset`` (ImageNet: class folders under ``data_folder``)."""
    count = DATASETS[_check(dataset)]
    return imagenet.num_imagenet_classes(str(data_folder)) if count is None else count


def default_loader(dataset: str) -> str:
    """The loader kind used when ``--loader`` is not given: ``device`` for the in-memory sets,
    ``torchvision`` for ImageNet's JPEG folders."""
    return "torchvision" if _check(dataset) == "imagenet" else "device"


def normalization(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) used to normalize ``dataset`` (on the [0, 1] scale)."""
    if _check(dataset) == "cifar100":
        return cifar100.MEAN, cifar100.STD
    if dataset == "imagenet":
        return imagenet.IMAGENET_MEAN, imagenet.IMAGENET_STD
    return digits.digits_normalization()


def get_dataloaders(dataset: str, batch_size: int = 64, num_workers: int = 8,
                    data_folder: str | Path = "./data", is_instance: bool = False,
                    loader: str | None = None, device: torch.device | str = "cpu", seed: int = 0,
                    channels_last: bool = False, drop_last: bool = False, rank: int = 0,
                    world_size: int = 1) -> tuple[Loader, Loader, int]:
    """(train_loader, test_loader, n_data) of ``dataset`` for process ``rank`` of
    ``world_size``; with ``is_instance`` train batches are ``(images, targets, indices)``.
    ``loader=None`` picks :func:`default_loader`."""
    return _LOADERS[_check(dataset)](
        batch_size=batch_size, num_workers=num_workers, is_instance=is_instance,
        data_folder=data_folder, loader=loader or default_loader(dataset), device=device,
        seed=seed, channels_last=channels_last, drop_last=drop_last, rank=rank,
        world_size=world_size)


def get_sample_dataloaders(dataset: str, batch_size: int = 64, num_workers: int = 8,
                           data_folder: str | Path = "./data", k: int = 16384,
                           mode: str = "exact", is_sample: bool = True, percent: float = 1.0,
                           loader: str | None = None, device: torch.device | str = "cpu",
                           seed: int = 0, channels_last: bool = False,
                           drop_last: bool = False, rank: int = 0, world_size: int = 1
                           ) -> tuple[Loader, Loader, int]:
    """CRD loaders of ``dataset``: train batches ``(images, targets, indices, contrast_idx)``,
    the indices referring to the whole training split (also in a sharded, multi-process run)."""
    if _check(dataset) not in _SAMPLE_LOADERS:
        raise UserError(f"contrastive sampling (--distill crd) is not available for --dataset "
                        f"{dataset}; it is for: {', '.join(_SAMPLE_LOADERS)}")
    return _SAMPLE_LOADERS[dataset](
        batch_size=batch_size, num_workers=num_workers, k=k, mode=mode, is_sample=is_sample,
        percent=percent, data_folder=data_folder, loader=loader or default_loader(dataset),
        device=device, seed=seed, channels_last=channels_last, drop_last=drop_last, rank=rank,
        world_size=world_size)


def sample_k(dataset: str, k: int, percent: float = 1.0) -> int:
    """The number of CRD negatives per sample that :func:`get_sample_dataloaders` yields for a
    requested ``k`` (digits caps it to what its small training split allows)."""
    if _check(dataset) == "digits":
        return digits.digits_sample_k(k, percent)
    return k


def load_test_split(dataset: str, data_folder: str | Path = "./data") -> tuple[Tensor, Tensor]:
    """Test images as a uint8 (N, 3, 32, 32) tensor and their int64 labels (in-memory sets)."""
    if _check(dataset) == "imagenet":
        raise UserError("ImageNet's validation split is read from JPEG folders, not held in "
                        "memory; use get_test_loader('imagenet', ...)")
    if dataset == "cifar100":
        return cifar100.load_cifar100_test(data_folder)
    return digits.load_digits_test()


def get_test_loader(dataset: str, batch_size: int = 64, num_workers: int = 0,
                    data_folder: str | Path = "./data", device: torch.device | str = "cpu"):
    """The test split alone, unaugmented and in order (for ``validation.py``): reads only the
    test file, not the training set. ``num_workers`` is accepted for the CLI and unused (the
    data is already decoded in memory) except for ImageNet, whose ``val`` folder is read by a
    DataLoader with that many workers."""
    if _check(dataset) == "imagenet":
        return imagenet.get_imagenet_val_loader(str(data_folder), batch_size=batch_size,
                                                num_workers=num_workers)
    images, labels = load_test_split(dataset, data_folder)
    mean, std = normalization(dataset)
    return DeviceLoader(images, labels, batch_size=batch_size, mean=mean, std=std, shuffle=False,
                        augment=False, device=device)
