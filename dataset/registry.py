"""Everything known about each data set, in one frozen :class:`DatasetSpec` per name.

A spec says how many classes the set has, how it is normalized, its optimization
:class:`Schedule` (the defaults of the flags left out), which loader kind it uses by default,
how its loaders are built (train/test, CRD sampling, the test split alone), how many CRD
negatives a requested ``k`` yields, its models' input size and which model zoo its
architectures come from. The functions of :mod:`dataset` ask the spec and never branch on a
data-set name.

This module is the mechanism only: a data set is one file that registers its spec with
:func:`register_dataset` (the built-in ones in :mod:`dataset.cifar100`, :mod:`dataset.digits`,
:mod:`dataset.imagenet` and any other file of the folder, all imported by :mod:`dataset`; one
outside the tree from a file of its own, with an entry script's ``--plugin``).
:func:`dataset_names` and :func:`dataset_spec` read the registry when called, so a set
registered before the command line is parsed is a ``--dataset`` choice of every entry script.
Unknown names raise a one-line :class:`helper.errors.UserError` listing the known ones. No
module outside :mod:`dataset` names a data set (``tests/test_dataset_names.py``); the default of
``--dataset`` is :data:`dataset.DEFAULT_DATASET`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

from dataset.loaders import LOADER_KINDS, ContrastConfig, Loader, LoaderOptions, Stats
from helper.errors import UserError

Normalization = tuple[Stats, Stats]
Loaders = tuple[Loader, Loader, int]

__all__ = ["MODEL_ZOOS", "DatasetSpec", "Schedule", "dataset_help", "dataset_names", "dataset_spec",
           "register_dataset", "requested_k", "zoo_dataset"]

#: The model zoos a spec may name (:func:`models.zoo_named`).
MODEL_ZOOS = ("cifar", "imagenet")


@dataclass(frozen=True)
class Schedule:
    """Defaults of the optimization flags for one data set."""

    epochs: int
    batch_size: int
    lr_decay_epochs: str
    weight_decay: float
    lr_per_256: float | None = None  # lr = lr_per_256 * batch_size / 256 (None: CRD's 0.05/0.01)
    dot_delta: float = 0.075  # --dot's momentum spread (DOT's configs: CIFAR-100/Tiny-ImageNet 0.075)


def requested_k(k: int, percent: float = 1.0) -> int:
    """``sample_k`` of the sets whose CRD loaders draw exactly the ``k`` negatives asked for."""
    return k


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: what the functions of :mod:`dataset` and the engine need to know.

    ``classes`` and ``stats`` are values, or callables computing them (ImageNet counts its
    class folders under ``data_folder``; digits derives its statistics from its training
    split). ``sample_loaders`` is ``None`` for a set without CRD support.
    """

    name: str
    classes: int | Callable[[str], int]
    stats: Normalization | Callable[[], Normalization]
    schedule: Schedule
    default_loader: str
    loaders: Callable[[LoaderOptions], Loaders]
    sample_loaders: Callable[[LoaderOptions, ContrastConfig], Loaders] | None
    test_loader: Callable[[LoaderOptions], Loader]
    test_split: Callable[[str | Path], tuple[Tensor, Tensor]]
    sample_k: Callable[[int, float], int]
    model_zoo: str
    #: images of the official training split, where the format fixes it (bounds ``--nce_k``)
    train_images: int | None = None
    #: height and width of the images its models take (the ONNX export's input size)
    image_size: int = 32
    #: what ``--dataset <name>`` means, for the flag's help
    description: str = ""

    def __post_init__(self) -> None:
        if self.default_loader not in LOADER_KINDS:
            raise ValueError(f"{self.name}: default loader {self.default_loader!r} is not one "
                             f"of {', '.join(LOADER_KINDS)}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"{self.name}: image size {self.image_size!r} is not a positive int")
        if self.model_zoo not in MODEL_ZOOS:
            raise ValueError(f"{self.name}: model zoo {self.model_zoo!r} is not one of "
                             f"{', '.join(MODEL_ZOOS)}")

    def num_classes(self, data_folder: str | Path = "./data") -> int:
        """The number of classes (read from ``data_folder`` where the spec says so)."""
        return self.classes(str(data_folder)) if callable(self.classes) else self.classes

    def normalization(self) -> Normalization:
        """Per-channel (mean, std) on the [0, 1] scale."""
        return self.stats() if callable(self.stats) else self.stats


#: The registered data sets by name, in registration order (the order the CLI lists them).
_SPECS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry under ``spec.name`` and return it; a name registered twice
    is a ``ValueError`` (a programming error, found at import)."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register_dataset takes a DatasetSpec, not {type(spec).__name__}")
    if spec.name in _SPECS:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    _SPECS[spec.name] = spec
    return spec


def dataset_names() -> tuple[str, ...]:
    """The names of the data sets registered now, in registration order."""
    return tuple(_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; a one-line :class:`UserError` listing the known names
    for any other."""
    spec = _SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return spec


def zoo_dataset(model_zoo: str) -> str:
    """The ``--dataset`` that selects model zoo ``model_zoo`` (a :data:`MODEL_ZOOS` kind): the
    first registered set whose spec names it, e.g. for a hint that a model belongs to another
    data set's zoo (models/ cannot name data sets). A ``ValueError`` when no set names it."""
    for spec in _SPECS.values():
        if spec.model_zoo == model_zoo:
            return spec.name
    raise ValueError(f"no registered data set uses the model zoo {model_zoo!r}")


def dataset_help() -> str:
    """The ``--dataset`` help: each registered set with its description."""
    return "; ".join(f"{spec.name}: {spec.description}" if spec.description else spec.name
                     for spec in _SPECS.values())

