"""The distillation step: frozen teacher, student, and one method object.

The loop weights the method's named loss terms with ``-r/--gamma`` (``cls``), ``-a/--alpha``
(``div``) and ``-b/--beta`` (``kd``) and sums them; it never branches on the method's name.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from helper.loops import Batch


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: how the teacher is held for the whole run."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def loss_weights(opt) -> dict[str, float]:
    """The CRD loop's weights: r for classification, a for the KL term, b for the method's own loss."""
    return {"cls": opt.gamma, "div": opt.alpha, "kd": opt.beta}


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


def compile_fn(fn, device: torch.device):
    """``torch.compile`` with CUDA graphs on CUDA ("reduce-overhead"); shapes are static except
    the last partial batch, which compiles (and graphs) once more."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    return torch.compile(fn, mode=mode)


class DistillStep:
    """``(batch) -> (loss, student logits)`` for one training step of ``train_student.py``.

    The teacher runs under inference mode (no autograd bookkeeping) and computes only what the
    method reads (logits alone for kd, kdrefine, dkd). With ``compile`` the teacher forward and
    the student forward + loss are compiled (two graphs: the teacher's needs no backward).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, method: nn.Module,
                 weights: Mapping[str, float], compile: bool = False,
                 device: torch.device | None = None) -> None:
        self.student = student
        self.teacher = teacher
        self.method = method
        self.weights = dict(weights)
        self.epoch = 1
        self.compiled = compile
        self._teacher_forward = self.teacher_forward
        self._student_loss = self.student_loss
        if compile:
            device = device or next(student.parameters()).device
            self._teacher_forward = compile_fn(self.teacher_forward, device)
            self._student_loss = compile_fn(self.student_loss, device)

    def teacher_forward(self, images: torch.Tensor):
        """Teacher features (when the method reads them) and logits."""
        if self.method.needs_feats:
            return self.teacher(images, is_feat=True, preact=self.method.needs_preact)
        return None, self.teacher(images)

    def teacher_outputs(self, images: torch.Tensor):
        """:meth:`teacher_forward` without autograd, as ordinary tensors the loss may save."""
        if self.compiled:  # inference tensors and compiled graphs don't mix well: no_grad
            with torch.no_grad():
                return self._teacher_forward(images)
        with torch.inference_mode():
            feat_t, logit_t = self._teacher_forward(images)
        # inference tensors cannot be saved for backward: hand the loss plain copies
        return (None if feat_t is None else [f.clone() for f in feat_t]), logit_t.clone()

    def student_loss(self, images, feat_t, logit_t, target, epoch, index, contrast_idx):
        """Student forward, the method's named terms, and their weighted sum."""
        if self.method.needs_feats:
            feat_s, logit_s = self.student(images, is_feat=True, preact=self.method.needs_preact)
        else:
            feat_s, logit_s = None, self.student(images)
        terms = self.method(feat_s, logit_s, feat_t, logit_t, target, epoch,
                            index=index, contrast_idx=contrast_idx)
        return weighted_sum(terms, self.weights), logit_s

    def __call__(self, batch: Batch):
        feat_t, logit_t = self.teacher_outputs(batch.images)
        return self._student_loss(batch.images, feat_t, logit_t, batch.target, self.epoch,
                                  batch.index, batch.contrast_idx)


class InitStep:
    """The first stage of two-stage methods (AB, FT, FSP): train ``method.init_modules`` alone
    on ``method.init_loss``, with the student in eval mode as the CRD code does."""

    def __init__(self, student: nn.Module, teacher: nn.Module, method: nn.Module) -> None:
        self.student = student
        self.teacher = teacher
        self.method = method

    def __call__(self, batch: Batch):
        with torch.no_grad():
            feat_t, _ = self.teacher(batch.images, is_feat=True, preact=self.method.needs_preact)
        feat_s, logit_s = self.student(batch.images, is_feat=True, preact=self.method.needs_preact)
        return self.method.init_loss(feat_s, [f.detach() for f in feat_t]), logit_s
