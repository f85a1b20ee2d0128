"""ImageNet data loaders over an ImageFolder tree, as in the CRD/RepDistiller ImageNet setup.

Expected layout::

    <data_folder>/train/<class>/*.JPEG
    <data_folder>/val/<class>/*.JPEG      (val images sorted into class folders)

Training augmentation is the standard one of He et al. 2016 as implemented by torchvision's
reference scripts (RandomResizedCrop 224 + horizontal flip); evaluation resizes to 256 and
centre-crops 224. Both normalize with the ImageNet channel mean and std.

The tree is indexed by this module (:class:`ImageFolder`), not torchvision's, so that a broken
tree ends in one line before any epoch starts:

* class folders are the sub-folders of ``train``/``val`` holding at least one image file
  (symlinked class folders count, as in torchvision); an empty one is no class, so it neither
  shifts the labels nor counts in a class-count error;
* below a class folder the walk does not follow directory symlinks (a link to ``.`` cannot
  loop); a file symlink is followed when it resolves to a regular file, wherever that lies;
* only regular files are opened: a FIFO, device, socket or broken link named like an image is
  refused with one line, never read (so nothing blocks);
* each image's header is read when the set is indexed (a few threads at a time): a file that
  is no image PIL reads is refused then, not mid-epoch. Pixels are decoded when a batch needs
  them; an image truncated after a readable header is one line then.

Loaders are :class:`~dataset.torchvision_loader.TorchvisionLoader` objects (``set_epoch``,
per-epoch reseeding); in a data-parallel run each process reads a ``DistributedSampler`` shard
of the training set and an exact shard of the validation set.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from dataset.loaders import LoaderOptions
from dataset.registry import DatasetSpec, Schedule, register_dataset, requested_k
from dataset.sharding import Shard
from dataset.torchvision_loader import TorchvisionLoader
from helper.errors import UserError
from helper import files

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
LAYOUT = "<data_folder>/train/<class>/*.JPEG and <data_folder>/val/<class>/*.JPEG"
#: Names of image files (torchvision's ``IMG_EXTENSIONS``), compared in lower case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Threads reading image headers while a folder is indexed (the reads wait on the disk).
CHECK_THREADS = 8


class ImageFolder(torch.utils.data.Dataset):
    """The images of an ImageFolder tree (``<folder>/<class>/**/<image>``) as ``(image, target)``,
    or ``(image, target, index)`` with ``with_index`` (the index feeds instance-level methods:
    CRD's memory bank). Indexed by :func:`index_image_folder`: every image is checked then, not
    when an epoch reaches it; ``classes``, ``samples`` and ``targets`` as torchvision's
    ``ImageFolder`` has them."""

    def __init__(self, folder: str, transform=None, with_index: bool = False) -> None:
        self.classes, self.samples = index_image_folder(folder)
        self.targets = [target for _, target in self.samples]
        self.transform = transform
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = load_image(path)
        if self.transform is not None:
            img = self.transform(img)
        return (img, target, index) if self.with_index else (img, target)


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading when it is a regular file, or a symlink that resolves to one;
    anything else (a FIFO, a device, a socket, a directory, a broken link) is one
    :class:`UserError` line and is never read from, so nothing blocks."""
    try:
        return files.open_regular(path)
    except files.NotRegularFile as err:
        raise UserError(f"{path} is not a regular file but a {err.kind}; an image folder holds image "
                        f"files: remove it") from None
    except OSError as err:
        what = "a broken symlink" if os.path.islink(path) and not os.path.exists(path) else err.strerror
        raise UserError(f"cannot open the image {path} ({what}); an image folder holds image files: "
                        f"remove it or make it readable") from None


def load_image(path: str) -> Image.Image:
    """The RGB image in ``path`` (a regular file: :func:`open_regular`); an unreadable or
    truncated image is one :class:`UserError` line naming it."""
    return _read_image(path, decode=True)


def check_image(path: str) -> None:
    """Read the header of the image in ``path`` (its format and size, not its pixels); one
    :class:`UserError` line when it is no regular file or no image PIL reads."""
    _read_image(path, decode=False)


def _read_image(path: str, decode: bool) -> Image.Image | None:
    with open_regular(path) as f:
        try:
            with Image.open(f) as img:
                return img.convert("RGB") if decode else None
        except UnidentifiedImageError:
            raise UserError(f"{path} is not an image (no format PIL reads); remove or replace it") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            reason = " ".join(str(err).split())[:200]
            raise UserError(f"{path} is not a readable image ({type(err).__name__}: {reason}); "
                            f"remove or replace it") from None


def _image_paths(class_folder: str, first_only: bool = False) -> list[str]:
    """The files under ``class_folder`` (any depth) whose names end in an image extension,
    sorted as torchvision sorts them (by folder, then name). Directory symlinks below the class
    folder are not followed (a link to ``.`` cannot loop); file symlinks are listed and
    :func:`open_regular` decides. ``first_only``: stop at the first one found."""
    found: list[str] = []
    pending = [class_folder]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as err:
            raise UserError(f"cannot read the folder {folder} ({err.strerror}); expected {LAYOUT}") from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(entry.path)
                if first_only:
                    return found
    return sorted(found, key=lambda path: (os.path.dirname(path), os.path.basename(path)))


def find_classes(folder: str) -> list[str]:
    """The class folders of an ImageFolder tree that hold at least one image file, sorted: its
    sub-folders (symlinked ones too, as torchvision takes them); an empty one is no class."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        raise UserError(f"cannot read the folder {folder} ({err.strerror}); expected {LAYOUT}") from None
    return [entry.name for entry in entries
            if entry.is_dir() and _image_paths(entry.path, first_only=True)]


def index_image_folder(folder: str) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, samples)`` of the ImageFolder tree ``folder``: the class folders holding
    images (:func:`find_classes`) and every image as ``(path, class index)``. Each image is
    checked (:func:`check_image`, a few threads at a time) before this returns; the first bad
    one, in sample order, is one :class:`UserError` line."""
    if not os.path.isdir(folder):
        raise UserError(f"ImageNet folder {folder} not found; expected {LAYOUT}")
    classes = find_classes(folder)
    if not classes:
        raise UserError(f"no class folder holding images in {folder} (image files end in "
                        f"{', '.join(IMAGE_EXTENSIONS)}); expected {LAYOUT}")
    samples = [(path, target) for target, name in enumerate(classes)
               for path in _image_paths(os.path.join(folder, name))]
    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
        for _ in pool.map(check_image, [path for path, _ in samples]):
            pass
    return classes, samples


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


def num_imagenet_classes(data_folder: str) -> int:
    """Number of class folders holding images under ``<data_folder>/train`` (``val`` when there
    is no ``train``, e.g. for validation only); empty class folders do not count."""
    for split in ("train", "val"):
        folder = os.path.join(data_folder, split)
        if os.path.isdir(folder):
            classes = find_classes(folder)
            if not classes:
                raise UserError(f"no class folder holding images in {folder}; expected {LAYOUT}")
            return len(classes)
    raise UserError(f"ImageNet folder {os.path.join(data_folder, 'train')} not found; "
                    f"expected {LAYOUT}")


def _check_same_classes(val: list[str], train: list[str], folder: str) -> None:
    """The class folders of ``val`` must be those of ``train`` (else labels would not match)."""
    if val != train:
        raise UserError(f"class folders of {os.path.join(folder, 'val')} differ from "
                        f"those of {os.path.join(folder, 'train')} "
                        f"({len(val)} vs {len(train)} classes holding images); expected {LAYOUT}")


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
    folder = str(options.data_folder)
    val_set = ImageFolder(os.path.join(folder, "val"), imagenet_transform(False))
    if os.path.isdir(os.path.join(folder, "train")):  # the labels the model was trained with
        _check_same_classes(val_set.classes, find_classes(os.path.join(folder, "train")), folder)
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
    train_set = ImageFolder(os.path.join(folder, "train"), imagenet_transform(True),
                            with_index=options.is_instance)
    val_set = ImageFolder(os.path.join(folder, "val"), imagenet_transform(False))
    _check_same_classes(val_set.classes, train_set.classes, folder)
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
    if options.strong_view:
        raise UserError("--dataset imagenet has no strong view: the weak/strong pair of each image that this "
                        "--distill reads is built for the in-memory data sets (cifar100, digits)")
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


#: ImageNet: 100 epochs, lr 0.1 per 256 images, x0.1 at 30/60/90, weight decay 1e-4 (DOT's
#: momentum spread 0.09: mdistiller's configs/imagenet/*/dot.yaml).
IMAGENET_SCHEDULE = Schedule(epochs=100, batch_size=256, lr_decay_epochs="30,60,90",
                             weight_decay=1e-4, lr_per_256=0.1, dot_delta=0.09)

SPEC = register_dataset(DatasetSpec(
    name="imagenet", classes=num_imagenet_classes, stats=(IMAGENET_MEAN, IMAGENET_STD),
    schedule=IMAGENET_SCHEDULE, default_loader="torchvision", loaders=imagenet_loaders,
    sample_loaders=None, test_loader=imagenet_test_loader, test_split=load_imagenet_test_split,
    sample_k=requested_k, model_zoo="imagenet", image_size=224,
    description="ImageFolder tree <data_folder>/train/<class>/, <data_folder>/val/<class>/"))
