"""ImageNet data loaders over an ImageFolder tree, as in the CRD/RepDistiller ImageNet setup.

Expected layout::

    <data_folder>/train/<class>/*.JPEG
    <data_folder>/val/<class>/*.JPEG      (val images sorted into class folders)

Training augmentation is the standard one of He et al. 2016 as implemented by torchvision's
reference scripts (RandomResizedCrop 224 + horizontal flip); evaluation resizes to 256 and
centre-crops 224. Both normalize with the ImageNet channel mean and std.

Loaders are :class:`~dataset.torchvision_loader.TorchvisionLoader` objects (``set_epoch``,
per-epoch reseeding); in a data-parallel run each process reads a ``DistributedSampler`` shard
of the training set and an exact shard of the validation set.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from dataset.loaders import LoaderOptions
from dataset.sharding import Shard
from dataset.torchvision_loader import TorchvisionLoader
from helper.errors import UserError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
LAYOUT = "<data_folder>/train/<class>/*.JPEG and <data_folder>/val/<class>/*.JPEG"


class ImageFolderInstance(torch.utils.data.Dataset):
    """The images of a torchvision ``ImageFolder`` as ``(image, target, index)``; the index feeds
    instance-level methods (CRD's memory bank)."""

    def __init__(self, folder: str, transform=None) -> None:
        from torchvision import datasets  # lazily: torchvision takes seconds to import

        self.images = datasets.ImageFolder(folder, transform=transform)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def classes(self) -> list[str]:
        return self.images.classes

    def __getitem__(self, index: int):
        img, target = self.images[index]
        return img, target, index


def imagenet_transform(train: bool):
    """Standard ImageNet train (random-resized crop + flip) or eval (resize + centre crop), a
    torchvision ``Compose``."""
    from torchvision import transforms  # lazily: torchvision takes seconds to import

    normalize = transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if train:
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    return transforms.Compose(steps + [transforms.ToTensor(), normalize])


def _image_folder(folder: str, train: bool, instance: bool) -> torch.utils.data.Dataset:
    from torchvision import datasets  # lazily: torchvision takes seconds to import

    if not os.path.isdir(folder):
        raise UserError(f"ImageNet folder {folder} not found; expected {LAYOUT}")
    cls = ImageFolderInstance if instance else datasets.ImageFolder
    try:
        return cls(folder, transform=imagenet_transform(train))
    except FileNotFoundError as err:  # no class folders, or a class folder without images
        raise UserError(f"no images in {folder} ({err}); expected {LAYOUT}") from None


def find_classes(folder: str) -> list[str]:
    """The class folders of an ImageFolder tree, as torchvision finds them."""
    from torchvision.datasets.folder import find_classes as torchvision_find_classes

    return torchvision_find_classes(folder)[0]


def num_imagenet_classes(data_folder: str) -> int:
    """Number of class folders under ``<data_folder>/train`` (``val`` when there is no
    ``train``, e.g. for validation only)."""
    for split in ("train", "val"):
        folder = os.path.join(data_folder, split)
        if os.path.isdir(folder):
            try:
                return len(find_classes(folder))
            except FileNotFoundError as err:
                raise UserError(f"no class folders in {folder} ({err}); expected {LAYOUT}") from None
    raise UserError(f"ImageNet folder {os.path.join(data_folder, 'train')} not found; "
                    f"expected {LAYOUT}")


def _loader(dataset: torch.utils.data.Dataset, options: LoaderOptions, *, shuffle: bool,
            shard: Shard, drop_last: bool = False) -> TorchvisionLoader:
    return TorchvisionLoader(dataset, batch_size=options.batch_size, shuffle=shuffle,
                             num_workers=options.num_workers, seed=options.seed,
                             pin_memory=torch.cuda.is_available(),
                             channels_last=options.channels_last, drop_last=drop_last,
                             shard=shard, persistent_workers=options.num_workers > 0)


def imagenet_test_loader(options: LoaderOptions) -> TorchvisionLoader:
    """The validation split alone (``<data_folder>/val``), in order; an exact shard of it for
    process ``options.rank`` of ``options.world_size`` (``loader`` and ``device`` unused)."""
    val_set = _image_folder(os.path.join(str(options.data_folder), "val"), False, False)
    return _loader(val_set, options, shuffle=False,
                   shard=options.shard(pad=False))


def get_imagenet_val_loader(data_folder: str, batch_size: int = 256, num_workers: int = 8,
                            rank: int = 0, world_size: int = 1) -> TorchvisionLoader:
    """The validation split alone (``<data_folder>/val``), in order; an exact shard of it for
    process ``rank`` of ``world_size``."""
    return imagenet_test_loader(LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder,
        loader="torchvision", rank=rank, world_size=world_size))


def load_imagenet_test_split(data_folder: str | Path = "./data") -> tuple[Tensor, Tensor]:
    """Not available: ImageNet's validation split is not held in memory (always raises)."""
    raise UserError("ImageNet's validation split is read from JPEG folders, not held in "
                    "memory; use get_test_loader('imagenet', ...)")


def _build(options: LoaderOptions
           ) -> tuple[TorchvisionLoader, TorchvisionLoader, int, int]:
    """``(train, val, n_data, num_classes)`` for ``options`` (see
    :func:`build_imagenet_loaders`)."""
    folder = str(options.data_folder)
    train_set = _image_folder(os.path.join(folder, "train"), True, options.is_instance)
    val_set = _image_folder(os.path.join(folder, "val"), False, False)
    if val_set.classes != train_set.classes:
        raise UserError(f"class folders of {os.path.join(folder, 'val')} differ from "
                        f"those of {os.path.join(folder, 'train')} "
                        f"({len(val_set.classes)} vs {len(train_set.classes)} classes); "
                        f"expected {LAYOUT}")
    train = _loader(train_set, options, shuffle=True, drop_last=options.drop_last,
                    shard=options.shard(pad=True))
    val = _loader(val_set, options, shuffle=False, shard=options.shard(pad=False))
    return train, val, len(train_set), len(train_set.classes)


def build_imagenet_loaders(data_folder: str, batch_size: int = 256, num_workers: int = 8,
                           is_instance: bool = False, seed: int = 0, rank: int = 0,
                           world_size: int = 1, channels_last: bool = False,
                           drop_last: bool = False
                           ) -> tuple[TorchvisionLoader, TorchvisionLoader, int, int]:
    """Train and validation loaders of process ``rank`` of ``world_size``.

    Returns ``(train_loader, val_loader, n_data, num_classes)``: the training set is read
    through a :class:`~torch.utils.data.DistributedSampler` when ``world_size > 1``
    (``set_epoch`` on the loader moves it to the next epoch), the validation set in exact,
    disjoint shards whose metrics add up over the processes (see :mod:`dataset.sharding`).
    ``batch_size`` is per process; ``n_data`` counts the whole training set.
    """
    return _build(LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder,
        loader="torchvision", seed=seed, channels_last=channels_last, drop_last=drop_last,
        rank=rank, world_size=world_size, is_instance=is_instance))


def imagenet_loaders(options: LoaderOptions
                     ) -> tuple[TorchvisionLoader, TorchvisionLoader, int]:
    """``(train, val, n_data)`` for ``options``; JPEG folders are read by the torchvision
    loader only."""
    if options.loader != "torchvision":
        raise UserError(f"--dataset imagenet reads JPEG folders with the torchvision loader, not "
                        f"--loader {options.loader}; leave --loader out or pass --loader "
                        f"torchvision")
    return _build(options)[:3]


def get_imagenet_loaders(batch_size: int = 256, num_workers: int = 8, is_instance: bool = False,
                         data_folder: str = "./data", loader: str = "torchvision",
                         device: torch.device | str = "cpu", seed: int = 0,
                         channels_last: bool = False, drop_last: bool = False, rank: int = 0,
                         world_size: int = 1) -> tuple[TorchvisionLoader, TorchvisionLoader, int]:
    """``(train, val, n_data)`` with the keywords of the CIFAR loaders (for
    :func:`dataset.get_dataloaders`); JPEG folders are read by the torchvision loader only."""
    return imagenet_loaders(LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder, loader=loader,
        device=device, seed=seed, channels_last=channels_last, drop_last=drop_last, rank=rank,
        world_size=world_size, is_instance=is_instance))


def get_imagenet_dataloaders(data_folder: str, batch_size: int = 256, num_workers: int = 8,
                             is_instance: bool = False, distributed: bool = False
                             ) -> tuple[TorchvisionLoader, TorchvisionLoader, int, int]:
    """Train and validation loaders for the ImageFolder tree under ``data_folder``.

    Returns ``(train_loader, val_loader, n_data, num_classes)``. With ``is_instance`` the train
    set yields ``(image, target, index)``. With ``distributed`` (needs an initialised
    ``torch.distributed`` process group; rank and world size are read from it) see
    :func:`build_imagenet_loaders`. ``batch_size`` is per process. Memory is pinned when CUDA is
    available.
    """
    rank, world_size = 0, 1
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise UserError("distributed ImageNet loading needs torch.distributed to be "
                            "initialised first (launch with torchrun)")
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return build_imagenet_loaders(data_folder, batch_size=batch_size, num_workers=num_workers,
                                  is_instance=is_instance, rank=rank, world_size=world_size)
