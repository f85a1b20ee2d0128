"""Logit-only methods: KD, KDrefine's standardized KD, and DKD."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dkd import DKDLoss
from ..kd import standardize_logits
from .base import BuildContext, Distiller, StepInputs, register_method


@register_method("kd")
class KD(Distiller):
    """Hinton et al. (2015): CE + KL at ``kd_T``; no extra ``kd`` term (CRD sets it to 0).

    With ``--logit_stand`` the KL term uses Z-scored logits (Sun et al., CVPR 2024) while CE
    stays on the raw logits, as in that paper's code.
    """

    needs_feats = False
    supports_logit_stand = True


@register_method("kdrefine")
class KDRefine(Distiller):
    """KDrefine: both logits standardized with multiplier 2 before CE and KL; ``kd`` is 0.

    Departs from the CVPR 2024 recipe by also training CE on the standardized student logits,
    exactly as the KDrefine loop does.
    """

    needs_feats = False
    multiplier = 2.0

    def logit_terms(self, logit_s: torch.Tensor, logit_t: torch.Tensor,
                    target: torch.Tensor) -> dict[str, torch.Tensor]:
        z_s = standardize_logits(logit_s, self.multiplier)
        z_t = standardize_logits(logit_t, self.multiplier)
        return {"cls": F.cross_entropy(z_s, target), "div": self.criterion_div(z_s, z_t)}


@register_method("dkd")
class DKD(Distiller):
    """Decoupled KD (Zhao et al., CVPR 2022) wired as KDrefine does: ``cls`` = CE, ``div`` = KL,
    ``kd`` = the DKD loss with its epoch warm-up (KDrefine trains with ``-a 0 -b 1``-style
    weights). The DKD loss keeps its TCKD term (KDrefine's copy drops it).

    Hyper-parameters are the paper's CIFAR ones (alpha 1, beta 8, T 4, warm-up 20) unless ``opt``
    carries ``dkd_alpha``, ``dkd_beta``, ``dkd_T`` or ``dkd_warmup``.
    """

    needs_feats = False
    supports_logit_stand = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        opt = ctx.opt
        self.criterion_kd = DKDLoss(alpha=getattr(opt, "dkd_alpha", 1.0),
                                    beta=getattr(opt, "dkd_beta", 8.0),
                                    temperature=getattr(opt, "dkd_T", 4.0),
                                    warmup=getattr(opt, "dkd_warmup", 20),
                                    logit_stand=self.logit_stand)

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        return self.criterion_kd(x.logit_s, x.logit_t, x.target, x.epoch)
