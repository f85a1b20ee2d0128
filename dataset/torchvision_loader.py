"""The classic data path of the CRD/RepDistiller code: a ``torch.utils.data.Dataset`` of PIL
images with torchvision transforms, batched by a ``DataLoader`` (shuffle, workers, pinned
memory on CUDA).

It mirrors the original ``CIFAR100Instance`` / ``CIFAR100InstanceSample`` data sets (Tian et
al., CRD, ICLR 2020) over in-memory arrays, so it serves any of our image sets. Shuffling and
the workers' seeds come from a generator reseeded per epoch from ``(seed, epoch)``; per-sample
crops, flips and contrast draws use torch's global RNG as the original did (seeded per worker
by the DataLoader, so runs with ``num_workers > 0`` are reproducible).

In a data-parallel run (a :class:`~dataset.sharding.Shard` of several ranks) a shuffled split is
read through a :class:`~torch.utils.data.DistributedSampler` (seeded with ``seed``, moved to
each epoch by ``set_epoch``; padded to equal shards) and an unshuffled one through an exact
:class:`~dataset.sharding.ShardSampler`; the workers' seeds then also depend on the rank.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dataset.contrast import ContrastSampler
from dataset.device_loader import derive_seed
from dataset.sharding import Shard, ShardSampler
from dataset.epochs import SeededEpochs
from helper.errors import UserError

if TYPE_CHECKING:
    from torchvision import transforms


def train_transform(mean: Sequence[float], std: Sequence[float], flip: bool = True,
                    padding: int = 4, size: int = 32) -> transforms.Compose:
    """``RandomCrop(size, padding)`` (zero fill), optional ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize`` - the CRD benchmark's training augmentation."""
    from torchvision import transforms  # lazily: torchvision takes seconds to import

    steps: list = [transforms.RandomCrop(size, padding=padding)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def test_transform(mean: Sequence[float], std: Sequence[float]) -> transforms.Compose:
    """``ToTensor`` + ``Normalize``."""
    from torchvision import transforms  # lazily: torchvision takes seconds to import

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


class TwoViews:
    """Both transforms of one image, as ``[first(img), second(img)]`` (the authors' MultipleApply
    for MLKD's weak and strong views); a ``DataLoader`` batches it as a list of two tensors."""

    def __init__(self, first, second) -> None:
        self.first, self.second = first, second

    def __call__(self, img) -> list:
        return [self.first(img), self.second(img)]


class ArrayImageDataset(Dataset):
    """Images (N, H, W, 3) uint8 and labels as PIL images through ``transform``.

    Items are ``(img, target)``; ``(img, target, index)`` with ``with_index`` (the original's
    ``CIFAR100Instance``); ``(img, target, index, contrast_idx)`` with a CRD ``contrast``
    sampler (``CIFAR100InstanceSample`` with ``is_sample=True``).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None,
                 with_index: bool = False, contrast: ContrastSampler | None = None) -> None:
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.with_index = with_index or contrast is not None
        self.contrast = contrast

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        target = int(self.labels[index])
        if self.contrast is not None:
            return img, target, index, self.contrast.sample_one(index, target)
        if self.with_index:
            return img, target, index
        return img, target


def worker_message(err: UserError) -> str:
    """The one line of a :class:`UserError` a data set raised: a ``DataLoader`` worker's comes
    back wrapped in ``Caught UserError in DataLoader worker process N. Original Traceback ...``,
    whose last line ends with the original message."""
    text = str(err)
    if not text.startswith("Caught UserError"):
        return text
    last = text.strip().splitlines()[-1]
    return last.split("UserError: ", 1)[-1]


class TorchvisionLoader(SeededEpochs):
    """A ``DataLoader`` with per-epoch reseeding (``set_epoch``) and the same surface as
    :class:`dataset.device_loader.DeviceLoader`: ``len()``, ``.dataset``, ``.batch_size``.

    Batches are CPU tensors (pinned when ``pin_memory``); the training loop moves them.
    ``shard`` selects this process's part of the data set (see the module doc).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int,
                 seed: int = 0, pin_memory: bool = False, channels_last: bool = False,
                 drop_last: bool = False, shard: Shard = Shard(),
                 persistent_workers: bool = False) -> None:
        self._settings = dict(batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                              pin_memory=pin_memory, channels_last=channels_last,
                              drop_last=drop_last, shard=shard, persistent_workers=persistent_workers)
        self.seed = int(seed)
        self._epoch = 0
        self._generator = torch.Generator()
        self.channels_last = channels_last
        self.shard = shard
        sampler: Sampler | None = None
        if shard.world_size > 1:
            sampler = (DistributedSampler(dataset, num_replicas=shard.world_size, rank=shard.rank,
                                          shuffle=True, seed=self.seed) if shuffle
                       else ShardSampler(len(dataset), shard))
        self.loader = DataLoader(dataset, batch_size=batch_size,
                                 shuffle=shuffle and sampler is None, sampler=sampler,
                                 num_workers=num_workers, pin_memory=pin_memory,
                                 drop_last=drop_last, generator=self._generator,
                                 persistent_workers=persistent_workers and num_workers > 0)

    def with_seed(self, seed: int) -> "TorchvisionLoader":
        """A loader over the same data set object with base seed ``seed`` (its own DataLoader,
        generator and workers), at epoch 0."""
        return TorchvisionLoader(self.dataset, seed=seed, **self._settings)

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def sampler(self) -> Sampler:
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        rank_key = (self.shard.rank,) if self.shard.world_size > 1 else ()
        self._generator.manual_seed(derive_seed(self.seed, self._epoch, 0, *rank_key))
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self._epoch)
        self._epoch += 1
        return self._batches()

    def _batches(self) -> Iterator:
        try:
            for batch in self.loader:
                yield self._to_channels_last(batch) if self.channels_last else batch
        except UserError as err:
            raise UserError(worker_message(err)) from None

    @staticmethod
    def _to_channels_last(batch):
        images = batch[0]
        if isinstance(images, (list, tuple)):  # the (weak, strong) pair
            return ([x.contiguous(memory_format=torch.channels_last) for x in images], *batch[1:])
        return (images.contiguous(memory_format=torch.channels_last), *batch[1:])
