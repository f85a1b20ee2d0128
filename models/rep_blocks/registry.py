"""The block-type registry, the conv+BN factory the model constructors call, and the
model-level helpers (:func:`reparameterize_model`, :func:`set_fused`, :func:`state_dict_forms`).

Block classes (:mod:`models.rep_blocks.blocks`) register themselves with
:func:`register_block_type`; this module does not import them, so it looks the classes up by
name (``"base"`` is :class:`~models.rep_blocks.ConvBN`). In place of KDrefine's module-level
``CONV_BN_IMPL``/``DEPLOY_FLAG`` switches, block type, ``deploy`` and ``fused`` are arguments,
bound once by :func:`block_factory` and threaded through the model constructors.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Callable

import torch.nn as nn

from helper.errors import UserError

__all__ = ["BLOCK_TYPES", "DEFAULT_BLOCKTYPE", "BASE_BLOCKTYPE", "ConvBNFactory",
           "register_block_type", "get_block_type", "make_conv_bn", "block_factory",
           "reparameterize_model", "set_fused", "state_dict_forms"]

DEFAULT_BLOCKTYPE = "AMBB"
#: The single conv+BN block, which 1x1 and large (>= 7) kernels always get.
BASE_BLOCKTYPE = "base"
BLOCK_TYPES: dict[str, type[nn.Module]] = {}

#: What the model constructors call to build a conv+BN: ``(in, out, k, stride=, padding=,
#: groups=, nonlinear=) -> module``; made by :func:`block_factory`.
ConvBNFactory = Callable[..., nn.Module]


def register_block_type(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a block to :data:`BLOCK_TYPES` under ``name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in BLOCK_TYPES:
            raise ValueError(f"block type {name!r} registered twice")
        BLOCK_TYPES[name] = cls
        return cls

    return decorator


def get_block_type(name: str) -> type[nn.Module]:
    """The block class registered as ``name``; else a :class:`UserError` listing the known ones."""
    try:
        return BLOCK_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(BLOCK_TYPES))
        raise UserError(f"unknown block type {name!r} (--blocktype); known block types: {known}") \
            from None


def make_conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, *,
                 blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False, fused: bool | str = "auto",
                 nonlinear: nn.Module | None = None) -> nn.Module:
    """A conv+BN of the given block type (KDrefine's ``conv_bn``/``conv_bn_relu``).

    As in the original, a 1x1 kernel or one of 7 or more always gives the ``base`` block
    (:class:`~models.rep_blocks.ConvBN`). ``padding`` defaults to 'same'
    (``dilation * (kernel_size // 2)``); ``nonlinear`` (e.g. ``nn.ReLU(inplace=True)``) is
    applied after the sum of the branches.
    """
    cls = get_block_type(blocktype)
    if kernel_size == 1 or kernel_size >= 7:
        cls = get_block_type(BASE_BLOCKTYPE)
    if padding is None:
        padding = dilation * (kernel_size // 2)
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
               dilation=dilation, groups=groups, deploy=deploy, fused=fused, nonlinear=nonlinear)


def block_factory(blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False,
                  fused: bool | str = "auto") -> ConvBNFactory:
    """:func:`make_conv_bn` with the block settings bound; checks ``blocktype`` now."""
    get_block_type(blocktype)
    return functools.partial(make_conv_bn, blocktype=blocktype, deploy=deploy, fused=fused)


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Convert every block of ``model`` to its deploy form, in place; returns ``model``.

    Calls ``switch_to_deploy()`` on every submodule that has one (as KDrefine's ``convert.py``
    and timm's ``reparameterize_model`` do). Calling it again changes nothing. Plain conv+BN pairs
    outside the blocks (e.g. ResNet downsample shortcuts) are left as they are, as in the original.
    """
    for module in list(model.modules()):
        switch = getattr(module, "switch_to_deploy", None)
        if callable(switch):
            switch()
    return model


def set_fused(model: nn.Module, fused: bool | str) -> nn.Module:
    """Switch every block of ``model`` between the fused (True), the separate-branch (False) and
    the device-dependent (``"auto"``: fused training on accelerators) forward."""
    block_classes = tuple(BLOCK_TYPES.values())
    for module in model.modules():
        if isinstance(module, block_classes):
            module.fused = fused
    return model


def state_dict_forms(keys: Iterable[str]) -> set[str]:
    """The forms (``"train"``, ``"deploy"``) of the registered blocks that state-dict ``keys``
    hold, as each block class tells by its :meth:`key_markers` (submodule names only its train
    or deploy form has); empty when no key names such a submodule."""
    names = {part for key in keys for part in key.split(".")[:-1]}
    forms: set[str] = set()
    for cls in BLOCK_TYPES.values():
        markers = getattr(cls, "key_markers", None)
        for form, marker_names in (markers() if callable(markers) else {}).items():
            if names.intersection(marker_names):
                forms.add(form)
    return forms
