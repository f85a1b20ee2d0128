"""The method object every ``--distill`` name builds, and the registry that maps names to them.

A :class:`Distiller` owns its helper modules (regressors, embeddings, memory bank, connectors),
declares what the training loop must feed it (``needs_feats``, ``needs_preact`` and
``teacher_preact``, ``needs_index``, ``needs_strong_view``), lists what is trained with the
student (:meth:`trainable_modules`) and, for the two-stage methods, what the init stage trains
(:meth:`init_modules`, :meth:`init_loss`). Its ``forward`` returns the named loss terms
``{'cls', 'div', 'kd'}`` that the loop weights with ``-r``, ``-a`` and ``-b`` — the three criteria
of the CRD training loop.

Each method declares the :class:`Recipe` of its published row (its loss weights and, where the
published code differs from RepDistiller's rule, its learning rate): these are the defaults of
``-r``, ``-a``, ``-b`` and ``--learning_rate`` when ``--distill`` picks it.

A method with its own hyper-parameters declares them once, as a frozen :class:`Params`
dataclass named by its ``params_class``: each field is one flag ``--<field>`` (default, type,
choices and help in the field, see :func:`param`), :func:`add_method_flags` adds each distinct
class's flags once, with its :class:`helper.ranges.Range` where the value is bounded (what
:func:`engine.options.check_flag_values` checks), and :func:`build_distiller` hands the method the
instance read from the parsed flags (:meth:`Params.from_flags`), together with the
:class:`SharedParams` every method reads. No method reads the options object itself.

What the engine asks of a method is in its class: the features it reads, whether it stacks,
which loaders it needs (``sample_flags``: the contrastive sample loader and its negatives, capped
by the data set with :meth:`Distiller.with_negatives`), whether it takes ``--logit_stand``. No
module outside ``distiller_zoo`` names a method (``tests/test_method_registry.py``).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from helper.ranges import Range
from helper.util import dataclass_from_flags

from ..kd import DistillKL, standardize_logits

Feats = list[torch.Tensor]
P = TypeVar("P", bound="Params")
#: The loss terms every method returns, weighted by ``-r``, ``-a`` and ``-b``: cross-entropy,
#: the KL term and the method's own term.
CLS_TERM, DIV_TERM, OWN_TERM = "cls", "div", "kd"
#: What a field's metadata passes to ``argparse.add_argument``.
ARGPARSE_KEYS = ("type", "help", "choices")


def param(default: Any, type: Callable[[str], Any], help: str | None = None,
          choices: list | None = None, range: Range | None = None) -> Any:
    """A :class:`Params` field that is also the flag ``--<field name>``: its default is the
    flag's default, ``type``, ``help`` and ``choices`` go to ``argparse`` unchanged, and
    ``range`` (numeric flags) is what :func:`engine.options.check_flag_values` admits."""
    return field(default=default, metadata={"type": type, "help": help, "choices": choices, "range": range})


@dataclass(frozen=True)
class Params:
    """Base of the frozen dataclasses of hyper-parameters: one field per option.

    A subclass with ``title`` set declares its fields as flags in the argument group ``title``
    (:meth:`add_flags`, the flags' one declaration); :meth:`from_flags` reads exactly the fields
    from the parsed flags, each of which must be there.
    """

    #: the title of the ``argparse`` group of the flags
    title: ClassVar[str] = ""

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Add one flag ``--<name>`` per field (dest = field name), in an argument group."""
        group = parser.add_argument_group(cls.title)
        for f in fields(cls):
            if f.default is MISSING or "type" not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name} is no flag: declare it with param()")
            meta = {k: f.metadata[k] for k in ARGPARSE_KEYS if f.metadata.get(k) is not None}
            group.add_argument(f"--{f.name}", default=f.default, **meta)

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        """The :class:`helper.ranges.Range` of each bounded field, by flag name."""
        return {f.name: f.metadata["range"] for f in fields(cls) if f.metadata.get("range") is not None}

    @classmethod
    def from_flags(cls: type[P], flags: Mapping[str, Any]) -> P:
        """The instance of parsed flags (``vars`` of the namespace), which must define every
        field: a field without its flag is a programming error (:class:`TypeError`)."""
        return dataclass_from_flags(cls, flags)


@dataclass(frozen=True)
class SharedParams(Params):
    """The options every method reads, whose flags the entry script declares: the temperature
    of the ``div`` term (``--kd_T``), logit standardization (``--logit_stand``, Sun et al.,
    CVPR 2024) and the per-process batch size (``--batch_size``; SemCKD sizes its attention
    by it)."""

    kd_T: float = 4.0
    logit_stand: bool = False
    batch_size: int = 64


@dataclass(frozen=True)
class Recipe:
    """The published recipe of a method: the weights of ``cls`` (``-r``), ``div`` (``-a``) and
    ``kd`` (``-b``), its learning rate (None: RepDistiller's rule, 0.05 and 0.01 for
    MobileNetV2/ShuffleNets) and the temperature of ``div`` (``--kd_T``). ``source`` says where
    the numbers come from."""

    gamma: float
    alpha: float
    beta: float
    learning_rate: float | None = None
    source: str = "RepDistiller's scripts/run_cifar_distill.sh"
    kd_T: float = 4.0


@dataclass(frozen=True)
class SampleFlags:
    """The flags of a method's ``params_class`` that set the contrastive sample loader it reads
    (``dataset.get_sample_dataloaders``): ``k`` negatives per sample, drawn in ``mode``."""

    k: str
    mode: str


@dataclass
class BuildContext:
    """Everything a method's constructor may read.

    ``shared``: the options every method reads; ``params``: the method's own hyper-parameters
    (an instance of its ``params_class``, None when it has none); ``feat_s`` / ``feat_t``: the
    ``is_feat=True`` features of a small probe batch (pre-activation ones where the method reads
    them: :meth:`Distiller.preact_for`); ``n_data``: the training-set size.
    """

    shared: SharedParams
    params: Params | None
    student: nn.Module
    teacher: nn.Module
    feat_s: Feats
    feat_t: Feats
    n_data: int

    def params_as(self, cls: type[P]) -> P:
        """``params``, checked to be a ``cls`` (the method's ``params_class``)."""
        if not isinstance(self.params, cls):
            raise TypeError(f"expected {cls.__name__} parameters, got {type(self.params).__name__}")
        return self.params


@dataclass
class StepInputs:
    """One training step's outputs of student and teacher (teacher ones carry no gradient)."""

    feat_s: Feats | None
    logit_s: torch.Tensor
    feat_t: Feats | None
    logit_t: torch.Tensor
    target: torch.Tensor
    epoch: int
    index: torch.Tensor | None = None
    contrast_idx: torch.Tensor | None = None

    def zero(self) -> torch.Tensor:
        """A 0-dim zero on the logits' device: the ``kd`` term of methods without one."""
        return self.logit_s.new_zeros(())


def inner(feats: Feats) -> Feats:
    """The intermediate feature maps, ``feats[1:-1]`` (no stem output, no pooled embedding)."""
    return feats[1:-1]


def sum_terms(losses: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``sum(loss_group)`` as the CRD loop computes it, as a 0-dim tensor."""
    total = sum(losses, like.new_zeros(()))
    return total.reshape(())


def teacher_classifier(teacher: nn.Module) -> nn.Linear:
    """The teacher's classifier: its last ``nn.Linear`` submodule."""
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"the teacher {type(teacher).__name__} has no nn.Linear classifier")
    return linears[-1]


class Distiller(nn.Module):
    """Base class: cross-entropy ``cls``, KL ``div`` at ``kd_T`` and the method's own ``kd``."""

    name: ClassVar[str] = ""
    needs_feats: ClassVar[bool] = True
    needs_preact: ClassVar[bool] = False
    #: whether the teacher's features are the pre-activation ones (None: as ``needs_preact``);
    #: ReviewKD reads the student's after and the teacher's before the ReLU (:meth:`preact_for`)
    teacher_preact: ClassVar[bool | None] = None
    needs_index: ClassVar[bool] = False
    #: whether the method reads a strongly augmented second view of each image (MLKD): the loader
    #: yields both views and ``forward`` receives the student's and the teacher's logits of the
    #: strong one as ``logit_s_strong`` / ``logit_t_strong``
    needs_strong_view: ClassVar[bool] = False
    has_init_stage: ClassVar[bool] = False
    needs_full_batches: ClassVar[bool] = False
    supports_logit_stand: ClassVar[bool] = False
    #: whether the loss runs under ``torch.func.vmap`` (stacked ``--trials``, :mod:`engine.stacked`)
    stackable: ClassVar[bool] = True
    #: the published row's weights and learning rate: the defaults of -r/-a/-b/--learning_rate
    recipe: ClassVar[Recipe]
    #: the recipe with --logit_stand, where the logit-standardization authors publish one
    #: (None: :attr:`recipe` with or without it)
    logit_stand_recipe: ClassVar[Recipe | None] = None
    #: the frozen dataclass of the method's own hyper-parameters and flags (None: it has none);
    #: methods sharing hyper-parameters (CRD's ``feat_dim``) share the class
    params_class: ClassVar[type[Params] | None] = None
    #: the fields of ``params_class`` that set the contrastive sample loader the method reads
    #: (its batches carry sample and negative indices: ``needs_index``); None: the plain loaders
    sample_flags: ClassVar[SampleFlags | None] = None
    #: what the refusal of ``--logit_stand`` adds for a method without ``supports_logit_stand``
    logit_stand_note: ClassVar[str] = ""
    #: the README's methods table (``scripts/method_table.py``): the paper (authors, year) and
    #: the loss classes of ``distiller_zoo`` the method uses
    paper: ClassVar[str] = ""
    loss_classes: ClassVar[str] = ""

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__()
        self.check_logit_stand(bool(ctx.shared.logit_stand))
        self.logit_stand = bool(ctx.shared.logit_stand)
        self.criterion_div = DistillKL(ctx.shared.kd_T)

    @classmethod
    def check_logit_stand(cls, logit_stand: bool) -> None:
        """A :class:`UserError` for ``--logit_stand`` given to a method that does not apply it."""
        if logit_stand and not cls.supports_logit_stand:
            known = ", ".join(method_names(lambda c: c.supports_logit_stand))
            note = f"; {cls.logit_stand_note}" if cls.logit_stand_note else ""
            raise UserError(f"--logit_stand applies to {known}, not to --distill {cls.name}{note}")

    @classmethod
    def preact_for(cls, teacher: bool) -> bool:
        """Whether the method reads the pre-activation features of the teacher (``teacher``) or
        of the student: what ``model(x, is_feat=True, preact=...)`` is called with."""
        if teacher and cls.teacher_preact is not None:
            return cls.teacher_preact
        return cls.needs_preact

    @classmethod
    def sampling(cls, params: Params | None) -> tuple[int, str] | None:
        """``(k, mode)`` of the sample loader the method reads with ``params`` (an instance of
        its ``params_class``); None for a method that reads the plain loaders."""
        if cls.sample_flags is None:
            return None
        return getattr(params, cls.sample_flags.k), getattr(params, cls.sample_flags.mode)

    @classmethod
    def with_negatives(cls, params: P, k: int) -> P:
        """``params`` with ``k`` negatives per sample (what the data set can yield)."""
        if cls.sample_flags is None:
            raise TypeError(f"--distill {cls.name} reads no sample loader")
        return replace(params, **{cls.sample_flags.k: k})

    @classmethod
    def recipe_for(cls, logit_stand: bool) -> Recipe:
        """The recipe of a run with or without ``--logit_stand``."""
        return cls.logit_stand_recipe if logit_stand and cls.logit_stand_recipe else cls.recipe

    # ----- what the loop calls -----
    def forward(self, feat_s: Feats | None, logit_s: torch.Tensor, feat_t: Feats | None,
                logit_t: torch.Tensor, target: torch.Tensor, epoch: int,
                index: torch.Tensor | None = None,
                contrast_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = StepInputs(feat_s, logit_s, feat_t, logit_t, target, epoch, index, contrast_idx)
        terms = self.logit_terms(logit_s, logit_t, target)
        terms[OWN_TERM] = self.kd_loss(x)
        return terms

    def trainable_modules(self) -> list[nn.Module]:
        """Helper modules trained together with the student in the main stage."""
        return []

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """What the init stage of a two-stage method trains (empty for one-stage methods)."""
        return []

    def init_loss(self, feat_s: Feats, feat_t: Feats) -> torch.Tensor:
        """The init-stage objective (two-stage methods only)."""
        raise NotImplementedError(f"--distill {self.name} has no init stage")

    def init_learning_rate(self, learning_rate: float, low_init_lr: bool) -> float:
        """Learning rate of the init stage (the CRD code's ``helper/pretrain.py``): the main
        stage's ``learning_rate``; ``low_init_lr`` says the student is one whose init stage
        the CRD code runs at 0.01 (only FT uses it)."""
        return learning_rate

    def main_stage_eval_modules(self) -> list[nn.Module]:
        """Owned modules kept in eval mode in the main stage (as the CRD loop does)."""
        return []

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        for module in self.main_stage_eval_modules():
            module.eval()
        return self

    # ----- what methods override -----
    def logit_terms(self, logit_s: torch.Tensor, logit_t: torch.Tensor,
                    target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cls`` on the raw student logits; ``div`` on standardized logits with logit_stand."""
        div_s, div_t = logit_s, logit_t
        if self.logit_stand:
            div_s, div_t = standardize_logits(logit_s), standardize_logits(logit_t)
        return {CLS_TERM: F.cross_entropy(logit_s, target), DIV_TERM: self.criterion_div(div_s, div_t)}

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        """The method's own loss (weighted by ``-b``)."""
        return x.zero()


METHODS: dict[str, type[Distiller]] = {}


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator adding a :class:`Distiller` to the registry under ``name``."""

    def decorator(cls: type[Distiller]) -> type[Distiller]:
        if name in METHODS:
            raise ValueError(f"distillation method {name!r} registered twice")
        if cls.needs_index != (cls.sample_flags is not None):
            raise TypeError(f"{cls.__name__}: a method reading sample indices (needs_index) names the "
                            "flags of its sample loader (sample_flags), and only such a method does")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorator


def method_names(where: Callable[[type[Distiller]], bool] | None = None) -> list[str]:
    """The registered ``--distill`` names, sorted (those whose class ``where`` accepts, if given)."""
    return sorted(name for name, cls in METHODS.items() if where is None or where(cls))


def get_method(name: str) -> type[Distiller]:
    """The class registered as ``name``; a :class:`UserError` listing the known names if none."""
    if name not in METHODS:
        raise UserError(f"unknown distillation method {name!r} given to --distill; "
                        f"known methods: {', '.join(method_names())}")
    return METHODS[name]


def build_method(name: str, opt, student: nn.Module, teacher: nn.Module, feat_s: Feats,
                 feat_t: Feats, n_data: int) -> Distiller:
    """:func:`build_distiller` with the parameters read from ``opt`` (a namespace of flags):
    :class:`SharedParams` and the method's ``params_class``, each field from its flag
    (:meth:`Params.from_flags`: a flag ``opt`` lacks is a ``TypeError``, no default fills it)."""
    flags = vars(opt)
    params_class = get_method(name).params_class
    params = params_class.from_flags(flags) if params_class is not None else None
    return build_distiller(name, SharedParams.from_flags(flags), params, student, teacher, feat_s, feat_t, n_data)


def build_distiller(name: str, shared: SharedParams, params: Params | None, student: nn.Module,
                    teacher: nn.Module, feat_s: Feats, feat_t: Feats, n_data: int) -> Distiller:
    """Build the method ``name`` from its parameters: ``shared`` and ``params`` (an instance of
    its ``params_class``, None for a method without one); see :class:`BuildContext`."""
    cls = get_method(name)
    if cls.params_class is not None and not isinstance(params, cls.params_class):
        raise TypeError(f"{name} takes {cls.params_class.__name__}, got {type(params).__name__}")
    ctx = BuildContext(shared, params, student, teacher, list(feat_s or []), list(feat_t or []), n_data)
    return cls(ctx)


def method_params_classes() -> list[type[Params]]:
    """Each distinct ``params_class`` of the registered methods once, in the order of their
    first method in :func:`method_names`."""
    classes: list[type[Params]] = []
    for name in method_names():
        params_class = METHODS[name].params_class
        if params_class is not None and params_class not in classes:
            classes.append(params_class)
    return classes


#: The flags of the init stage (``train_student.py --init_epochs``): read only by the methods
#: with ``has_init_stage``.
INIT_STAGE_FLAGS = frozenset({"init_epochs"})


def method_flags(name: str) -> frozenset[str]:
    """The method-specific flags ``--distill name`` reads: the fields of its ``params_class``
    and, when it has an init stage, :data:`INIT_STAGE_FLAGS`. (:class:`SharedParams` and the
    training flags are read by every method.)"""
    cls = get_method(name)
    own = {f.name for f in fields(cls.params_class)} if cls.params_class is not None else set()
    return frozenset(own | (INIT_STAGE_FLAGS if cls.has_init_stage else set()))


def unread_flags(name: str) -> frozenset[str]:
    """The method-specific flags of the other methods that ``--distill name`` never reads (every
    registered ``params_class`` field and the init stage's, less :func:`method_flags`): a
    value given to one of them cannot change its results (``--init_epochs 1`` given to kd)."""
    every = {f.name for cls in method_params_classes() for f in fields(cls)} | INIT_STAGE_FLAGS
    return frozenset(every - method_flags(name))


def method_flag_ranges() -> dict[str, Range]:
    """The :class:`helper.ranges.Range` of every bounded flag of the registered methods' own
    hyper-parameters (what :func:`engine.options.check_flag_values` checks besides its own)."""
    return {name: rule for cls in method_params_classes() for name, rule in cls.ranges().items()}


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every registered method's own hyper-parameters, each class's once."""
    for params_class in method_params_classes():
        params_class.add_flags(parser)
