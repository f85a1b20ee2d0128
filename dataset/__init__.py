"""Data sets of the benchmark, by name: ``cifar100`` (Krizhevsky 2009; the CRD benchmark of
Tian et al., ICLR 2020), ``digits`` (scikit-learn's 8x8 handwritten digits, an offline
stand-in) and ``imagenet`` (an ImageFolder tree, :mod:`dataset.imagenet`; its class count is
read from the folder), and any set registered with :func:`register_dataset`: a built-in set is
one file in this folder (importing :mod:`dataset` imports every module of it, so the file needs
no import line anywhere), another a file of its own imported before the command line is parsed
(``--plugin``). Unknown names raise :class:`helper.errors.UserError` listing the known ones.

What each set is (classes, statistics, schedule, loaders, model zoo) is its
:class:`dataset.registry.DatasetSpec`; the functions here ask :func:`dataset_spec` and never
branch on a name. The loader arguments are declared once, in
:class:`dataset.loaders.LoaderOptions`.

Every loader function takes ``rank`` and ``world_size``: in a data-parallel run each process
reads its shard of every training epoch and an exact shard of the test split
(:mod:`dataset.sharding`).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import torch
from torch import Tensor

from dataset.loaders import LOADER_KINDS, ContrastConfig, Loader, LoaderOptions
from dataset.registry import (DatasetSpec, Schedule, dataset_help, dataset_names, dataset_spec,
                              register_dataset, zoo_dataset)
# the benchmark's data sets, each one file registering its spec, first in --dataset's list in
# this order (any other module of this folder is imported at the end of this file)
from dataset import cifar100, digits, imagenet  # noqa: F401  (each registers its set)
from dataset.cifar100 import CIFAR_SCHEDULE
from dataset.imagenet import IMAGENET_SCHEDULE
from helper.errors import UserError

#: The data set of ``--dataset`` when the flag is left out (and of a file that records none):
#: CIFAR-100, the CRD benchmark's.
DEFAULT_DATASET = cifar100.SPEC.name
#: The built-in set that needs no download (scikit-learn's bundled digits): the offline tour of
#: ``scripts/quickstart.py``.
OFFLINE_DATASET = digits.SPEC.name

__all__ = ["CIFAR_SCHEDULE", "DEFAULT_DATASET", "IMAGENET_SCHEDULE", "LOADER_KINDS",
           "OFFLINE_DATASET", "ContrastConfig", "DatasetSpec", "LoaderOptions", "Schedule",
           "dataset_help", "dataset_names", "dataset_spec", "default_loader", "get_dataloaders",
           "get_sample_dataloaders", "get_test_loader", "load_test_split", "num_classes",
           "normalization", "register_dataset", "sample_k", "zoo_dataset"]


def num_classes(dataset: str, data_folder: str | Path = "./data") -> int:
    """Number of classes of ``dataset`` (ImageNet: class folders under ``data_folder``)."""
    return dataset_spec(dataset).num_classes(data_folder)


def default_loader(dataset: str) -> str:
    """The loader kind used when ``--loader`` is not given: ``device`` for the in-memory sets,
    ``torchvision`` for ImageNet's JPEG folders."""
    return dataset_spec(dataset).default_loader


def normalization(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) used to normalize ``dataset`` (on the [0, 1] scale)."""
    return dataset_spec(dataset).normalization()


def get_dataloaders(dataset: str, batch_size: int = 64, num_workers: int = 8,
                    data_folder: str | Path = "./data", is_instance: bool = False,
                    loader: str | None = None, device: torch.device | str = "cpu", seed: int = 0,
                    channels_last: bool = False, drop_last: bool = False, rank: int = 0,
                    world_size: int = 1, strong_view: bool = False) -> tuple[Loader, Loader, int]:
    """(train_loader, test_loader, n_data) of ``dataset`` for process ``rank`` of
    ``world_size``; with ``is_instance`` train batches are ``(images, targets, indices)``; with
    ``strong_view`` their images are the pair ``(weak, strong)`` (MLKD's strong augmentation).
    ``loader=None`` picks :func:`default_loader`."""
    spec = dataset_spec(dataset)
    return spec.loaders(LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder,
        loader=loader or spec.default_loader, device=device, seed=seed,
        channels_last=channels_last, drop_last=drop_last, rank=rank, world_size=world_size,
        is_instance=is_instance, strong_view=strong_view))


def get_sample_dataloaders(dataset: str, batch_size: int = 64, num_workers: int = 8,
                           data_folder: str | Path = "./data", k: int = 16384,
                           mode: str = "exact", is_sample: bool = True, percent: float = 1.0,
                           loader: str | None = None, device: torch.device | str = "cpu",
                           seed: int = 0, channels_last: bool = False,
                           drop_last: bool = False, rank: int = 0, world_size: int = 1
                           ) -> tuple[Loader, Loader, int]:
    """CRD loaders of ``dataset``: train batches ``(images, targets, indices, contrast_idx)``,
    the indices referring to the whole training split (also in a sharded, multi-process run)."""
    spec = dataset_spec(dataset)
    if spec.sample_loaders is None:
        able = [name for name in dataset_names() if dataset_spec(name).sample_loaders is not None]
        raise UserError(f"contrastive sampling (--distill crd) is not available for --dataset "
                        f"{dataset}; it is for: {', '.join(able)}")
    options = LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder,
        loader=loader or spec.default_loader, device=device, seed=seed,
        channels_last=channels_last, drop_last=drop_last, rank=rank, world_size=world_size)
    return spec.sample_loaders(options, ContrastConfig(k=k, mode=mode, is_sample=is_sample,
                                                       percent=percent))


def sample_k(dataset: str, k: int, percent: float = 1.0) -> int:
    """The number of CRD negatives per sample that :func:`get_sample_dataloaders` yields for a
    requested ``k`` (digits caps it to what its small training split allows)."""
    return dataset_spec(dataset).sample_k(k, percent)


def load_test_split(dataset: str, data_folder: str | Path = "./data") -> tuple[Tensor, Tensor]:
    """Test images as a uint8 (N, 3, 32, 32) tensor and their int64 labels (in-memory sets;
    ImageNet's JPEG folders raise a :class:`UserError`)."""
    return dataset_spec(dataset).test_split(data_folder)


def get_test_loader(dataset: str, batch_size: int = 64, num_workers: int = 0,
                    data_folder: str | Path = "./data",
                    device: torch.device | str = "cpu") -> Loader:
    """The test split alone, unaugmented and in order (for ``validation.py``): reads only the
    test file, not the training set. ``num_workers`` is accepted for the CLI and unused (the
    data is already decoded in memory) except for ImageNet, whose ``val`` folder is read by a
    DataLoader with that many workers."""
    return dataset_spec(dataset).test_loader(LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder, device=device))


# Last, so that a set's file may import anything of this package: every module of this folder,
# by file name, so that a built-in data set added as dataset/<name>.py registers itself (listed
# after the three above) with no import line here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
