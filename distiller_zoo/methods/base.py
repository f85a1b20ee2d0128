"""The method object every ``--distill`` name builds, and the registry that maps names to them.

A :class:`Distiller` owns its helper modules (regressors, embeddings, memory bank, connectors),
declares what the training loop must feed it (``needs_feats``, ``needs_preact``,
``needs_index``), lists what is trained with the student (:meth:`trainable_modules`) and, for the
two-stage methods, what the init stage trains (:meth:`init_modules`, :meth:`init_loss`). Its
``forward`` returns the named loss terms ``{'cls', 'div', 'kd'}`` that the loop weights with
``-r``, ``-a`` and ``-b`` — the three criteria of the CRD training loop.

Each method declares the :class:`Recipe` of its published row (its loss weights and, where the
published code differs from RepDistiller's rule, its learning rate): these are the defaults of
``-r``, ``-a``, ``-b`` and ``--learning_rate`` when ``--distill`` picks it. A method with its own
hyper-parameters declares their flags in :meth:`Distiller.add_flags`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError

from ..kd import DistillKL, standardize_logits

Feats = list[torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """The published recipe of a method: the weights of ``cls`` (``-r``), ``div`` (``-a``) and
    ``kd`` (``-b``), and its learning rate (None: RepDistiller's rule, 0.05 and 0.01 for
    MobileNetV2/ShuffleNets). ``source`` says where the numbers come from."""

    gamma: float
    alpha: float
    beta: float
    learning_rate: float | None = None
    source: str = "RepDistiller's scripts/run_cifar_distill.sh"


@dataclass
class BuildContext:
    """Everything a method's constructor may read.

    ``feat_s`` / ``feat_t``: the ``is_feat=True`` features of a small probe batch (pre-activation
    ones when the method declares ``needs_preact``); ``n_data``: the training-set size.
    """

    opt: object
    student: nn.Module
    teacher: nn.Module
    feat_s: Feats
    feat_t: Feats
    n_data: int


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
    needs_index: ClassVar[bool] = False
    has_init_stage: ClassVar[bool] = False
    needs_full_batches: ClassVar[bool] = False
    supports_logit_stand: ClassVar[bool] = False
    #: whether the loss runs under ``torch.func.vmap`` (stacked ``--trials``, :mod:`engine.stacked`)
    stackable: ClassVar[bool] = True
    #: the published row's weights and learning rate: the defaults of -r/-a/-b/--learning_rate
    recipe: ClassVar[Recipe]

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Add the flags of this method's own hyper-parameters (none by default)."""

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__()
        opt = ctx.opt
        self.logit_stand = bool(getattr(opt, "logit_stand", False))
        if self.logit_stand and not self.supports_logit_stand:
            known = ", ".join(n for n, c in sorted(METHODS.items()) if c.supports_logit_stand)
            raise UserError(f"--logit_stand applies to {known}, not to --distill {self.name}")
        self.criterion_div = DistillKL(opt.kd_T)

    # ----- what the loop calls -----
    def forward(self, feat_s: Feats | None, logit_s: torch.Tensor, feat_t: Feats | None,
                logit_t: torch.Tensor, target: torch.Tensor, epoch: int,
                index: torch.Tensor | None = None,
                contrast_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = StepInputs(feat_s, logit_s, feat_t, logit_t, target, epoch, index, contrast_idx)
        terms = self.logit_terms(logit_s, logit_t, target)
        terms["kd"] = self.kd_loss(x)
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

    def init_learning_rate(self, opt) -> float:
        """Learning rate of the init stage (the CRD code's ``helper/pretrain.py``)."""
        return opt.learning_rate

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
        return {"cls": F.cross_entropy(logit_s, target), "div": self.criterion_div(div_s, div_t)}

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        """The method's own loss (weighted by ``-b``)."""
        return x.zero()


METHODS: dict[str, type[Distiller]] = {}


def register_method(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator adding a :class:`Distiller` to the registry under ``name``."""

    def decorator(cls: type[Distiller]) -> type[Distiller]:
        if name in METHODS:
            raise ValueError(f"distillation method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorator


def method_names() -> list[str]:
    """The registered ``--distill`` names, sorted."""
    return sorted(METHODS)


def get_method(name: str) -> type[Distiller]:
    """The class registered as ``name``; a :class:`UserError` listing the known names if none."""
    if name not in METHODS:
        raise UserError(f"unknown distillation method {name!r} given to --distill; "
                        f"known methods: {', '.join(method_names())}")
    return METHODS[name]


def build_method(name: str, opt, student: nn.Module, teacher: nn.Module, feat_s: Feats,
                 feat_t: Feats, n_data: int) -> Distiller:
    """Build the method ``name`` for this student/teacher pair (see :class:`BuildContext`)."""
    cls = get_method(name)
    return cls(BuildContext(opt, student, teacher, list(feat_s or []), list(feat_t or []), n_data))


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every registered method declares for its own hyper-parameters."""
    for name in method_names():
        METHODS[name].add_flags(parser)
