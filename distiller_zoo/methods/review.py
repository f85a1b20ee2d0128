"""Methods that match every stage through trained connectors, from mdistiller's CIFAR baselines:
ReviewKD (knowledge review) and OFD (overhaul of feature distillation).

Their published recipes are megvii-research/mdistiller's (commit a08d46f): the CE weight and the
feature loss weight of ``configs/cifar100/{reviewkd,ofd}.yaml`` over the defaults of
``mdistiller/engine/cfg.py``; neither uses the KL term, so ``-a`` is 0. The per-model tables of
the authors' code (channels, sizes, the BN before each ReLU) are read here off a probe batch's
features and the teacher's ``get_bn_before_relu()``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from helper.errors import UserError
from helper.ranges import Range

from ..ofd import OFDLoss, bn_margin
from ..reviewkd import ReviewKDLoss
from .base import BuildContext, Distiller, Feats, Params, Recipe, StepInputs, inner, param, register_method

MDISTILLER = "mdistiller (commit a08d46f)"


def review_levels(feats: Feats) -> Feats:
    """The levels ReviewKD reads: the stage features and the pooled vector, ``feats[1:]``."""
    return feats[1:]


def aligned(n: int, *lists: list) -> list[list]:
    """The last ``n`` entries of each list: stages paired from the deepest, as the authors'
    code pairs networks with different numbers of stages."""
    return [list(x[len(x) - n:]) for x in lists]


def check_maps(method: str, role: str, feats: Feats, what: str) -> None:
    """A :class:`UserError` unless every feature is a ``(N, C, H, W)`` map."""
    flat = [tuple(f.shape) for f in feats if f.dim() != 4]
    if flat:
        raise UserError(f"{method} needs {what} of the {role} as (N, C, H, W) maps, got shapes {flat}")


@dataclass(frozen=True)
class ReviewKDParams(Params):
    """ReviewKD's hyper-parameters (Chen et al., CVPR 2021), defaults mdistiller's CIFAR ones."""

    title = "ReviewKD (--distill reviewkd)"

    reviewkd_warmup: int = param(20, int, "epochs over which the ReviewKD loss is ramped up linearly "
                                          "(mdistiller's WARMUP_EPOCHS)",
                                 range=Range(1, allowed="must be at least 1 (epochs over which the ReviewKD "
                                                        "loss ramps up)"))
    reviewkd_max_mid_channel: int = param(512, int, "widest fused map: the ABFs work at min(this, the student's "
                                                    "pooled width) channels",
                                          range=Range(1, allowed="must be at least 1 (channels of the fused maps)"))


@register_method("reviewkd")
class ReviewKD(Distiller):
    """Knowledge review (Chen et al., CVPR 2021): ABF fusions from the student's deepest level
    (the pooled vector) to its shallowest stage, each output matched to the teacher's
    pre-activation feature of its level with the HCL loss, ramped up over ``--reviewkd_warmup``
    epochs. The student's features are read after their ReLU, the teacher's before it, as in
    mdistiller's CIFAR recipe (``STU_PREACT: False``). Levels ``feats[1:]`` (stages and pooled
    vector) of both networks, paired from the deepest when their numbers differ.
    """

    paper = "ReviewKD (Chen et al., 2021)"
    loss_classes = "`ReviewKDLoss` (`ABF` fusions + `hcl_loss`)"

    recipe = Recipe(1.0, 0.0, 5.0, source=f"{MDISTILLER} configs/cifar100/reviewkd.yaml: CE_WEIGHT 1, "
                                          "REVIEWKD_WEIGHT 5, WARMUP_EPOCHS 20 (engine/cfg.py)")
    params_class = ReviewKDParams
    teacher_preact = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        p = ctx.params_as(ReviewKDParams)
        s, t = review_levels(ctx.feat_s), review_levels(ctx.feat_t)
        self.levels = min(len(s), len(t))
        s, t = aligned(self.levels, s, t)
        check_maps("reviewkd", "student", s[:-1], "the stage features")
        check_maps("reviewkd", "teacher", t[:-1], "the stage features")
        self.criterion_kd = ReviewKDLoss([int(f.shape[1]) for f in s], [int(f.shape[1]) for f in t],
                                         max_mid_channels=p.reviewkd_max_mid_channel, warmup=p.reviewkd_warmup)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.criterion_kd]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        s, t = aligned(self.levels, review_levels(x.feat_s), review_levels(x.feat_t))
        return self.criterion_kd(s, t, x.epoch)


@dataclass(frozen=True)
class OFDParams(Params):
    """OFD's connector (Heo et al., ICCV 2019), default mdistiller's."""

    title = "OFD (--distill ofd)"

    ofd_connector_kernel: int = param(1, int, "kernel size of the conv+BN connectors (mdistiller's "
                                              "CONNECTOR.KERNEL_SIZE)", choices=[1, 3, 5])


def teacher_bns_before_relu(teacher: nn.Module, channels: list[int]) -> list[nn.BatchNorm2d]:
    """The teacher's BN before each stage's ReLU (``get_bn_before_relu()``), one per stage of
    ``channels``; a :class:`UserError` where the teacher has none there."""
    name = type(teacher).__name__
    get = getattr(teacher, "get_bn_before_relu", None)
    try:
        bns = list(get()) if get is not None else None
    except NotImplementedError:
        bns = None
    if bns is None:
        raise UserError(f"ofd takes its margins from the teacher's BN before each ReLU, which the teacher "
                        f"{name} does not define (get_bn_before_relu); choose another teacher or method")
    odd = sorted({type(m).__name__ for m in bns if not isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if odd:
        raise UserError(f"ofd takes its margins from the teacher's BN before each ReLU, but the teacher {name} "
                        f"has {', '.join(odd)} there (no single BN: a re-parameterizable block's output is a sum "
                        f"of branches); choose a teacher with plain BNs")
    found = [int(m.num_features) for m in bns]
    if found != channels:
        raise UserError(f"ofd: the teacher {name}'s BNs before the ReLUs have {found} channels but its "
                        f"stage features {channels}")
    return bns


@register_method("ofd")
class OFD(Distiller):
    """Overhaul of feature distillation (Heo et al., ICCV 2019): pre-ReLU stage features
    ``feats[1:-1]`` of both networks, the student's through conv+BN connectors, compared with
    the partial L2 distance against the teacher's margin-ReLU'd features, margins from the
    teacher's BN before each ReLU; stages paired from the deepest.

    The teacher stays in eval mode (running BN statistics), as every method here; both OFD
    codes run the teacher forward in train mode (batch statistics).
    """

    paper = "OFD (Heo et al., 2019)"
    loss_classes = "`OFDLoss` (`ConvBNConnector`s, `bn_margin`, `partial_l2`)"

    recipe = Recipe(1.0, 0.0, 0.001, source=f"{MDISTILLER} configs/cifar100/ofd.yaml over engine/cfg.py: "
                                            "CE_WEIGHT 1, FEAT_WEIGHT 0.001, CONNECTOR.KERNEL_SIZE 1")
    params_class = OFDParams
    needs_preact = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        g_s, g_t = inner(ctx.feat_s), inner(ctx.feat_t)
        check_maps("ofd", "student", g_s, "the stage features")
        check_maps("ofd", "teacher", g_t, "the stage features")
        bns = teacher_bns_before_relu(ctx.teacher, [int(f.shape[1]) for f in g_t])
        self.stages = min(len(g_s), len(g_t))
        g_s, g_t, bns = aligned(self.stages, g_s, g_t, bns)
        margins = [bn_margin(bn.weight, bn.bias) for bn in bns]
        self.criterion_kd = OFDLoss([int(f.shape[1]) for f in g_s], [int(f.shape[1]) for f in g_t], margins,
                                    kernel_size=ctx.params_as(OFDParams).ofd_connector_kernel)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.criterion_kd.connectors]

    def kd_loss(self, x: StepInputs) -> torch.Tensor:
        g_s, g_t = aligned(self.stages, inner(x.feat_s), inner(x.feat_t))
        return self.criterion_kd(g_s, g_t)
