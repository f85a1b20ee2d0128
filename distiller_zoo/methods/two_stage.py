"""Two-stage methods of the CRD benchmark: AB, FT and FSP.

Each first trains some modules alone on :meth:`init_loss` for ``--init_epochs`` (the CRD code's
``helper/pretrain.py``), then trains the student; in the main stage AB and FSP add no ``kd``
term (the CRD loop sets it to 0) and FT matches translator and paraphraser factors.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ab import ABLoss
from ..fsp import FSP
from ..ft import FactorTransfer
from ..modules import Connector, Paraphraser, Translator
from .base import BuildContext, Distiller, Recipe, Feats, StepInputs, inner, register_method, sum_terms


@register_method("abound")
class AB(Distiller):
    """Activation boundaries (Heo et al., AAAI 2019) on pre-activation ``feats[1:-1]``.

    Init stage: ``connector`` and the student's feature modules minimise ``sum(ABLoss)``.
    Main stage: the connector is idle (eval mode, not trained) and ``kd`` is 0.
    """

    paper = "AB (Heo et al., 2019), two-stage"
    loss_classes = "`ABLoss(feat_num)` + `Connector`"

    recipe = Recipe(1.0, 0.0, 1.0)

    needs_preact = True
    has_init_stage = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        g_s, g_t = inner(ctx.feat_s), inner(ctx.feat_t)
        self.connector = Connector([f.shape for f in g_s], [f.shape for f in g_t])
        self.criterion_kd = ABLoss(len(g_s))

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.connector, student.get_feat_modules()]

    def init_loss(self, feat_s: Feats, feat_t: Feats) -> torch.Tensor:
        losses = self.criterion_kd(self.connector(inner(feat_s)), inner(feat_t))
        return sum_terms(losses, feat_s[-1])

    def main_stage_eval_modules(self) -> list[nn.Module]:
        return [self.connector]


@register_method("factor")
class FT(Distiller):
    """Factor transfer (Kim et al., NeurIPS 2018) on the last feature map ``feats[-2]``.

    Init stage: the paraphraser learns to reconstruct the teacher's map (MSE). Main stage: the
    translator's factor of the student map is matched to the (frozen, eval-mode) paraphraser's
    factor of the teacher map with ``FactorTransfer``.
    """

    paper = "FT (Kim et al., 2018), two-stage"
    loss_classes = "`FactorTransfer()` + `Paraphraser`/`Translator`"

    recipe = Recipe(1.0, 0.0, 200.0)

    has_init_stage = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        s_shape, t_shape = ctx.feat_s[-2].shape, ctx.feat_t[-2].shape
        self.paraphraser = Paraphraser(t_shape)
        self.translator = Translator(s_shape, t_shape)
        self.criterion_kd = FactorTransfer()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.translator]

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def init_learning_rate(self, learning_rate: float, low_init_lr: bool) -> float:
        """The CRD code's ``helper/pretrain.py`` trains the paraphraser at 0.01 for the students
        it lists (``low_init_lr``: the ResNets and WRNs of the benchmark), else at the main
        stage's ``learning_rate``."""
        return 0.01 if low_init_lr else learning_rate

    def init_loss(self, feat_s: Feats, feat_t: Feats) -> torch.Tensor:
        f_t = feat_t[-2]
        _, f_t_rec = self.paraphraser(f_t)
        return F.mse_loss(f_t_rec, f_t)

    def main_stage_eval_modules(self) -> list[nn.Module]:
        return [self.paraphraser]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        factor_s = self.translator(x.feat_s[-2])
        with torch.no_grad():  # the paraphraser is not trained in this stage
            factor_t = self.paraphraser(x.feat_t[-2], is_factor=True)
        return self.criterion_kd(factor_s, factor_t)


@register_method("fsp")
class FSPMethod(Distiller):
    """Flow of solution procedure (Yim et al., CVPR 2017) on ``feats[:-1]``.

    Init stage: the student's feature modules minimise ``sum(FSP)``. Main stage: ``kd`` is 0.
    Needs equal channel counts in every paired feature (raises ``UserError`` otherwise).
    """

    paper = "FSP (Yim et al., 2017), two-stage"
    loss_classes = "`FSP(s_shapes, t_shapes)`"

    recipe = Recipe(1.0, 0.0, 50.0)

    has_init_stage = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.criterion_kd = FSP([f.shape for f in ctx.feat_s[:-1]], [f.shape for f in ctx.feat_t[:-1]])

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [student.get_feat_modules()]

    def init_loss(self, feat_s: Feats, feat_t: Feats) -> torch.Tensor:
        return sum_terms(self.criterion_kd(feat_s[:-1], feat_t[:-1]), feat_s[-1])
