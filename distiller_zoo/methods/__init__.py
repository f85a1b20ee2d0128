"""Distillation methods: one :class:`Distiller` per ``--distill`` name, in a registry.

Importing this package registers the methods of its modules (``@register_method``); the
registry (:func:`method_names`, :func:`get_method`) is the one list of them, which the CLI
choices, the README's methods table (``scripts/method_table.py``) and the tests read.
"""
from . import embedding, feature, logit, review, two_stage  # noqa: F401  (fill the registry)
from . import curriculum  # noqa: F401  (CTKD)
from . import multi_level  # noqa: F401  (MLKD)
from .base import (CLS_TERM, DIV_TERM, INIT_STAGE_FLAGS, METHODS, OWN_TERM, BuildContext, Distiller, Params,
                   Recipe, SampleFlags, SharedParams, StepInputs, add_method_flags, build_distiller,
                   build_method, get_method, method_flag_ranges, method_flags, method_names,
                   method_params_classes, param, register_method, unread_flags)
from .embedding import CRDParams
from .feature import HintParams
from .logit import DKDParams
from .review import OFDParams, ReviewKDParams

#: The ``--distill`` of a command that gives none (the project's own method).
DEFAULT_METHOD = "kdrefine"

__all__ = ["CLS_TERM", "DEFAULT_METHOD", "DIV_TERM", "INIT_STAGE_FLAGS", "METHODS", "OWN_TERM", "BuildContext",
           "CRDParams", "DKDParams", "Distiller", "HintParams", "OFDParams", "Params", "Recipe", "ReviewKDParams",
           "SampleFlags",
           "SharedParams", "StepInputs", "add_method_flags", "build_distiller", "build_method",
           "get_method", "method_flag_ranges", "method_flags", "method_names", "method_params_classes",
           "param", "register_method", "unread_flags"]
