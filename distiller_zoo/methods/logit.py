"""Logit-only methods: KD, KDrefine's standardized KD, and DKD."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helper.ranges import TEMPERATURE, WEIGHT, Range

from ..dkd import DKDLoss
from ..kd import standardize_logits
from .base import (CLS_TERM, DIV_TERM, BuildContext, Distiller, Params, Recipe, StepInputs, param,
                   register_method)


@dataclass(frozen=True)
class DKDParams(Params):
    """DKD's hyper-parameters (Zhao et al., CVPR 2022), defaults the paper's CIFAR ones."""

    title = "DKD (--distill dkd)"

    dkd_alpha: float = param(1.0, float, "weight of TCKD", range=WEIGHT)
    dkd_beta: float = param(8.0, float, "weight of NCKD (the DKD authors use 8 for most CIFAR "
                                         "pairs, 2 to 6 for some)", range=WEIGHT)
    dkd_T: float = param(4.0, float, "temperature of the DKD loss", range=TEMPERATURE)
    dkd_warmup: int = param(20, int, "epochs over which the DKD loss is ramped up linearly",
                            range=Range(1, allowed="must be at least 1 (epochs over which the DKD loss ramps up)"))


@register_method("kd")
class KD(Distiller):
    """Hinton et al. (2015): CE + KL at ``kd_T``; no extra ``kd`` term (CRD sets it to 0).

    With ``--logit_stand`` the KL term uses Z-scored logits (Sun et al., CVPR 2024) while CE
    stays on the raw logits, as in that paper's code, and the recipe is its authors' (CE weight
    0.1, KD weight 9, base temperature 2: ``--logit-stand --base-temp 2 --kd-weight 9``).
    """

    paper = "Hinton et al., 2015"
    loss_classes = "`DistillKL(T)`"

    needs_feats = False
    supports_logit_stand = True
    recipe = Recipe(0.1, 0.9, 0.0)
    logit_stand_recipe = Recipe(0.1, 9.0, 0.0, kd_T=2.0,
                                source="logit-standardization-KD (commit f6e5aa5): CE weight 0.1 "
                                       "(mdistiller/engine/cfg.py), --kd-weight 9 --base-temp 2 (its "
                                       "README's command and tools/train.py defaults)")


@register_method("kdrefine")
class KDRefine(Distiller):
    """KDrefine: both logits standardized with multiplier 2 before CE and KL; ``kd`` is 0.

    Departs from the CVPR 2024 recipe by also training CE on the standardized student logits,
    exactly as the KDrefine loop does.
    """

    paper = "KDrefine"
    loss_classes = "`DistillKL(4)` on `standardize_logits(·, 2.0)`"

    needs_feats = False
    logit_stand_note = "kdrefine standardizes its logits itself"
    multiplier = 2.0
    #: KDrefine's released train_student.py: learning rate 0.01 for every student
    recipe = Recipe(0.1, 0.9, 0.0, learning_rate=0.01,
                    source="KDrefine's README command and train_student.py defaults")

    def logit_terms(self, logit_s: torch.Tensor, logit_t: torch.Tensor,
                    target: torch.Tensor) -> dict[str, torch.Tensor]:
        z_s = standardize_logits(logit_s, self.multiplier)
        z_t = standardize_logits(logit_t, self.multiplier)
        return {CLS_TERM: F.cross_entropy(z_s, target), DIV_TERM: self.criterion_div(z_s, z_t)}


@register_method("dkd")
class DKD(Distiller):
    """Decoupled KD (Zhao et al., CVPR 2022) wired as KDrefine does: ``cls`` = CE, ``div`` = KL,
    ``kd`` = the DKD loss with its epoch warm-up (KDrefine trains with ``-a 0 -b 1``-style
    weights). The DKD loss keeps its TCKD term (KDrefine's copy drops it).

    Hyper-parameters come from ``--dkd_alpha``, ``--dkd_beta``, ``--dkd_T`` and ``--dkd_warmup``,
    whose defaults are the paper's CIFAR ones (1, 8, 4, 20); the DKD authors change beta per
    pair (see ``scripts/run_dkd.sh``).
    """

    paper = "DKD (Zhao et al., 2022), with its TCKD term"
    loss_classes = "`DKDLoss(alpha, beta, temperature, warmup)`"

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
