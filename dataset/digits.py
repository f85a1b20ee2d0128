"""``--dataset digits``: scikit-learn's bundled handwritten digits as a tiny offline image set.

``sklearn.datasets.load_digits`` holds 1,797 real 8x8 images of the digits 0-9 (values 0..16;
the UCI "Optical Recognition of Handwritten Digits" set). We scale values to 0..255
(``round(v * 255 / 16)``), upsample 8x8 -> 32x32 by nearest-neighbour replication (each pixel
becomes a 4x4 block: exact, no interpolated values, statistics unchanged) and repeat the grey
channel three times, so every CIFAR model runs unchanged. The split is 80/20, stratified by
class, with ``train_test_split(..., random_state=0)`` (1,437 train / 360 test), whose indices
are stored in ``digits_split.json`` (the split does not depend on the installed scikit-learn).
The images are read from the file scikit-learn ships (``datasets/data/digits.csv.gz``, what
``load_digits`` reads) without importing scikit-learn, which takes seconds. Training
augmentation is the CIFAR padded random crop without flips (a mirrored digit is another
symbol), normalized with the training split's own mean and std.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dataset.loaders import (ContrastConfig, ImageData, Loader, LoaderOptions, build_loaders,
                             check_options, memory_test_loader, to_nchw)
from dataset.cifar100 import CIFAR_SCHEDULE
from dataset.registry import DatasetSpec, register_dataset

NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2
UPSAMPLE = 4  # 8x8 -> 32x32
#: The train and test indices of the split, in the order train_test_split returns them.
SPLIT_FILE = Path(__file__).with_name("digits_split.json")


def _to_rgb32(images8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> uint8 (N, 32, 32, 3) by nearest-neighbour upsampling."""
    scaled = np.rint(images8 * (255.0 / 16.0)).astype(np.uint8)
    big = scaled.repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
    return np.repeat(big[..., None], 3, axis=3)


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float64 0..16, labels int64)``: scikit-learn's bundled file read
    directly, else (a scikit-learn that keeps it elsewhere) through ``load_digits``."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # imported here: scikit-learn loads slowly

    raw = load_digits()
    return raw.images, raw.target.astype(np.int64)


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The stored ``(train, test)`` indices (:data:`SPLIT_FILE`)."""
    with open(SPLIT_FILE) as fh:
        split = json.load(fh)
    return np.asarray(split["train"], dtype=np.int64), np.asarray(split["test"], dtype=np.int64)


def load_digits_data() -> ImageData:
    """The digits set, split and upsampled; ``mean``/``std`` from the training split."""
    raw_images, labels = bundled_digits()
    train_idx, test_idx = split_indices()
    images = _to_rgb32(raw_images)
    train_x = images[train_idx]
    scaled = train_x.astype(np.float64) / 255.0
    mean = tuple(float(v) for v in scaled.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in scaled.std(axis=(0, 1, 2)))
    return ImageData("digits", train_x, labels[train_idx], images[test_idx], labels[test_idx],
                     NUM_CLASSES, mean, std, flip=False, padding=4)


def digits_normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the training split on the [0, 1] scale."""
    data = load_digits_data()
    return data.mean, data.std


def load_digits_test(data_folder: str | Path = "./data") -> tuple[Tensor, Tensor]:
    """Test split as (uint8 (360, 3, 32, 32) tensor, int64 labels tensor); ``data_folder``
    unused (the set ships with scikit-learn)."""
    data = load_digits_data()
    return to_nchw(data.test_images), torch.from_numpy(data.test_labels)


def max_negatives(labels: np.ndarray, percent: float = 1.0) -> int:
    """The most CRD negatives every class can draw without replacement (pools cut to
    ``int(len(pool of class 0) * percent)`` when ``percent < 1``, see :mod:`dataset.contrast`)."""
    pools = len(labels) - np.bincount(labels)
    cap = int(pools.min())
    if 0 < percent < 1:
        cap = min(cap, int(pools[0] * percent))
    return max(cap, 1)


def digits_sample_k(k: int, percent: float = 1.0) -> int:
    """The number of CRD negatives the digits loaders actually draw for a requested ``k``."""
    return min(k, max_negatives(load_digits_data().train_labels, percent))


def digits_loaders(options: LoaderOptions) -> tuple[Loader, Loader, int]:
    """Digits train/test loaders and ``n_data`` for ``options`` (``data_folder`` unused)."""
    check_options(options.loader)
    return build_loaders(load_digits_data(), options)


def digits_sample_loaders(options: LoaderOptions, contrast: ContrastConfig
                          ) -> tuple[Loader, Loader, int]:
    """Digits loaders for CRD; ``contrast.k`` is capped silently to :func:`max_negatives` of
    the training split and ``contrast.percent`` (see :func:`digits_sample_k`)."""
    check_options(options.loader, contrast)
    data = load_digits_data()
    capped = min(contrast.k, max_negatives(data.train_labels, contrast.percent))
    return build_loaders(data, options, replace(contrast, k=capped))


def digits_test_loader(options: LoaderOptions) -> Loader:
    """The test split alone, unaugmented and in order, normalized with the training split's
    statistics."""
    data = load_digits_data()
    return memory_test_loader(to_nchw(data.test_images), torch.from_numpy(data.test_labels),
                              data.mean, data.std, options)


def get_digits_dataloaders(batch_size: int = 64, num_workers: int = 8,
                           is_instance: bool = False, data_folder: str | Path = "./data",
                           loader: str = "device", device: torch.device | str = "cpu",
                           seed: int = 0, channels_last: bool = False,
                           drop_last: bool = False, rank: int = 0, world_size: int = 1
                           ) -> tuple[Loader, Loader, int]:
    """Digits train/test loaders and ``n_data`` (``data_folder`` unused: the set ships with
    scikit-learn)."""
    return digits_loaders(LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder, loader=loader,
        device=device, seed=seed, channels_last=channels_last, drop_last=drop_last, rank=rank,
        world_size=world_size, is_instance=is_instance))


def get_digits_dataloaders_sample(batch_size: int = 64, num_workers: int = 8, k: int = 16384,
                                  mode: str = "exact", is_sample: bool = True,
                                  percent: float = 1.0, data_folder: str | Path = "./data",
                                  loader: str = "device", device: torch.device | str = "cpu",
                                  seed: int = 0, channels_last: bool = False,
                                  drop_last: bool = False, rank: int = 0, world_size: int = 1
                                  ) -> tuple[Loader, Loader, int]:
    """Digits loaders for CRD. ``k`` is capped silently to :func:`max_negatives` of the training
    split and ``percent`` (see :func:`digits_sample_k`), so negatives are always drawn without
    replacement; size the CRD memory with the capped value."""
    return digits_sample_loaders(
        LoaderOptions(batch_size=batch_size, num_workers=num_workers, data_folder=data_folder,
                      loader=loader, device=device, seed=seed, channels_last=channels_last,
                      drop_last=drop_last, rank=rank, world_size=world_size),
        ContrastConfig(k=k, mode=mode, is_sample=is_sample, percent=percent))


SPEC = register_dataset(DatasetSpec(
    name="digits", classes=NUM_CLASSES, stats=digits_normalization, schedule=CIFAR_SCHEDULE,
    default_loader="device", loaders=digits_loaders, sample_loaders=digits_sample_loaders,
    test_loader=digits_test_loader, test_split=load_digits_test, sample_k=digits_sample_k,
    model_zoo="cifar", image_size=32, description="scikit-learn's bundled digits, offline"))
