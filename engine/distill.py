"""The distillation step: frozen teacher, student, and one method object.

The loop weights the method's named loss terms with ``-r/--gamma`` (``cls``), ``-a/--alpha``
(``div``) and ``-b/--beta`` (``kd``) and sums them; it never branches on the method's name.

What trains — student forward, method terms, weighted sum — is one ``nn.Module``
(:class:`StudentLoss`, or :class:`InitLoss` for the init stage of two-stage methods), so under
torchrun a single ``DistributedDataParallel`` wraps student and method together; the teacher
runs outside it, frozen.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from distiller_zoo import get_method
from distiller_zoo.methods import CLS_TERM, DIV_TERM, OWN_TERM, build_distiller
from engine.config import StudentConfig
from engine.dot import SplitLoss, average_gradients
from helper.distributed import DistContext
from engine.loops import Batch, StepOutput


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: how the teacher is held for the whole run."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def set_trainable(modules: Iterable[nn.Module], trainable: Iterable[nn.Module]
                  ) -> dict[nn.Parameter, bool]:
    """Among the parameters of ``modules``, only those of ``trainable`` require gradients
    afterwards; returns the previous flags (for :func:`trainable_only`)."""
    keep = {id(p) for m in trainable for p in m.parameters()}
    previous = {}
    for module in modules:
        for p in module.parameters():
            previous.setdefault(p, p.requires_grad)
            p.requires_grad_(id(p) in keep and previous[p])
    return previous


@contextlib.contextmanager
def trainable_only(modules: Iterable[nn.Module], trainable: Iterable[nn.Module]) -> Iterator[None]:
    """:func:`set_trainable` inside the block, the previous flags restored after it (the init
    stage trains some modules alone, and DDP must see exactly those)."""
    previous = set_trainable(list(modules), list(trainable))
    try:
        yield
    finally:
        for p, flag in previous.items():
            p.requires_grad_(flag)


def outputs_for(model: nn.Module, images: torch.Tensor, method: nn.Module, teacher: bool = False):
    """``(features, logits)`` of ``model``, features only when ``method`` reads them (else None):
    what a distillation step computes of the teacher (``teacher``) and of the student alike."""
    if method.needs_feats:
        return model(images, is_feat=True, preact=method.preact_for(teacher))
    return None, model(images)


def build_method_for(config: StudentConfig, student: nn.Module, teacher: nn.Module,
                     probe: torch.Tensor, n_data: int) -> nn.Module:
    """The method of ``config`` (:func:`distiller_zoo.methods.build_distiller`, with its own
    parameters and the shared ones) with the feature shapes read off one forward of ``probe``
    (a couple of images) through student and teacher, both in eval mode (the probe must not
    move the teacher's BN statistics, whatever mode the caller left it in); the method is put
    on ``probe``'s device."""
    method = config.method
    method_cls = get_method(method.distill)
    student.eval()
    teacher.eval()
    with torch.no_grad():
        feat_s, _ = student(probe, is_feat=True, preact=method_cls.preact_for(teacher=False))
        feat_t, _ = teacher(probe, is_feat=True, preact=method_cls.preact_for(teacher=True))
    return build_distiller(method.distill, method.shared(config.optim.batch_size), method.params,
                           student, teacher, feat_s, feat_t, n_data).to(probe.device)


def loss_weights(weights) -> dict[str, float]:
    """The CRD loop's weights: r for classification, a for the KL term, b for the method's own
    loss (``weights``: an :class:`engine.config.MethodConfig`, or anything with ``gamma``,
    ``alpha`` and ``beta``)."""
    return {CLS_TERM: weights.gamma, DIV_TERM: weights.alpha, OWN_TERM: weights.beta}


def split_weights(weights: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``weights`` apart for DOT (:mod:`engine.dot`): the task loss's (the ``cls`` term's) and
    the distillation loss's (every other term's)."""
    task = {name: w for name, w in weights.items() if name == CLS_TERM}
    return task, {name: w for name, w in weights.items() if name != CLS_TERM}


def weighted_sum(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``sum(weights[k] * terms[k])`` over the terms whose weight is non-zero."""
    total = None
    for name, value in terms.items():
        w = weights.get(name, 0.0)
        if w == 0:
            continue
        total = w * value if total is None else total + w * value
    if total is None:
        any_term = next(iter(terms.values()))
        total = any_term * 0.0
    return total


def split_outputs(feat_t, logit_t: torch.Tensor, sizes: list[int]):
    """Per-part ``(feat_t, logit_t)`` of teacher outputs computed on concatenated images (the
    batches of several trials, a batch's two views)."""
    logits = logit_t.split(sizes)
    if feat_t is None:
        return [(None, logit) for logit in logits]
    feats = list(zip(*(f.split(sizes) for f in feat_t)))
    return [(list(f), logit) for f, logit in zip(feats, logits)]


def compile_fn(fn, device: torch.device):
    """``torch.compile`` with CUDA graphs on CUDA ("reduce-overhead"); shapes are static except
    the last partial batch, which compiles (and graphs) once more."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    return torch.compile(fn, mode=mode)


def detached(terms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named terms without autograd history: what is logged of them (unweighted)."""
    return {name: value.detach() for name, value in terms.items()}


class StudentLoss(nn.Module):
    """Student forward, the method's named terms and their weighted sum: everything of a
    distillation step that trains, as one module (wrapped once in DDP under torchrun).

    Returns ``(loss, student logits)``; with ``with_terms`` also the method's named terms,
    unweighted and detached (``(loss, logits, terms)``: what :class:`DistillStep` logs); with
    ``split`` (DOT) also the task and the distillation loss apart (``(loss, logits, terms,
    task, distill)``, :func:`split_weights`; ``loss`` is their sum)."""

    def __init__(self, student: nn.Module, method: nn.Module, weights: Mapping[str, float],
                 with_terms: bool = False, split: bool = False) -> None:
        super().__init__()
        self.student = student
        self.method = method
        self.weights = dict(weights)
        self.with_terms = with_terms
        self.split = split

    def forward(self, images: torch.Tensor, feat_t, logit_t: torch.Tensor, target: torch.Tensor,
                epoch: int, index: torch.Tensor | None = None,
                contrast_idx: torch.Tensor | None = None, strong: torch.Tensor | None = None,
                logit_t_strong: torch.Tensor | None = None):
        feat_s, logit_s = outputs_for(self.student, images, self.method)
        views = {}
        if strong is not None:  # a second forward, as the MLKD authors' (BN statistics per view)
            views = {"logit_s_strong": outputs_for(self.student, strong, self.method)[1],
                     "logit_t_strong": logit_t_strong}
        terms = self.method(feat_s, logit_s, feat_t, logit_t, target, epoch,
                            index=index, contrast_idx=contrast_idx, **views)
        if self.split:
            task, distill = (weighted_sum(terms, w) for w in split_weights(self.weights))
            return task + distill, logit_s, detached(terms), task, distill
        if self.with_terms:
            return weighted_sum(terms, self.weights), logit_s, detached(terms)
        return weighted_sum(terms, self.weights), logit_s

    def may_leave_parameters_unused(self) -> bool:
        """Whether a step may give some trainable parameter no gradient (DDP must then look for
        them): the method's trainable modules feed only its ``kd`` term, and the student's
        classifier only ``cls`` and ``div`` (and logit-based ``kd`` terms)."""
        method_trains = any(p.requires_grad for p in self.method.parameters())
        no_kd = self.weights.get(OWN_TERM, 0.0) == 0
        no_logit_terms = self.weights.get(CLS_TERM, 0.0) == 0 and self.weights.get(DIV_TERM, 0.0) == 0
        return (method_trains and no_kd) or no_logit_terms


class DistillStep:
    """``(batch) -> (loss, student logits)`` for one training step of ``train_student.py``, as a
    :class:`~engine.loops.StepOutput` carrying the method's unweighted terms (for the logs).

    The teacher runs under inference mode (no autograd bookkeeping) and computes only what the
    method reads (logits alone for kd, kdrefine, dkd), in one forward over the batch's images and,
    for a method that reads it (``needs_strong_view``), the batch's strong view. With ``compile``
    the teacher forward and the student forward + loss are compiled (two graphs: the teacher's
    needs no backward).
    With a multi-process ``dist`` the :class:`StudentLoss` is wrapped in DDP (gradients of
    student and method averaged over processes); ``find_unused_parameters`` only where
    :meth:`StudentLoss.may_leave_parameters_unused`.

    With ``dot`` (:mod:`engine.dot`) the step also returns its task and distillation losses
    apart (the :class:`~engine.loops.StepOutput`'s ``split``), whose two backward passes DDP
    cannot synchronise: its forward then runs under DDP's ``no_sync`` and each backward's
    gradients are averaged by :func:`engine.dot.average_gradients`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, method: nn.Module,
                 weights: Mapping[str, float], compile: bool = False,
                 device: torch.device | None = None, dist: DistContext | None = None,
                 dot: bool = False) -> None:
        self.teacher = teacher
        self.method = method
        self.compiled = compile
        self.dot = dot
        self.loss = StudentLoss(student, method, weights, with_terms=True, split=dot)
        trained: nn.Module = self.loss
        self._forward_context, self._sync = contextlib.nullcontext, None
        if dist is not None:
            trained = dist.wrap(self.loss, self.loss.may_leave_parameters_unused())
            if dot and dist.enabled:
                self._forward_context = trained.no_sync
                self._sync = functools.partial(average_gradients, all_reduce_sum=dist.all_reduce_sum,
                                               world_size=dist.world_size)
        self._teacher_forward = self.teacher_forward
        self._student_loss = trained
        if compile:
            device = device or next(student.parameters()).device
            self._teacher_forward = compile_fn(self.teacher_forward, device)
            self._student_loss = compile_fn(trained, device)

    def teacher_forward(self, images: torch.Tensor):
        """Teacher features (when the method reads them) and logits."""
        return outputs_for(self.teacher, images, self.method, teacher=True)

    def teacher_outputs(self, images: torch.Tensor):
        """:meth:`teacher_forward` without autograd, as ordinary tensors the loss may save."""
        if self.compiled:  # inference tensors and compiled graphs don't mix well: no_grad
            with torch.no_grad():
                return self._teacher_forward(images)
        with torch.inference_mode():
            feat_t, logit_t = self._teacher_forward(images)
        # inference tensors cannot be saved for backward: hand the loss plain copies
        return (None if feat_t is None else [f.clone() for f in feat_t]), logit_t.clone()

    def teacher_for(self, batches: list[Batch]) -> list[tuple]:
        """The teacher's outputs for each of ``batches`` from one forward over all their images:
        per batch ``(feat_t, logit_t, logit_t_strong)``, the last the logits of its strong view
        where the method reads one and the batch has it (else None)."""
        strong = [b.strong if self.method.needs_strong_view else None for b in batches]
        views = [x for b, s in zip(batches, strong) for x in (b.images, s) if x is not None]
        feat_t, logit_t = self.teacher_outputs(views[0] if len(views) == 1 else torch.cat(views))
        parts = iter(split_outputs(feat_t, logit_t, [x.size(0) for x in views]))
        outputs = []
        for s in strong:
            feat, logit = next(parts)
            outputs.append((feat, logit, None if s is None else next(parts)[1]))
        return outputs

    def student_loss(self, batch: Batch, feat_t, logit_t: torch.Tensor, epoch: int,
                     logit_t_strong: torch.Tensor | None = None) -> StepOutput:
        """The trained part of the step at ``epoch``, given the teacher's outputs for ``batch``
        (``logit_t_strong``: of its strong view, for a method that reads one)."""
        strong = (batch.strong, logit_t_strong) if logit_t_strong is not None else ()
        with self._forward_context():
            loss, logits, terms, *split = self._student_loss(batch.images, feat_t, logit_t, batch.target,
                                                             epoch, batch.index, batch.contrast_idx, *strong)
        return StepOutput(loss, logits, terms, SplitLoss(*split, sync=self._sync) if self.dot else None)

    def __call__(self, batch: Batch, epoch: int) -> StepOutput:
        feat_t, logit_t, logit_t_strong = self.teacher_for([batch])[0]
        return self.student_loss(batch, feat_t, logit_t, epoch, logit_t_strong)


class InitLoss(nn.Module):
    """Student features and the method's init-stage objective, as one module (for DDP)."""

    def __init__(self, student: nn.Module, method: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.method = method

    def forward(self, images: torch.Tensor, feat_t) -> tuple[torch.Tensor, torch.Tensor]:
        feat_s, logit_s = self.student(images, is_feat=True, preact=self.method.needs_preact)
        return self.method.init_loss(feat_s, feat_t), logit_s


class InitStep:
    """The first stage of two-stage methods (AB, FT, FSP): train ``method.init_modules`` alone
    on ``method.init_loss``, with the student in eval mode as the CRD code does.

    With a multi-process ``dist`` the :class:`InitLoss` is wrapped in DDP: build the step inside
    :func:`trainable_only` so that DDP averages exactly the init modules' gradients.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, method: nn.Module,
                 dist: DistContext | None = None) -> None:
        self.student = student
        self.teacher = teacher
        self.method = method
        self.loss = InitLoss(student, method)
        self._loss = self.loss if dist is None else dist.wrap(self.loss)

    def __call__(self, batch: Batch, epoch: int):
        """The init-stage loss of ``batch`` (the same objective at every ``epoch``)."""
        with torch.no_grad():
            feat_t, _ = self.teacher(batch.images, is_feat=True, preact=self.method.preact_for(teacher=True))
        return self._loss(batch.images, [f.detach() for f in feat_t])


@dataclass
class StudentParts:
    """What one student run trains, before the loop's member is assembled: its configuration,
    student, method, distillation step (its loss: ``step(batch, epoch)``) and training loader."""

    config: StudentConfig
    student: nn.Module
    method: nn.Module
    step: DistillStep
    train_loader: object

    def trained_parameters(self) -> list[nn.Parameter]:
        """What its optimizer steps: the student's parameters and the method's trained modules'."""
        return [p for m in (self.student, *self.method.trainable_modules()) for p in m.parameters()]
