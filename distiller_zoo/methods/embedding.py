"""Methods on the pooled embedding ``feats[-1]``: CRD, CC, RKD, PKT and SRRL."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from helper.errors import UserError
from helper.ranges import TEMPERATURE, Range

from ..cc import Correlation
from ..crd import CRDConfig, CRDLoss
from ..modules import LinearEmbed
from ..pkt import PKT
from ..rkd import RKDLoss
from ..srrl import SRRL, SRRLLoss
from .base import (BuildContext, Distiller, Params, Recipe, SampleFlags, StepInputs, param,
                   register_method, teacher_classifier)

#: ``--feat_dim`` at most 2**16: CRD keeps two memory banks of training images x feat_dim floats
#: (26 GB for CIFAR-100 at 65536) and gathers batch x (nce_k + 1) x feat_dim floats per step; the
#: embedded features themselves have at most 2048 channels (ResNet50) and CRD uses 128.
MAX_FEAT_DIM = 2 ** 16


@dataclass(frozen=True)
class CRDParams(Params):
    """CRD's hyper-parameters (Tian et al., ICLR 2020), defaults the CRD code's: the embedding
    size ``feat_dim`` (also CC's), the negatives' sampling ``mode`` (read by the sample
    loader), ``nce_k`` negatives, the temperature ``nce_t`` and the memory momentum ``nce_m``."""

    title = "CRD"

    feat_dim: int = param(128, int, "embedding dimension", range=Range(
        1, MAX_FEAT_DIM, allowed=f"must lie within 1..{MAX_FEAT_DIM} (the embedding dimension: CRD's two "
                                 f"memory banks hold training images x feat_dim floats, 26 GB for CIFAR-100 "
                                 f"at {MAX_FEAT_DIM}; CRD uses 128)"))
    mode: str = param("exact", str, choices=["exact", "relax"])
    nce_k: int = param(16384, int, "negative samples for NCE",
                       range=Range(1, allowed="must be at least 1 (negative samples per positive)"))
    nce_t: float = param(0.07, float, "softmax temperature", range=TEMPERATURE)
    nce_m: float = param(0.5, float, "momentum of the memory bank",
                         range=Range(0, 1, high_open=True, allowed="must lie in [0, 1) (momentum of the memory bank)"))


@register_method("crd")
class CRD(Distiller):
    """Contrastive representation distillation (Tian et al., ICLR 2020).

    Needs the sample indices and the negatives' indices from the sample loader
    (``needs_index``), which draws ``--nce_k`` negatives in ``--mode`` (``sample_flags``); the
    memory bank (``n_data x feat_dim`` per side) is a buffer, the two embeddings are trained
    with the student.
    """

    paper = "CRD (Tian et al., 2020)"
    loss_classes = "`CRDLoss(opt)` (embeddings, memory bank)"

    recipe = Recipe(1.0, 0.0, 0.8)
    params_class = CRDParams

    needs_index = True
    sample_flags = SampleFlags(k="nce_k", mode="mode")

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        if ctx.n_data <= 0:
            raise UserError("crd needs the training-set size for its memory bank (n_data > 0)")
        p = ctx.params_as(CRDParams)
        self.criterion_kd = CRDLoss(CRDConfig(
            s_dim=int(ctx.feat_s[-1].shape[1]), t_dim=int(ctx.feat_t[-1].shape[1]), n_data=ctx.n_data,
            feat_dim=p.feat_dim, nce_k=p.nce_k, nce_t=p.nce_t, nce_m=p.nce_m))

    def trainable_modules(self) -> list[nn.Module]:
        return [self.criterion_kd.embed_s, self.criterion_kd.embed_t]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        if x.index is None:
            raise ValueError("crd needs the batch's sample indices (index)")
        return self.criterion_kd(x.feat_s[-1], x.feat_t[-1], x.index, x.contrast_idx)


@register_method("correlation")
class CC(Distiller):
    """Correlation congruence (Peng et al., ICCV 2019) between linear embeddings (``feat_dim``)
    of both pooled features; both embeddings are trained with the student."""

    paper = "CC (Peng et al., 2019)"
    loss_classes = "`Correlation()` + `LinearEmbed`"

    recipe = Recipe(1.0, 0.0, 0.02)
    params_class = CRDParams  # its embeddings are --feat_dim wide

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        feat_dim = ctx.params_as(CRDParams).feat_dim
        self.embed_s = LinearEmbed(ctx.feat_s[-1].shape[1], feat_dim)
        self.embed_t = LinearEmbed(ctx.feat_t[-1].shape[1], feat_dim)
        self.criterion_kd = Correlation()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.embed_s, self.embed_t]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        return self.criterion_kd(self.embed_s(x.feat_s[-1]), self.embed_t(x.feat_t[-1]))


@register_method("rkd")
class RKD(Distiller):
    """Relational KD (Park et al., CVPR 2019) on the pooled features."""

    paper = "RKD (Park et al., 2019)"
    loss_classes = "`RKDLoss(w_d=25, w_a=50)`"

    recipe = Recipe(1.0, 0.0, 1.0)

    stackable = False  # its distance loss masks with a boolean index: no vmap rule

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.criterion_kd = RKDLoss()

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        return self.criterion_kd(x.feat_s[-1], x.feat_t[-1])


@register_method("pkt")
class PKTMethod(Distiller):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on the pooled features."""

    paper = "PKT (Passalis & Tefas, 2018)"
    loss_classes = "`PKT()`"

    recipe = Recipe(1.0, 0.0, 30000.0)

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.criterion_kd = PKT()

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        return self.criterion_kd(x.feat_s[-1], x.feat_t[-1])


@register_method("srrl")
class SRRLMethod(Distiller):
    """SRRL (Yang et al., ICLR 2021) as KDrefine wires it: the translated student feature is
    regressed onto the teacher's pooled feature and, through the teacher's classifier, onto the
    teacher's logits. KDrefine never builds this criterion; here it is ``SRRLLoss``.

    The teacher classifier is held by reference, not as a submodule: it stays the teacher's
    (frozen, moved and saved with the teacher); gradients flow through it to the translator.
    """

    paper = "SRRL (Yang et al., 2021)"
    loss_classes = "`SRRL` + `SRRLLoss`"

    recipe = Recipe(1.0, 1.0, 1.0, source="SemCKD's scripts (Chen et al., AAAI 2021), as KDrefine runs SRRL")

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.srrl = SRRL(s_n=ctx.feat_s[-1].shape[1], t_n=ctx.feat_t[-1].shape[1])
        self.criterion_kd = SRRLLoss()
        cls_t = teacher_classifier(ctx.teacher)
        if cls_t.in_features != ctx.feat_t[-1].shape[1]:
            raise UserError(f"srrl: the teacher's classifier takes {cls_t.in_features} inputs but "
                            f"its pooled feature has {ctx.feat_t[-1].shape[1]}")
        self._cls_t = (cls_t,)  # a tuple keeps it out of this module's parameters and state

    def trainable_modules(self) -> list[nn.Module]:
        return [self.srrl]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        trans_feat_s, pred_feat_s = self.srrl(x.feat_s[-1], self._cls_t[0])
        return self.criterion_kd(trans_feat_s, pred_feat_s, x.feat_t[-1], x.logit_t)
