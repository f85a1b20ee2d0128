"""Distillation methods: one :class:`Distiller` per ``--distill`` name, in a registry.

Importing this package registers kd, kdrefine, dkd, hint, attention, nst, kdsvd, similarity,
vid, semckd, crd, correlation, rkd, pkt, srrl, abound, factor and fsp.
"""
from . import embedding, feature, logit, two_stage  # noqa: F401  (fill the registry)
from .base import (METHODS, BuildContext, Distiller, Recipe, StepInputs, add_method_flags,
                   build_method, get_method, method_names, register_method)

__all__ = ["METHODS", "BuildContext", "Distiller", "Recipe", "StepInputs", "add_method_flags",
           "build_method", "get_method", "method_names", "register_method"]
