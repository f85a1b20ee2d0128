"""Model registry: ``model_dict[name](num_classes=100, **kw)`` as in the CRD/RepDistiller code.

Constructors register themselves with :func:`register_model`; re-parameterizable students are
registered with ``rep=True`` and accept ``blocktype=``, ``deploy=`` and ``fused=`` keywords.
"""
from __future__ import annotations

from typing import Callable

from helper.errors import UserError

model_dict: dict[str, Callable] = {}
rep_model_names: set[str] = set()


def register_model(name: str | None = None, rep: bool = False) -> Callable[[Callable], Callable]:
    """Decorator adding a constructor to :data:`model_dict` under ``name`` (default: its name)."""

    def decorator(fn: Callable) -> Callable:
        key = name or fn.__name__
        if key in model_dict:
            raise ValueError(f"model {key!r} registered twice")
        model_dict[key] = fn
        if rep:
            rep_model_names.add(key)
        return fn

    return decorator


def is_rep_model(name: str) -> bool:
    """True when ``name`` is a re-parameterizable student (has a deploy form)."""
    return name in rep_model_names


def check_model_name(name: str, flag: str = "--model") -> str:
    """Return ``name`` if registered, else raise a :class:`UserError` listing the known names."""
    if name not in model_dict:
        known = ", ".join(sorted(model_dict))
        raise UserError(f"unknown model {name!r} given to {flag}; known models: {known}")
    return name


def build_model(name: str, num_classes: int = 100, blocktype: str | None = None,
                deploy: bool = False, **kw):
    """Build ``name``; block type and deploy flag only reach re-parameterizable students."""
    check_model_name(name)
    if is_rep_model(name):
        if blocktype is not None:
            kw["blocktype"] = blocktype
        kw["deploy"] = deploy
    return model_dict[name](num_classes=num_classes, **kw)
