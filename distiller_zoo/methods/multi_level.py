"""MLKD: multi-level logit distillation on a weak and a strong view of each image (Jin et al.,
CVPR 2023), plain and with logit standardization (Sun et al., CVPR 2024)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from ..mlkd import EXTRA_TEMPERATURES, MLKDLoss
from .base import CLS_TERM, DIV_TERM, OWN_TERM, BuildContext, Distiller, Feats, Params, Recipe, param, register_method

MLKD_SOURCE = ("MLKD (Jin et al., CVPR 2023; Jin-Ying/Multi-Level-Logit-Distillation, commit 5ee473f): "
               "CE weight 0.1, KD weight 0.9 on every other term, base temperature 4 (mdistiller/engine/cfg.py, "
               "read by KD_ours.py); learning rate 0.025 (configs/cifar100/ours/res56_res20.yaml: 240 epochs; "
               "0.01 and 480 or 960 epochs for the ShuffleNet and MobileNetV2 students)")
MLKD_LS_SOURCE = ("logit-standardization-KD (commit f6e5aa5): MLKD.py with --logit-stand --base-temp 2 "
                  "--kd-weight 9 (its README's command; its logs' names: 6 for the vgg13 pairs and "
                  "resnet32x4 -> ShuffleV2), CE weight 0.1 (mdistiller/engine/cfg.py); learning rate 0.025 "
                  "and 480 epochs (configs/cifar100/mlkd/resnet56_resnet20.yaml)")


def temperature_list(text: str) -> str:
    """``--mlkd_temperatures``: comma-separated positive temperatures, as a canonical string
    (``'3,5,2,6'``); an ``argparse`` type, so a bad value is one line at parsing."""
    try:
        values = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive temperatures such as 3,5,2,6, "
                                         f"got {text!r}")
    return ",".join(f"{v:g}" for v in values)


@dataclass(frozen=True)
class MLKDParams(Params):
    """MLKD's own hyper-parameters; the defaults are the authors' (their base temperature is
    ``--kd_T``, the first of the temperatures)."""

    title = "MLKD (--distill mlkd)"

    mlkd_temperatures: str = param(
        ",".join(f"{t:g}" for t in EXTRA_TEMPERATURES), temperature_list,
        "temperatures of prediction augmentation after --kd_T, comma-separated (the authors' 3,5,2,6)")
    mlkd_released_slip: int = param(
        0, int, "1: reproduce the released code's slip, whose strong-view instance terms at the last two "
                "temperatures read the weak view's logits; 0 (default): the strong view's, as the paper",
        choices=[0, 1])


@register_method("mlkd")
class MLKD(Distiller):
    """Multi-level logit distillation (:mod:`distiller_zoo.mlkd`): ``cls`` = cross-entropy of the
    weak and of the strong view (summed), ``div`` = the instance level (KL at every temperature,
    both views), ``kd`` = the batch and class levels (weak view). The authors weight the last two
    with one KD weight, so the recipe's ``-a`` and ``-b`` are both that weight; it has no warm-up.

    The method reads a strong view of each image (``needs_strong_view``): the training loop
    feeds the student's and the teacher's logits of both views. Given none (a batch from a loader
    without one), the weak view stands in for the strong one.
    """

    paper = "MLKD (Jin et al., 2023), weak and strong views"
    loss_classes = "`MLKDLoss(temperatures, logit_stand)`"

    needs_feats = False
    needs_strong_view = True
    supports_logit_stand = True
    stackable = False  # its masks take a median of the batch
    recipe = Recipe(0.1, 0.9, 0.9, learning_rate=0.025, source=MLKD_SOURCE)
    logit_stand_recipe = Recipe(0.1, 9.0, 9.0, learning_rate=0.025, kd_T=2.0, source=MLKD_LS_SOURCE)
    params_class = MLKDParams

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        p = ctx.params_as(MLKDParams)
        extra = [float(t) for t in temperature_list(p.mlkd_temperatures).split(",")]
        self.criterion_kd = MLKDLoss([ctx.shared.kd_T, *extra], logit_stand=self.logit_stand,
                                     released_slip=bool(p.mlkd_released_slip))

    def forward(self, feat_s: Feats | None, logit_s: torch.Tensor, feat_t: Feats | None,
                logit_t: torch.Tensor, target: torch.Tensor, epoch: int,
                index: torch.Tensor | None = None, contrast_idx: torch.Tensor | None = None,
                logit_s_strong: torch.Tensor | None = None,
                logit_t_strong: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if logit_s_strong is None or logit_t_strong is None:
            logit_s_strong, logit_t_strong = logit_s, logit_t
        terms = self.criterion_kd(logit_s, logit_s_strong, logit_t, logit_t_strong, target)
        return {CLS_TERM: terms.ce, DIV_TERM: terms.instance, OWN_TERM: terms.batch + terms.class_level}
