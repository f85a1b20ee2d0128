"""Logit-only methods: KD, KDrefine's standardized KD, and DKD."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..dkd import DKDLoss
from ..kd import standardize_logits
from .base import BuildContext, Distiller, Params, Recipe, StepInputs, param, register_method


@dataclass(frozen=True)
class DKDParams(Params):
    """DKD's hyper-parameters (Zhao et al., CVPR 2022), defaults the paper's CIFAR ones."""

    title = "DKD (--distill dkd)"

    dkd_alpha: float = param(1.0, float, "weight of TCKD")
    dkd_beta: float = param(8.0, float, "weight of NCKD (the DKD authors use 8 for most CIFAR "
                                         "pairs, 2 to 6 for some)")
    dkd_T: float = param(4.0, float, "temperature of the DKD loss")
    dkd_warmup: int = param(20, int, "epochs over which the DKD loss is ramped up linearly")


@register_method("kd")
class KD(Distiller):
    """Hinton et al. (2015): CE + KL at ``kd_T``; no extra ``kd`` term (CRD sets it to 0).

    With ``--logit_stand`` the KL term uses Z-scored logits (Sun et al., CVPR 2024) while CE
    stays on the raw logits, as in that paper's code.
    """

    needs_feats = False
    supports_logit_stand = True
    recipe = Recipe(0.1, 0.9, 0.0)


@register_method("kdrefine")
class KDRefine(Distiller):
    """KDrefine: both logits standardized with multiplier 2 before CE and KL; ``kd`` is 0.

    Departs from the CVPR 2024 recipe by also training CE on the standardized student logits,
    exactly as the KDrefine loop does.
    """

    needs_feats = False
    multiplier = 2.0
    #: KDrefine's released train_student.py: learning rate 0.01 for every student
    recipe = Recipe(0.1, 0.9, 0.0, learning_rate=0.01,
                    source="KDrefine's README command and train_student.py defaults")

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

    Hyper-parameters come from ``--dkd_alpha``, ``--dkd_beta``, ``--dkd_T`` and ``--dkd_warmup``,
    whose defaults are the paper's CIFAR ones (1, 8, 4, 20); the DKD authors change beta per
    pair (see ``scripts/run_dkd.sh``).
    """

    needs_feats = False
    supports_logit_stand = True
    recipe = Recipe(1.0, 0.0, 1.0, source="DKD (Zhao et al., CVPR 2022): CE weight 1, DKD loss weight 1")
    params_class = DKDParams

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        p = ctx.params_as(DKDParams)
        self.criterion_kd = DKDLoss(alpha=p.dkd_alpha, beta=p.dkd_beta, temperature=p.dkd_T,
                                    warmup=p.dkd_warmup, logit_stand=self.logit_stand)

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        return self.criterion_kd(x.logit_s, x.logit_t, x.target, x.epoch)
