"""Distillation methods: one :class:`Distiller` per ``--distill`` name, in a registry.

Importing this package registers kd, kdrefine, dkd, hint, attention, nst, kdsvd, similarity,
vid, semckd, crd, correlation, rkd, pkt, srrl, abound, factor and fsp.
"""
from . import embedding, feature, logit, two_stage  # noqa: F401  (fill the registry)
from .base import (METHODS, BuildContext, Distiller, Params, Recipe, SharedParams, StepInputs,
                   add_method_flags, build_distiller, build_method, get_method, method_names,
                   method_params_classes, param, register_method)
from .embedding import CRDParams
from .feature import HintParams
from .logit import DKDParams

__all__ = ["METHODS", "BuildContext", "CRDParams", "DKDParams", "Distiller", "HintParams", "Params",
           "Recipe", "SharedParams", "StepInputs", "add_method_flags", "build_distiller", "build_method",
           "get_method", "method_names", "method_params_classes", "param", "register_method"]
