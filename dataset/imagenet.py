"""ImageNet data loaders over an ImageFolder tree, as in the CRD/RepDistiller ImageNet setup.

Expected layout::

    <data_folder>/train/<class>/*.JPEG
    <data_folder>/val/<class>/*.JPEG      (val images sorted into class folders)

Training augmentation is the standard one of He et al. 2016 as implemented by torchvision's
reference scripts (RandomResizedCrop 224 + horizontal flip); evaluation resizes to 256 and
centre-crops 224. Both normalize with the ImageNet channel mean and std.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets, transforms

from helper.errors import UserError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
LAYOUT = "<data_folder>/train/<class>/*.JPEG and <data_folder>/val/<class>/*.JPEG"


class ImageFolderInstance(datasets.ImageFolder):
    """ImageFolder returning ``(image, target, index)``; the index feeds instance-level methods
    (CRD's memory bank)."""

    def __getitem__(self, index: int):
        img, target = super().__getitem__(index)
        return img, target, index


def imagenet_transform(train: bool) -> transforms.Compose:
    """Standard ImageNet train (random-resized crop + flip) or eval (resize + centre crop)."""
    normalize = transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if train:
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    return transforms.Compose(steps + [transforms.ToTensor(), normalize])


def _image_folder(folder: str, train: bool, instance: bool) -> datasets.ImageFolder:
    if not os.path.isdir(folder):
        raise UserError(f"ImageNet folder {folder} not found; expected {LAYOUT}")
    cls = ImageFolderInstance if instance else datasets.ImageFolder
    try:
        return cls(folder, transform=imagenet_transform(train))
    except FileNotFoundError as err:  # no class folders, or a class folder without images
        raise UserError(f"no images in {folder} ({err}); expected {LAYOUT}") from None


def get_imagenet_dataloaders(data_folder: str, batch_size: int = 256, num_workers: int = 8,
                             is_instance: bool = False, distributed: bool = False
                             ) -> tuple[DataLoader, DataLoader, int, int]:
    """Train and validation loaders for the ImageFolder tree under ``data_folder``.

    Returns ``(train_loader, val_loader, n_data, num_classes)``. With ``is_instance`` the train
    set yields ``(image, target, index)``. With ``distributed`` (needs an initialised
    ``torch.distributed`` process group) the train set is split across processes by a
    :class:`DistributedSampler` — call ``train_loader.sampler.set_epoch(epoch)`` each epoch —
    while every process evaluates the whole validation set, so metrics are exact (no padding
    duplicates). ``batch_size`` is per process. Memory is pinned when CUDA is available.
    """
    train_set = _image_folder(os.path.join(data_folder, "train"), True, is_instance)
    val_set = _image_folder(os.path.join(data_folder, "val"), False, False)
    if val_set.classes != train_set.classes:
        raise UserError(f"class folders of {os.path.join(data_folder, 'val')} differ from "
                        f"those of {os.path.join(data_folder, 'train')} "
                        f"({len(val_set.classes)} vs {len(train_set.classes)} classes); "
                        f"expected {LAYOUT}")

    train_sampler = None
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise UserError("distributed ImageNet loading needs torch.distributed to be "
                            "initialised first (launch with torchrun)")
        train_sampler = DistributedSampler(train_set, shuffle=True)

    common = {"batch_size": batch_size, "num_workers": num_workers,
              "pin_memory": torch.cuda.is_available(), "persistent_workers": num_workers > 0}
    train_loader = DataLoader(train_set, shuffle=train_sampler is None, sampler=train_sampler,
                              **common)
    val_loader = DataLoader(val_set, shuffle=False, **common)
    return train_loader, val_loader, len(train_set), len(train_set.classes)
