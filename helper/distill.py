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


class DistillStep:
    """``(batch) -> (loss, student logits)`` for one training step of ``train_student.py``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, method: nn.Module,
                 weights: Mapping[str, float]) -> None:
        self.student = student
        self.teacher = teacher
        self.method = method
        self.weights = dict(weights)
        self.epoch = 1

    def teacher_outputs(self, images: torch.Tensor):
        """Teacher features and logits, computing only what the method reads."""
        with torch.no_grad():
            if self.method.needs_feats:
                feat_t, logit_t = self.teacher(images, is_feat=True, preact=self.method.needs_preact)
                return [f.detach() for f in feat_t], logit_t.detach()
            return None, self.teacher(images).detach()

    def __call__(self, batch: Batch):
        feat_t, logit_t = self.teacher_outputs(batch.images)
        if self.method.needs_feats:
            feat_s, logit_s = self.student(batch.images, is_feat=True, preact=self.method.needs_preact)
        else:
            feat_s, logit_s = None, self.student(batch.images)
        terms = self.method(feat_s, logit_s, feat_t, logit_t, batch.target, self.epoch,
                            index=batch.index, contrast_idx=batch.contrast_idx)
        return weighted_sum(terms, self.weights), logit_s


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
