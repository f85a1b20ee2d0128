"""Methods that match intermediate feature maps: FitNet, AT, NST, SP, KDSVD, VID, SemCKD.

Feature choice follows the CRD / KDrefine loops: ``feats[hint_layer]`` for FitNet,
``feats[1:-1]`` for AT, NST, KDSVD, VID and SemCKD, the last map ``feats[-2]`` for SP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from helper.errors import UserError

from ..at import Attention
from ..fitnet import HintLoss
from ..kdsvd import KDSVD
from ..modules import ConvReg
from ..nst import NSTLoss
from ..semckd import SelfA, SemCKDLoss
from ..sp import Similarity
from ..vid import VIDLoss
from .base import (BuildContext, Distiller, Params, Recipe, StepInputs, inner, param, register_method,
                   sum_terms)


@dataclass(frozen=True)
class HintParams(Params):
    """FitNet's hint layer: the index into the ``is_feat=True`` features of both networks."""

    title = "FitNet (--distill hint)"

    hint_layer: int = param(2, int, choices=[0, 1, 2, 3, 4])


@register_method("hint")
class Hint(Distiller):
    """FitNet (Romero et al., ICLR 2015): ``ConvReg`` of the student's ``hint_layer`` feature,
    MSE to the teacher's (single stage, as in the CRD benchmark)."""

    paper = "FitNet (Romero et al., 2015)"
    loss_classes = "`HintLoss()` + `ConvReg`"

    recipe = Recipe(1.0, 0.0, 100.0)
    params_class = HintParams

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        layer = int(ctx.params_as(HintParams).hint_layer)
        n = min(len(ctx.feat_s), len(ctx.feat_t))
        if not -n <= layer < n:
            raise UserError(f"--hint_layer {layer} is out of range: the student has "
                            f"{len(ctx.feat_s)} features and the teacher {len(ctx.feat_t)}")
        s_shape, t_shape = ctx.feat_s[layer].shape, ctx.feat_t[layer].shape
        if len(s_shape) != 4 or len(t_shape) != 4:
            raise UserError(f"--hint_layer {layer} selects a pooled vector (student "
                            f"{tuple(s_shape)}, teacher {tuple(t_shape)}); choose a feature map")
        self.hint_layer = layer
        self.regress_s = ConvReg(s_shape, t_shape)
        self.criterion_kd = HintLoss()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.regress_s]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        f_s = self.regress_s(x.feat_s[self.hint_layer])
        return self.criterion_kd(f_s, x.feat_t[self.hint_layer])


class _InnerPairs(Distiller):
    """``sum(criterion(feats_s[1:-1], feats_t[1:-1]))`` for a list-returning criterion."""

    criterion_kd: nn.Module

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        return sum_terms(self.criterion_kd(inner(x.feat_s), inner(x.feat_t)), x.logit_s)


@register_method("attention")
class AT(_InnerPairs):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) on ``feats[1:-1]``."""

    paper = "AT (Zagoruyko & Komodakis, 2017)"
    loss_classes = "`Attention(p=2)`"

    recipe = Recipe(1.0, 0.0, 1000.0)

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.criterion_kd = Attention()


@register_method("nst")
class NST(_InnerPairs):
    """Neuron selectivity transfer (Huang & Wang, 2017) on ``feats[1:-1]``."""

    paper = "NST (Huang & Wang, 2017)"
    loss_classes = "`NSTLoss()`"

    recipe = Recipe(1.0, 0.0, 50.0)

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.criterion_kd = NSTLoss()


@register_method("kdsvd")
class KDSVDMethod(_InnerPairs):
    """SVD-based KD (Lee et al., ECCV 2018) on ``feats[1:-1]``.

    Aligning singular vectors needs equal channel counts in each student/teacher pair (the CRD
    code fails with a shape error otherwise; here a ``UserError`` names the mismatch).
    """

    paper = "KDSVD (Lee et al., 2018)"
    loss_classes = "`KDSVD(k=1)`"

    recipe = Recipe(1.0, 0.0, 1.0, source="no line in RepDistiller's script; weight 1")

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        s_c = [int(f.shape[1]) for f in inner(ctx.feat_s)]
        t_c = [int(f.shape[1]) for f in inner(ctx.feat_t)]
        if any(s != t for s, t in zip(s_c, t_c)):
            raise UserError(f"kdsvd needs equal channel counts in paired features, but the "
                            f"student has {s_c} and the teacher {t_c}; choose another method or pair")
        self.criterion_kd = KDSVD()


@register_method("similarity")
class SP(Distiller):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019) on the last feature map ``feats[-2]``."""

    paper = "SP (Tung & Mori, 2019)"
    loss_classes = "`Similarity()`"

    recipe = Recipe(1.0, 0.0, 3000.0)

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.criterion_kd = Similarity()

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        return sum_terms(self.criterion_kd([x.feat_s[-2]], [x.feat_t[-2]]), x.logit_s)


@register_method("vid")
class VID(Distiller):
    """Variational information distillation (Ahn et al., CVPR 2019): one ``VIDLoss(c_s, c_t,
    c_t)`` per pair of ``feats[1:-1]``, their regressors and variances trained with the student."""

    paper = "VID (Ahn et al., 2019)"
    loss_classes = "`VIDLoss(...)`"

    recipe = Recipe(1.0, 0.0, 1.0)

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        s_n = [f.shape[1] for f in inner(ctx.feat_s)]
        t_n = [f.shape[1] for f in inner(ctx.feat_t)]
        self.criterion_kd = nn.ModuleList(VIDLoss(s, t, t) for s, t in zip(s_n, t_n))

    def trainable_modules(self) -> list[nn.Module]:
        return [self.criterion_kd]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        pairs = zip(inner(x.feat_s), inner(x.feat_t), self.criterion_kd)
        losses = [c(f_s, f_t) for f_s, f_t, c in pairs]
        return sum_terms(losses, x.logit_s)


@register_method("semckd")
class SemCKD(Distiller):
    """Semantic calibration (Chen et al., AAAI 2021): ``SelfA`` attention over all student x
    teacher layer pairs of ``feats[1:-1]`` and the attention-weighted MSE.

    As in KDrefine, ``SelfA`` is sized for ``--batch_size`` (:class:`SharedParams`) with ``soft = 1``;
    the loop must drop an incomplete last batch (``needs_full_batches``).
    """

    paper = "SemCKD (Chen et al., 2021)"
    loss_classes = "`SemCKDLoss` + `SelfA`"

    recipe = Recipe(1.0, 1.0, 400.0, source="SemCKD's scripts (Chen et al., AAAI 2021)")

    needs_full_batches = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        s_n = [f.shape[1] for f in inner(ctx.feat_s)]
        t_n = [f.shape[1] for f in inner(ctx.feat_t)]
        self.batch_size = int(ctx.shared.batch_size)
        self.self_attention = SelfA(self.batch_size, s_n, t_n, 1)
        self.criterion_kd = SemCKDLoss()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.self_attention]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        s_value, f_target, weight = self.self_attention(inner(x.feat_s), inner(x.feat_t))
        return self.criterion_kd(s_value, f_target, weight)
