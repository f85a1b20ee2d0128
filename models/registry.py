"""Model registries: ``model_dict[name](num_classes=100, **kw)`` as in the CRD/RepDistiller
code, and the ImageNet zoo ``imagenet_model_dict[name](num_classes=1000, **kw)``.

One class, :class:`ModelRegistry`, serves both zoos (timm's ``models/_registry.py``
``register_model``). The zoos stay separate because the CRD benchmark already gives
ImageNet-sounding names to CIFAR networks (``ResNet50``, ``MobileNetV2``): a name keeps the
meaning of its data set's zoo, and an unknown name is a one-line error listing that zoo's names.

Each constructor registers its *facts* with it (:class:`ModelFacts`): whether it has a deploy
form (``rep=True``: it takes ``blocktype=``, ``deploy=`` and ``fused=``), its learning-rate
group under RepDistiller's rule (``train_student.py``/``train_teacher.py``: 0.05, but 0.01 for
MobileNetV2 and the ShuffleNets) and whether CRD's ``helper/pretrain.py`` runs FT's paraphraser
init stage at lr 0.01 for it as a student (the ResNets and WRNs of the CIFAR zoo).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from helper.errors import UserError

#: RepDistiller's learning rate per learning-rate group (CIFAR-style schedules).
LR_GROUPS: dict[str, float] = {"default": 0.05, "low": 0.01}


@dataclass(frozen=True)
class ModelFacts:
    """What the rest of the code needs to know of a registered architecture.

    ``rep``: re-parameterizable (has a deploy form); ``default_lr``: the learning rate when
    ``--learning_rate`` is left out on a CIFAR-style schedule (RepDistiller's rule: 0.05, or
    0.01 for the ``"low"`` group); ``low_init_lr``: FT's paraphraser init stage runs at lr 0.01
    with this student (CRD's ``helper/pretrain.py``) instead of the run's learning rate.
    """

    rep: bool = False
    default_lr: float = LR_GROUPS["default"]
    low_init_lr: bool = False


class ModelRegistry:
    """One zoo: name -> constructor (:attr:`models`, a plain dict) plus each name's facts.

    ``kind`` is the zoo's key for :func:`zoo_named` (``"cifar"``, ``"imagenet"``), the one a
    data set's spec names as its ``model_zoo``; ``name`` the phrase naming it in messages
    (``"a CIFAR"``), ``label`` the qualifier of its unknown-name message (``"ImageNet "`` or
    empty) and ``default_classes`` the class count :meth:`build` defaults to. A zoo names no
    data set (models/ does not import dataset/): which ``--dataset`` selects it is the data-set
    registry's answer (:func:`dataset.zoo_dataset`).
    """

    def __init__(self, kind: str, name: str, default_classes: int, label: str = "") -> None:
        self.kind, self.name = kind, name
        self.default_classes, self.label = default_classes, label
        self.models: dict[str, Callable[..., nn.Module]] = {}
        self.rep_names: set[str] = set()
        self._facts: dict[str, ModelFacts] = {}

    def __repr__(self) -> str:
        return f"ModelRegistry({self.kind!r}, {len(self.models)} models)"

    def register(self, name: str | None = None, rep: bool = False, lr_group: str = "default",
                 low_init_lr: bool = False) -> Callable[[Callable], Callable]:
        """Decorator adding a constructor under ``name`` (default: its ``__name__``) with its
        facts: ``rep``, ``lr_group`` (a key of :data:`LR_GROUPS`) and ``low_init_lr``."""
        if lr_group not in LR_GROUPS:
            raise ValueError(f"unknown learning-rate group {lr_group!r}; known: {sorted(LR_GROUPS)}")
        facts = ModelFacts(rep=rep, default_lr=LR_GROUPS[lr_group], low_init_lr=low_init_lr)

        def decorator(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self.models:
                raise ValueError(f"{self.label}model {key!r} registered twice")
            self.models[key] = fn
            self._facts[key] = facts
            if rep:
                self.rep_names.add(key)
            return fn

        return decorator

    def is_rep(self, name: str) -> bool:
        """True when ``name`` is a re-parameterizable student (has a deploy form)."""
        return name in self.rep_names

    def facts(self, name: str) -> ModelFacts:
        """The facts registered with ``name``; an unknown name is :meth:`check_name`'s error."""
        return self._facts[self.check_name(name)]

    def check_name(self, name: str, flag: str = "--model") -> str:
        """``name`` if registered, else a one-line :class:`UserError` listing this zoo's names
        (:func:`engine.config.check_architecture` adds which ``--dataset`` selects another zoo
        holding the name)."""
        if name in self.models:
            return name
        raise UserError(f"unknown {self.label}model {name!r} given to {flag}; known "
                        f"{self.label}models: {', '.join(sorted(self.models))}")

    def build(self, name: str, num_classes: int | None = None, blocktype: str | None = None,
              deploy: bool = False, **kw) -> nn.Module:
        """Build ``name``; block type and deploy flag only reach re-parameterizable students."""
        self.check_name(name)
        if self.is_rep(name):
            if blocktype is not None:
                kw["blocktype"] = blocktype
            kw["deploy"] = deploy
        n_cls = self.default_classes if num_classes is None else num_classes
        return self.models[name](num_classes=n_cls, **kw)


CIFAR_ZOO = ModelRegistry("cifar", "a CIFAR", default_classes=100)
IMAGENET_ZOO = ModelRegistry("imagenet", "an ImageNet", default_classes=1000, label="ImageNet ")
#: Every zoo by kind, CIFAR first (CIFAR names keep their CIFAR meaning where names clash).
ZOOS: dict[str, ModelRegistry] = {zoo.kind: zoo for zoo in (CIFAR_ZOO, IMAGENET_ZOO)}


def zoo_named(kind: str) -> ModelRegistry:
    """The registry of ``kind`` (``"cifar"`` or ``"imagenet"``); else a ``ValueError``."""
    try:
        return ZOOS[kind]
    except KeyError:
        raise ValueError(f"unknown model zoo {kind!r}; known zoos: {', '.join(ZOOS)}") from None


# The CIFAR zoo under the names of the original code.
model_dict = CIFAR_ZOO.models
rep_model_names = CIFAR_ZOO.rep_names
register_model = CIFAR_ZOO.register
is_rep_model = CIFAR_ZOO.is_rep


def check_model_name(name: str, flag: str = "--model") -> str:
    """Return ``name`` if a CIFAR model, else raise a :class:`UserError` listing the known names."""
    return CIFAR_ZOO.check_name(name, flag)


def build_model(name: str, num_classes: int = 100, blocktype: str | None = None,
                deploy: bool = False, **kw) -> nn.Module:
    """Build the CIFAR model ``name`` (:meth:`ModelRegistry.build`)."""
    return CIFAR_ZOO.build(name, num_classes, blocktype=blocktype, deploy=deploy, **kw)
