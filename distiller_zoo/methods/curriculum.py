"""CTKD: KD with a learnable temperature trained through gradient reversal (Li et al., AAAI 2023)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.ranges import TEMPERATURE, Range

from ..ctkd import GlobalTemperature, cosine_lambda, kl_at_temperature
from ..kd import standardize_logits
from .base import (CLS_TERM, DIV_TERM, OWN_TERM, BuildContext, Distiller, Feats, Params, Recipe, param,
                   register_method)

#: The extra term CTKD returns: the temperature of the step (detached, weighted by nothing), which
#: the loop averages over the epoch and logs with the loss terms (TensorBoard
#: ``train_loss_temperature``).
TEMPERATURE_TERM = "temperature"
NON_NEGATIVE = Range(0, allowed="must be 0 or positive")

CTKD_SOURCE = ("CTKD (Li et al., AAAI 2023; zhengli97/CTKD, commit 7d52522): scripts/run_cifar_distill.sh "
               "(-r 0.1 -a 0.9 -b 0, --have_mlp 1 --mlp_name global, --cosine_decay 1 --decay_max 0 "
               "--decay_min -1 --decay_loops 10) and train_student.py defaults (--t_start 1 --t_end 20)")
CTKD_LS_SOURCE = ("logit-standardization-KD (commit f6e5aa5): CTKD/scripts/run_cifar_distill.sh "
                  "(-r 0.1 -a 9 -b 0) and its logs' names (ctkd,<teacher>,<student>,2,9)")


@dataclass(frozen=True)
class CTKDParams(Params):
    """CTKD's hyper-parameters; the defaults are the authors' CIFAR ones (their flag names in
    the help)."""

    title = "CTKD (--distill ctkd)"

    ctkd_t_start: float = param(1.0, float, "lowest temperature: the temperature is t_start + t_range * "
                                            "sigmoid(theta) (the authors' --t_start)", range=TEMPERATURE)
    ctkd_t_range: float = param(20.0, float, "width of the temperature's range (the authors' --t_end)",
                                range=NON_NEGATIVE)
    ctkd_lambda_min: float = param(0.0, float, "weight of the gradient reversal at the start (the authors' "
                                               "-1 * --decay_max)", range=NON_NEGATIVE)
    ctkd_lambda_max: float = param(1.0, float, "weight of the gradient reversal once the curriculum is over "
                                               "(the authors' -1 * --decay_min)", range=NON_NEGATIVE)
    ctkd_lambda_epochs: int = param(10, int, "epochs over which the reversal weight rises along a cosine "
                                             "(the authors' --decay_loops)",
                                    range=Range(1, allowed="must be at least 1 (epochs of the cosine curriculum)"))


@register_method("ctkd")
class CTKD(Distiller):
    """Curriculum Temperature KD (Li et al., AAAI 2023) with the global temperature: ``cls`` =
    CE, ``div`` = the KD loss at the learned temperature (:class:`GlobalTemperature`, trained
    with the student by the same SGD, weight decay included, as in the authors' code), ``kd`` =
    0, and the step's temperature as the unweighted term ``temperature`` (for the logs).
    ``--kd_T`` is not read: the temperature is learned.

    With ``--logit_stand`` the KD loss takes Z-scored logits (Sun et al., CVPR 2024), CE the raw
    ones. The logit-standardization authors' ``CTKD/train_student.py`` swaps the two: it
    standardizes *without* their ``--logit_stand`` and not with it (``DistillKL() if
    opt.logit_stand else DistillKL_logit_stand()``); their published runs, whose command has no
    ``--logit_stand``, are therefore the standardized ones. Here the flag means what the paper
    says (``tests/test_ctkd.py`` checks both against their code).
    """

    paper = "CTKD (Li et al., 2023), global temperature"
    loss_classes = "`GlobalTemperature` + `kl_at_temperature`"

    needs_feats = False
    supports_logit_stand = True
    stackable = False  # a learned temperature per trial, and a custom autograd function
    recipe = Recipe(0.1, 0.9, 0.0, source=CTKD_SOURCE)
    logit_stand_recipe = Recipe(0.1, 9.0, 0.0, source=CTKD_LS_SOURCE)
    params_class = CTKDParams

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        p = ctx.params_as(CTKDParams)
        self.temperature = GlobalTemperature(p.ctkd_t_start, p.ctkd_t_range)
        self.lambda_min, self.lambda_max = p.ctkd_lambda_min, p.ctkd_lambda_max
        self.lambda_epochs = p.ctkd_lambda_epochs

    def reversal(self, epoch: int) -> float:
        """The weight of the gradient reversal in ``epoch`` (the cosine curriculum)."""
        return cosine_lambda(epoch, self.lambda_min, self.lambda_max, self.lambda_epochs)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.temperature]

    def forward(self, feat_s: Feats | None, logit_s: torch.Tensor, feat_t: Feats | None,
                logit_t: torch.Tensor, target: torch.Tensor, epoch: int,
                index: torch.Tensor | None = None,
                contrast_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        temperature = self.temperature(self.reversal(epoch))
        div_s, div_t = logit_s, logit_t
        if self.logit_stand:
            div_s, div_t = standardize_logits(logit_s), standardize_logits(logit_t)
        return {CLS_TERM: F.cross_entropy(logit_s, target),
                DIV_TERM: kl_at_temperature(div_s, div_t, temperature),
                OWN_TERM: logit_s.new_zeros(()),
                TEMPERATURE_TERM: temperature.detach().reshape(())}
