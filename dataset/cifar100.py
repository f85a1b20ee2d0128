"""CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009).

Reads the official ``cifar-100-python/{train,test,meta}`` files under ``data_folder`` as they
are (Python 2 protocol-2 pickles; their strings read as ``encoding='latin1'`` gives them; ``str``
or ``bytes`` keys both accepted, as any pickler writes them; no checksum assumptions about files
already present). They are never unpickled: :func:`helper.pickle_reader.read_pickle` walks their
opcodes and builds only dicts, lists, tuples, str, bytes, numbers and numeric numpy arrays, the
arrays itself with ``np.frombuffer`` from the bytes in the file. No global is imported or called:
the names of numpy's array layout are read as tokens, and a file naming any other global is
refused, naming it. A file larger than its images can take is refused before it is read, every
declared length is checked against what is left of the file, an array's raw bytes must match its
shape exactly and hold at most 50,000 images (``train``; 10,000 for ``test``) of 3072 bytes, and
containers nest at most :data:`helper.pickle_reader.MAX_DEPTH` levels. The content is checked too
(uint8 ``(N, 3072)`` data, ``N`` integer labels in 0..99, 100 fine and 20 coarse label names).
Missing files are downloaded once with torchvision's download utility, under a socket timeout,
and the archive's md5 is verified before it is unpacked. Anything that goes wrong ends in a
one-line :class:`helper.errors.UserError` naming the file or folder.

The loaders reproduce the CRD benchmark's data pipeline (Tian et al., CRD, ICLR 2020;
``get_cifar100_dataloaders`` and ``get_cifar100_dataloaders_sample`` of RepDistiller).
"""
from __future__ import annotations

import contextlib
import reprlib
import socket
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import torch
from torch import Tensor

from dataset.loaders import (ContrastConfig, ImageData, Loader, LoaderOptions, build_loaders,
                             check_options, memory_test_loader)
from dataset.registry import DatasetSpec, Schedule, register_dataset, requested_k
from helper.errors import UserError
from helper.files import NotRegularFile, open_regular
from helper.pickle_reader import PickleError, RefusedGlobal, read_pickle

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"
DIRNAME = "cifar-100-python"
FILES = ("train", "test", "meta")
NUM_CLASSES = 100
#: Images in each split of the official set: the most a file may hold (other names: train's).
MAX_IMAGES = {"train": 50_000, "test": 10_000}
IMAGE_BYTES = 3 * 32 * 32
#: File bytes one image may take: its pixels twice (Python 3 writes bytes at protocol 2 as
#: UTF-8 text) plus a generous 1 KiB for its file name and labels.
_MAX_BYTES_PER_IMAGE = 2 * IMAGE_BYTES + 1024
MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
DOWNLOAD_TIMEOUT_S = 30.0


def download_url(url: str, root: str, filename: str, md5: str) -> None:
    """torchvision's ``download_url`` (imported when called: torchvision takes seconds to import)."""
    from torchvision.datasets import utils

    utils.download_url(url, root, filename=filename, md5=md5)


def check_integrity(path: str, md5: str) -> bool:
    """torchvision's md5 check of a downloaded file."""
    from torchvision.datasets import utils

    return utils.check_integrity(path, md5)


def extract_archive(path: str, root: str) -> None:
    """torchvision's archive extraction."""
    from torchvision.datasets import utils

    utils.extract_archive(path, root)


def cifar100_dir(data_folder: str | Path = "./data") -> Path:
    """The ``cifar-100-python`` directory under ``data_folder``."""
    return Path(data_folder).expanduser() / DIRNAME


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give every socket opened inside the block a timeout (torchvision's download has none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(err: BaseException) -> str:
    """First line of an exception's message (messages here must stay on one line)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _missing(folder: Path) -> list[str]:
    return [name for name in FILES if not (folder / name).is_file()]


def ensure_cifar100(data_folder: str | Path = "./data", download: bool = True,
                    timeout: float = DOWNLOAD_TIMEOUT_S, url: str = URL,
                    md5: str = MD5) -> Path:
    """Make sure ``data_folder/cifar-100-python/{train,test,meta}`` exist; return that folder.

    Files already there are used as they are. Otherwise the archive is downloaded from ``url``
    (each socket operation limited to ``timeout`` seconds; an archive already in
    ``data_folder`` with the right md5 is reused), its md5 checked, and it is unpacked.
    """
    root = Path(data_folder).expanduser()
    folder = root / DIRNAME
    missing = _missing(folder)
    if not missing:
        return folder
    where = (f"CIFAR-100 files {', '.join(missing)} are missing from {folder}; put the "
             f"unpacked {ARCHIVE} ({url}) there or pass --data_folder")
    if not download:
        raise UserError(where)
    archive = root / ARCHIVE
    corrupt = (f"downloaded CIFAR-100 archive {archive} is incomplete or corrupt (md5 is not "
               f"{md5}); delete it and retry")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(timeout):
            download_url(url, str(root), filename=ARCHIVE, md5=md5)
    except Exception as err:  # network, HTTP, disk: all end in one line naming the folder
        if isinstance(err, RuntimeError) and archive.is_file():
            raise UserError(corrupt) from err  # torchvision's own md5 check failed
        raise UserError(f"{where} (download failed: {_reason(err)})") from err
    if not check_integrity(str(archive), md5):
        raise UserError(corrupt)
    try:
        extract_archive(str(archive), str(root))
    except Exception as err:  # tarfile/OS errors of any kind: say which file
        raise UserError(f"cannot unpack CIFAR-100 archive {archive} ({_reason(err)})") from err
    missing = _missing(folder)
    if missing:
        raise UserError(f"CIFAR-100 archive {archive} did not contain {', '.join(missing)} "
                        f"under {DIRNAME}/")
    return folder


def _as_str(value: str | bytes) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else value


_CONTENT = "a CIFAR file holds only dicts, lists, bytes, str, numbers and numpy arrays"
_REDOWNLOAD = "delete it and download CIFAR-100 again"


def max_images(path: Path) -> int:
    """The most images ``path`` may hold: 10,000 for ``test``, 50,000 for any other name."""
    return MAX_IMAGES.get(path.name, MAX_IMAGES["train"])


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading, if it is a regular file (a FIFO would block the read)."""
    try:
        return open_regular(path)
    except FileNotFoundError as err:
        raise UserError(f"CIFAR-100 file {path} is missing") from err
    except NotRegularFile as err:
        if err.kind == "directory":
            raise UserError(f"CIFAR-100 file {path} is a directory, not a file; {_REDOWNLOAD}") from None
        raise UserError(f"CIFAR-100 file {path} is not a regular file (a FIFO, socket or "
                        f"device); {_REDOWNLOAD}") from None
    except OSError as err:
        raise UserError(f"cannot read CIFAR-100 file {path} ({_reason(err)})") from None


def load_pickle(path: Path, images: int | None = None) -> dict[str, object]:
    """An official CIFAR file's dict, read by :func:`helper.pickle_reader.read_pickle` (never
    unpickled); keys normalized to ``str``, Python 2 strings as latin-1 ``str``.

    Numpy arrays may hold at most ``images`` (default: :func:`max_images` of the file's name)
    images' bytes, and the file at most what a pickle of that many images with their names
    takes (a larger one is refused before it is read); arrays are read-only views of the bytes
    read from the file. A global other than numpy's array layout stops with a
    :class:`UserError` naming the file and the global; any other damage, or structure a CIFAR
    file does not have, with one naming the file and what was found.
    """
    images = max_images(path) if images is None else images
    with _open_regular(path) as f:
        try:
            obj = read_pickle(f, max_array_bytes=images * IMAGE_BYTES,
                              max_file_bytes=images * _MAX_BYTES_PER_IMAGE + 2**20)
        except RefusedGlobal as err:
            raise UserError(f"{path}: refused to unpickle {err.qualname} ({_CONTENT}); "
                            f"{_REDOWNLOAD}") from None
        except (PickleError, OSError) as err:
            reason = str(err) if isinstance(err, PickleError) else _reason(err)
            raise UserError(f"cannot read CIFAR-100 file {path} ({reason}); "
                            "it is truncated or not a CIFAR-100 python file - delete it and "
                            "download again") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR-100 file {path} holds a {type(obj).__name__}, not a dict; "
                        f"{_REDOWNLOAD}")
    if not all(isinstance(k, (str, bytes)) for k in obj):
        raise UserError(f"CIFAR-100 file {path} has keys that are not names; {_REDOWNLOAD}")
    return {_as_str(k): v for k, v in obj.items()}


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _labels(value: object, key: str, path: Path) -> np.ndarray:
    """``value`` as int64 labels, or a :class:`UserError` saying why it is not a list of ints."""
    bad = f"CIFAR-100 file {path}: {key!r} "
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise UserError(f"{bad}is a {value.ndim}-D array, expected a list of integers; "
                            f"{_REDOWNLOAD}")
        if value.dtype.kind not in "iu":
            raise UserError(f"{bad}are not integers (dtype {value.dtype}); {_REDOWNLOAD}")
        return value.astype(np.int64)
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{bad}is a {type(value).__name__}, expected a list of integers; "
                        f"{_REDOWNLOAD}")
    for item in value:
        if not _is_int(item):
            shown = reprlib.repr(item)
            shown = shown if len(shown) <= 30 else shown[:27] + "..."
            raise UserError(f"{bad}are not integers (found the {type(item).__name__} {shown}); "
                            f"{_REDOWNLOAD}")
    try:
        return np.asarray(value, dtype=np.int64).reshape(len(value))
    except OverflowError:
        raise UserError(f"{bad}holds integers too large to be labels; {_REDOWNLOAD}") from None


def read_cifar100_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One split file -> (images uint8 (N, 32, 32, 3) HWC, fine labels int64 (N,)).

    At most :func:`max_images` images (50,000; 10,000 in a file named ``test``)."""
    path = Path(path)
    entry = load_pickle(path)
    for key in ("data", "fine_labels"):
        if key not in entry:
            raise UserError(f"CIFAR-100 file {path} has no {key!r} entry "
                            f"(keys: {', '.join(sorted(entry))})")
    data = entry["data"]
    if not isinstance(data, np.ndarray):
        raise UserError(f"CIFAR-100 file {path}: 'data' is a {type(data).__name__}, expected a "
                        f"uint8 numpy array (N, 3072); {_REDOWNLOAD}")
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES or data.dtype != np.uint8:
        raise UserError(f"CIFAR-100 file {path}: 'data' is {data.dtype} {data.shape}, expected "
                        "uint8 (N, 3072)")
    if len(data) == 0:
        raise UserError(f"CIFAR-100 file {path} holds no images; {_REDOWNLOAD}")
    labels = _labels(entry["fine_labels"], "fine_labels", path)
    if len(labels) != len(data):
        raise UserError(f"CIFAR-100 file {path}: {len(labels)} fine labels for {len(data)} "
                        "images")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UserError(f"CIFAR-100 file {path}: fine labels outside 0..{NUM_CLASSES - 1} "
                        f"(from {labels.min()} to {labels.max()})")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar100_meta(data_folder: str | Path = "./data") -> dict[str, list[str]]:
    """``fine_label_names`` (100) and ``coarse_label_names`` (20) as lists of ``str``."""
    path = cifar100_dir(data_folder) / "meta"
    meta = load_pickle(path)
    out = {}
    for key, count in (("fine_label_names", NUM_CLASSES), ("coarse_label_names", 20)):
        if key not in meta:
            raise UserError(f"CIFAR-100 file {path} has no {key!r} entry")
        names = meta[key]
        if not isinstance(names, (list, tuple)) or not all(isinstance(v, (str, bytes))
                                                           for v in names):
            raise UserError(f"CIFAR-100 file {path}: {key!r} is not a list of names; "
                            f"{_REDOWNLOAD}")
        if len(names) != count:
            raise UserError(f"CIFAR-100 file {path}: {len(names)} {key}, expected {count}")
        out[key] = [_as_str(v) for v in names]
    return out


def load_cifar100(data_folder: str | Path = "./data", download: bool = True) -> ImageData:
    """Both splits in memory (downloading them first if needed)."""
    folder = ensure_cifar100(data_folder, download=download)
    train_x, train_y = read_cifar100_file(folder / "train")
    test_x, test_y = read_cifar100_file(folder / "test")
    return ImageData("cifar100", train_x, train_y, test_x, test_y, NUM_CLASSES, MEAN, STD,
                     flip=True, padding=4)


def load_cifar100_test(data_folder: str | Path = "./data") -> tuple[Tensor, Tensor]:
    """Test split as (uint8 (N, 3, 32, 32) tensor, int64 labels tensor)."""
    folder = ensure_cifar100(data_folder)
    images, labels = read_cifar100_file(folder / "test")
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(labels))


def cifar100_loaders(options: LoaderOptions) -> tuple[Loader, Loader, int]:
    """CIFAR-100 train/test loaders and ``n_data`` for ``options``."""
    check_options(options.loader)
    return build_loaders(load_cifar100(options.data_folder), options)


def cifar100_sample_loaders(options: LoaderOptions, contrast: ContrastConfig
                            ) -> tuple[Loader, Loader, int]:
    """CIFAR-100 loaders for CRD with ``contrast`` sampling, for ``options``."""
    check_options(options.loader, contrast)
    return build_loaders(load_cifar100(options.data_folder), options, contrast)


def cifar100_test_loader(options: LoaderOptions) -> Loader:
    """The test split alone, unaugmented and in order; reads only the ``test`` file."""
    images, labels = load_cifar100_test(options.data_folder)
    return memory_test_loader(images, labels, MEAN, STD, options)


def get_cifar100_dataloaders(batch_size: int = 64, num_workers: int = 8,
                             is_instance: bool = False, data_folder: str | Path = "./data",
                             loader: str = "device", device: torch.device | str = "cpu",
                             seed: int = 0, channels_last: bool = False,
                             drop_last: bool = False, rank: int = 0, world_size: int = 1
                             ) -> tuple[Loader, Loader, int]:
    """CIFAR-100 train/test loaders and ``n_data``; with ``is_instance`` train batches are
    ``(images, targets, indices)``."""
    return cifar100_loaders(LoaderOptions(
        batch_size=batch_size, num_workers=num_workers, data_folder=data_folder, loader=loader,
        device=device, seed=seed, channels_last=channels_last, drop_last=drop_last, rank=rank,
        world_size=world_size, is_instance=is_instance))


def get_cifar100_dataloaders_sample(batch_size: int = 64, num_workers: int = 8, k: int = 16384,
                                    mode: str = "exact", is_sample: bool = True,
                                    percent: float = 1.0, data_folder: str | Path = "./data",
                                    loader: str = "device", device: torch.device | str = "cpu",
                                    seed: int = 0, channels_last: bool = False,
                                    drop_last: bool = False, rank: int = 0, world_size: int = 1
                                    ) -> tuple[Loader, Loader, int]:
    """CIFAR-100 loaders for CRD: train batches ``(images, targets, indices, contrast_idx)``
    with ``contrast_idx`` (B, k + 1), see :mod:`dataset.contrast`."""
    return cifar100_sample_loaders(
        LoaderOptions(batch_size=batch_size, num_workers=num_workers, data_folder=data_folder,
                      loader=loader, device=device, seed=seed, channels_last=channels_last,
                      drop_last=drop_last, rank=rank, world_size=world_size),
        ContrastConfig(k=k, mode=mode, is_sample=is_sample, percent=percent))


#: The CRD benchmark's schedule (CIFAR-100; digits too): 240 epochs, batch 64, x0.1 at
#: 150/180/210, weight decay 5e-4 (learning rate per architecture, RepDistiller's 0.05 / 0.01).
CIFAR_SCHEDULE = Schedule(epochs=240, batch_size=64, lr_decay_epochs="150,180,210",
                          weight_decay=5e-4)

SPEC = register_dataset(DatasetSpec(
    name="cifar100", classes=NUM_CLASSES, stats=(MEAN, STD), schedule=CIFAR_SCHEDULE,
    default_loader="device", loaders=cifar100_loaders, sample_loaders=cifar100_sample_loaders,
    test_loader=cifar100_test_loader, test_split=load_cifar100_test, sample_k=requested_k,
    model_zoo="cifar", train_images=MAX_IMAGES["train"], image_size=32,
    description="CIFAR-100 (<data_folder>/cifar-100-python/, downloaded when missing)"))
