"""Re-parameterizable conv+BN blocks, their registry, and the one model converter.

Every block here is trained as a sum of parallel conv+BN branches and converted, after training,
into one KxK conv with a bias (structural re-parameterization):

* ``base``   -- :class:`ConvBN`: a single conv+BN; converts to a conv with bias.
* ``AMBB``   -- :class:`AMBB`, KDrefine's block (Y. Zheng et al., code at
  github.com/YujieZheng99/KDrefine, where it is also called ACTDB): three KxK conv+BN
  duplicates, a Kx1 and a 1xK conv+BN. The default.
* ``ACB``    -- :class:`ACB`, ACNet (Ding et al., "ACNet: Strengthening the Kernel Skeletons for
  Powerful CNN via Asymmetric Convolution Blocks", ICCV 2019): KxK + Kx1 + 1xK conv+BN.
* ``RepVGG`` -- :class:`RepVGGBlock` (Ding et al., "RepVGG: Making VGG-style ConvNets Great
  Again", CVPR 2021): KxK + 1x1 conv+BN, plus a BN-only identity branch when the input and output
  shapes agree.

The maths of the conversion is in :mod:`models.fusion` (DBB's transforms, Ding et al., "Diverse
Branch Block", CVPR 2021).

Departures from the original code (KDrefine's ``convnet_utils.py``/``ambb.py``):

* No module-level switches (``CONV_BN_IMPL``, ``DEPLOY_FLAG``): block type, ``deploy`` and
  ``fused`` are constructor arguments, threaded through the model constructors via
  :func:`make_conv_bn` / :func:`block_factory`.
* ``fused=True`` computes the training form with one conv over all branches (their
  kernels zero-padded to KxK and stacked along output channels) and one batch-norm call over all
  branch channels, then sums the branch chunks. This gives the same outputs, gradients and
  running statistics as the separate branches (tested) with fewer, larger kernels. In eval mode
  it folds every branch into one conv on the fly (the deploy maths, kept differentiable).
  ``fused=False`` runs the branches one by one as the original does. The trade: the zero taps
  of the embedded Kx1/1xK kernels cost extra multiply-adds (AMBB 3x3: 45 instead of 33 per
  output), for 1 conv + 1 BN call instead of 5 + 5 -- a win where launches and small kernels
  dominate (GPUs). On a CPU, which is arithmetic-bound, the extra taps cost more than the saved
  calls (represnet20 training step at batch 64 on 2 cores: 1.30 s fused vs 1.02 s separate), so
  the default ``fused="auto"`` takes the fused training path for inputs on an accelerator and
  the separate one for CPU inputs; eval mode folds on the fly everywhere. Both paths compute
  the same thing, so the choice only changes speed.
* ACB and RepVGG convert into ``tdb_reparam`` like AMBB, so all non-base blocks share one deploy
  layout (the ACNet/RepVGG code calls it ``fused_conv``/``rbr_reparam``).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from helper.errors import UserError

from .fusion import add_branches, add_identity, embed_center, fuse_bn_module, stack_branches, \
    unstack_branches

__all__ = [
    "Branch",
    "ConvBN",
    "RepBlock",
    "AMBB",
    "ACB",
    "RepVGGBlock",
    "BLOCK_TYPES",
    "DEFAULT_BLOCKTYPE",
    "register_block_type",
    "get_block_type",
    "make_conv_bn",
    "block_factory",
    "ConvBNFactory",
    "reparameterize_model",
    "set_fused",
]

DEFAULT_BLOCKTYPE = "AMBB"
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


class Branch(NamedTuple):
    """One training-time branch: ``bn(conv(x))``, or ``bn(x)`` when ``conv`` is None (identity)."""

    conv: nn.Conv2d | None
    bn: nn.BatchNorm2d


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# base: one conv + BN
# --------------------------------------------------------------------------------------------
@register_block_type("base")
class ConvBN(nn.Module):
    """Conv (no bias) + BN; deploy form: the conv with a bias. Keys ``conv.weight``, ``bn.*`` /
    ``conv.weight``, ``conv.bias`` as in KDrefine's ``convnet_utils.ConvBN``.

    ``nonlinear`` (e.g. ``nn.ReLU()``) is applied to the output; ``fused`` is accepted for a
    uniform interface and has nothing to fuse in a single branch.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1,
                 groups: int = 1, deploy: bool = False, fused: bool | str = "auto",
                 nonlinear: nn.Module | None = None) -> None:
        super().__init__()
        self.deploy = deploy
        self.fused = fused
        self.nonlinear = nonlinear if nonlinear is not None else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, dilation=dilation, groups=groups, bias=deploy)
        if not deploy:
            self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.nonlinear(self.conv(x))
        return self.nonlinear(self.bn(self.conv(x)))

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The kernel and bias of the one conv equal to this block in eval mode."""
        if self.deploy:
            return self.conv.weight, self.conv.bias
        return fuse_bn_module(self.conv.weight, self.bn)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold the BN into the conv, in place; a second call does nothing."""
        if self.deploy:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        conv = _conv_like(self.conv, kernel, bias)
        del self.conv, self.bn
        self.conv = conv
        self.deploy = True


def _conv_like(template: nn.Conv2d, kernel: Tensor, bias: Tensor) -> nn.Conv2d:
    """A conv with ``template``'s geometry holding ``kernel`` and ``bias`` (detached copies)."""
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size,
                     stride=template.stride, padding=template.padding,
                     dilation=template.dilation, groups=template.groups, bias=True,
                     device=kernel.device, dtype=kernel.dtype)
    conv.weight.copy_(kernel)
    conv.bias.copy_(bias)
    conv.train(template.training)
    return conv


# --------------------------------------------------------------------------------------------
# multi-branch blocks
# --------------------------------------------------------------------------------------------
class RepBlock(nn.Module):
    """Base of the multi-branch blocks: a sum of conv+BN branches -> one KxK conv ``tdb_reparam``.

    Subclasses build their branches in :meth:`_build_branches` with :meth:`_conv`, :meth:`_bn`
    and :meth:`_conv_bn`, list them in :meth:`branches` (an identity branch, if any, last), and
    name every training-time attribute in ``branch_names`` (deleted on conversion).

    Every branch conv has the block's stride, dilation and groups, and a padding reduced by the
    amount its kernel is smaller than KxK, so that all branch windows coincide with the KxK
    window; then a small kernel zero-padded to KxK computes the same conv (see
    :func:`models.fusion.embed_center`). KxK must be odd and ``padding == dilation * (K // 2)``
    (KDrefine's AMBB asserts ``padding == K // 2``).
    """

    branch_names: tuple[str, ...] = ()

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1,
                 deploy: bool = False, fused: bool | str = "auto",
                 nonlinear: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size % 2 == 0:
            raise ValueError(f"{type(self).__name__} needs an odd square kernel, got {kernel_size}")
        if padding is None:
            padding = dilation * (kernel_size // 2)
        if padding != dilation * (kernel_size // 2):
            raise ValueError(f"{type(self).__name__} needs 'same' padding "
                             f"{dilation * (kernel_size // 2)} for kernel {kernel_size}, "
                             f"got {padding}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) not divisible by groups "
                             f"({groups})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups = dilation, groups
        self.deploy = deploy
        self.fused = fused
        self.nonlinear = nonlinear if nonlinear is not None else nn.Identity()
        if deploy:
            self.tdb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=padding, dilation=dilation, groups=groups,
                                         bias=True)
        else:
            self._build_branches()

    # ---- construction helpers ------------------------------------------------------------
    def _build_branches(self) -> None:
        raise NotImplementedError

    def branches(self) -> list[Branch]:
        """The training-time branches, in the order they are summed (identity last)."""
        raise NotImplementedError

    def _conv(self, kernel_size: tuple[int, int]) -> nn.Conv2d:
        """A branch conv (no bias) of size ``kh x kw`` whose window is centred in the KxK one."""
        kh, kw = kernel_size
        k, d = self.kernel_size, self.dilation
        padding = (self.padding - d * ((k - kh) // 2), self.padding - d * ((k - kw) // 2))
        return nn.Conv2d(self.in_channels, self.out_channels, kernel_size, stride=self.stride,
                         padding=padding, dilation=d, groups=self.groups, bias=False)

    def _bn(self, channels: int | None = None) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels or self.out_channels)

    def _conv_bn(self, kernel_size: tuple[int, int]) -> nn.Sequential:
        """``conv`` + ``bn`` as an ``nn.Sequential`` (keys ``.conv.weight``, ``.bn.*``)."""
        seq = nn.Sequential()
        seq.add_module("conv", self._conv(kernel_size))
        seq.add_module("bn", self._bn())
        return seq

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"deploy={self.deploy}, fused={self.fused}")

    # ---- conversion ----------------------------------------------------------------------
    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Kernel and bias of the one KxK conv equal to this block in eval mode (differentiable)."""
        if self.deploy:
            return self.tdb_reparam.weight, self.tdb_reparam.bias
        kernels, biases, identity = [], [], None
        for branch in self.branches():
            if branch.conv is None:
                identity = branch.bn
                continue
            kernel, bias = fuse_bn_module(branch.conv.weight, branch.bn)
            kernels.append(embed_center(kernel, self.kernel_size))
            biases.append(bias)
        kernel, bias = add_branches(kernels, biases)
        if identity is not None:
            ones = torch.ones(self.out_channels, 1, 1, 1, dtype=kernel.dtype, device=kernel.device)
            scale, id_bias = fuse_bn_module(ones, identity)
            kernel = add_identity(kernel, scale.reshape(-1), self.groups)
            bias = bias + id_bias
        return kernel, bias

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replace the branches by ``tdb_reparam``, in place; a second call does nothing."""
        if self.deploy:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        square = self.branches()[0].conv  # every block's first branch is the KxK conv
        assert square is not None and square.kernel_size == (self.kernel_size,) * 2
        reparam = _conv_like(square, kernel, bias)
        for name in self.branch_names:
            if hasattr(self, name):
                delattr(self, name)
        self.tdb_reparam = reparam
        self.deploy = True

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.nonlinear(self.tdb_reparam(x))
        if not self.fused:
            return self.nonlinear(self._forward_separate(x))
        branches = self.branches()
        mode = _bn_fusion_mode([b.bn for b in branches])
        if mode == "train" and self.fused == "auto" and x.device.type == "cpu":
            out = self._forward_separate(x)  # see the module docstring: faster on CPUs
        elif mode == "train":
            out = self._forward_fused_train(x, branches)
        elif mode == "eval":
            kernel, bias = self.get_equivalent_kernel_bias()
            out = F.conv2d(x, kernel, bias, self.stride, self.padding, self.dilation, self.groups)
        else:  # BNs in mixed modes or settings: the plain sum is always right
            out = self._forward_separate(x)
        return self.nonlinear(out)

    def _forward_separate(self, x: Tensor) -> Tensor:
        """The original forward: each branch on its own, then the sum."""
        out = None
        for branch in self.branches():
            y = branch.bn(x if branch.conv is None else branch.conv(x))
            out = y if out is None else out + y
        return out

    def _forward_fused_train(self, x: Tensor, branches: list[Branch]) -> Tensor:
        """Training form with one conv and one batch-norm over all branches, then a sum.

        Branch kernels are zero-padded to KxK and stacked group-major (``(g, branch, c)``, see
        :func:`models.fusion.stack_branches`) into one conv with ``B * out`` channels; an identity
        branch appends the input itself as its chunk. One ``F.batch_norm`` (batch statistics)
        normalises every branch's channels with that branch's affine parameters and updates the
        concatenated running statistics, which are then written back to each branch's BN.
        """
        g, out_ch = self.groups, self.out_channels
        convs = [b.conv for b in branches if b.conv is not None]
        weight = stack_branches([embed_center(c.weight, self.kernel_size) for c in convs], g)
        y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, g)
        n, _, h, w = y.shape
        c = out_ch // g
        if len(convs) < len(branches):  # identity branch (last): its "output" is the input
            y = torch.cat([y.reshape(n, g, len(convs), c, h, w), x.reshape(n, g, 1, c, h, w)], 2)
            y = y.reshape(n, -1, h, w)
        y = _batch_norm_branches(y, [b.bn for b in branches], g)
        return y.reshape(n, g, len(branches), c, h, w).sum(2).reshape(n, out_ch, h, w)


def _bn_fusion_mode(bns: list[nn.BatchNorm2d]) -> str | None:
    """'train' / 'eval' when the branch BNs can be computed as one, else None.

    They must agree in mode, eps, momentum and tracking; in train mode with cumulative averaging
    (``momentum=None``) also in ``num_batches_tracked``; in eval mode they need running stats.
    """
    first = bns[0]
    for bn in bns[1:]:
        if (bn.training != first.training or bn.eps != first.eps or bn.momentum != first.momentum
                or bn.track_running_stats != first.track_running_stats
                or bn.affine != first.affine):
            return None
    if not first.affine:
        return None
    if first.training:
        if first.track_running_stats and first.momentum is None:
            counts = {int(bn.num_batches_tracked) for bn in bns}
            if len(counts) > 1:
                return None
        return "train"
    if first.running_mean is None:
        return None
    return "eval"


def _batch_norm_branches(y: Tensor, bns: list[nn.BatchNorm2d], groups: int) -> Tensor:
    """Train-mode BN of the stacked branch output ``y`` (channels ``(g, branch, c)``).

    Same statistics, outputs, gradients and running-stat updates as each ``bns[b]`` applied to
    its own chunk (what ``nn.BatchNorm2d.forward`` does in train mode).
    """
    first = bns[0]
    weight = stack_branches([bn.weight for bn in bns], groups)
    bias = stack_branches([bn.bias for bn in bns], groups)
    if not first.track_running_stats:
        return F.batch_norm(y, None, None, weight, bias, True, 0.0, first.eps)
    _add_([bn.num_batches_tracked for bn in bns], 1)
    factor = first.momentum if first.momentum is not None else \
        1.0 / float(first.num_batches_tracked)
    running_mean = stack_branches([bn.running_mean for bn in bns], groups)
    running_var = stack_branches([bn.running_var for bn in bns], groups)
    out = F.batch_norm(y, running_mean, running_var, weight, bias, True, factor, first.eps)
    with torch.no_grad():
        means = unstack_branches(running_mean, len(bns), groups).unbind(0)
        variances = unstack_branches(running_var, len(bns), groups).unbind(0)
        _copy_([bn.running_mean for bn in bns] + [bn.running_var for bn in bns],
               list(means) + list(variances))
    return out


def _under_vmap(tensor: Tensor) -> bool:
    """Whether ``tensor`` is batched by ``torch.func.vmap`` (stacked ``--trials`` students):
    the multi-tensor ``_foreach_*`` kernels have no batching rule there."""
    return torch._C._functorch.is_batchedtensor(tensor)


def _add_(tensors: list[Tensor], value: int) -> None:
    """In-place ``t += value`` for each tensor (one multi-tensor kernel outside vmap)."""
    if _under_vmap(tensors[0]):
        for t in tensors:
            t.add_(value)
    else:
        torch._foreach_add_(tensors, value)


def _copy_(targets: list[Tensor], sources: list[Tensor]) -> None:
    """In-place ``t.copy_(s)`` pairwise (one multi-tensor kernel outside vmap)."""
    if _under_vmap(targets[0]):
        for t, s in zip(targets, sources):
            t.copy_(s)
    else:
        torch._foreach_copy_(targets, sources)


@register_block_type("AMBB")
class AMBB(RepBlock):
    """KDrefine's AMBB (``ACTDB``): 3 KxK conv+BN duplicates + Kx1 and 1xK conv+BN.

    Keys (train): ``duplicate{1,2,3}.conv.weight``, ``duplicate{1,2,3}.bn.*``,
    ``ver_conv.weight`` (Kx1), ``hor_conv.weight`` (1xK), ``ver_bn.*``, ``hor_bn.*`` -- in this
    order, as in the original. Deploy: ``tdb_reparam.weight``, ``tdb_reparam.bias``.
    """

    branch_names = ("duplicate1", "duplicate2", "duplicate3", "ver_conv", "hor_conv", "ver_bn",
                    "hor_bn")

    def _build_branches(self) -> None:
        k = self.kernel_size
        self.duplicate1 = self._conv_bn((k, k))
        self.duplicate2 = self._conv_bn((k, k))
        self.duplicate3 = self._conv_bn((k, k))
        self.ver_conv = self._conv((k, 1))
        self.hor_conv = self._conv((1, k))
        self.ver_bn = self._bn()
        self.hor_bn = self._bn()

    def branches(self) -> list[Branch]:
        return [Branch(self.duplicate1.conv, self.duplicate1.bn),
                Branch(self.duplicate2.conv, self.duplicate2.bn),
                Branch(self.duplicate3.conv, self.duplicate3.bn),
                Branch(self.ver_conv, self.ver_bn),
                Branch(self.hor_conv, self.hor_bn)]


@register_block_type("ACB")
class ACB(RepBlock):
    """ACNet's Asymmetric Convolution Block (Ding et al., ICCV 2019): KxK + Kx1 + 1xK conv+BN.

    Keys (train), named as in the ACNet code: ``square_conv.weight``, ``square_bn.*``,
    ``ver_conv.weight``, ``hor_conv.weight``, ``ver_bn.*``, ``hor_bn.*``. Deploy:
    ``tdb_reparam.*`` (ACNet calls it ``fused_conv``). Unlike ACNet's code there is no cropping
    mode: padding must be 'same'.
    """

    branch_names = ("square_conv", "square_bn", "ver_conv", "hor_conv", "ver_bn", "hor_bn")

    def _build_branches(self) -> None:
        k = self.kernel_size
        self.square_conv = self._conv((k, k))
        self.square_bn = self._bn()
        self.ver_conv = self._conv((k, 1))
        self.hor_conv = self._conv((1, k))
        self.ver_bn = self._bn()
        self.hor_bn = self._bn()

    def branches(self) -> list[Branch]:
        return [Branch(self.square_conv, self.square_bn),
                Branch(self.ver_conv, self.ver_bn),
                Branch(self.hor_conv, self.hor_bn)]


@register_block_type("RepVGG")
class RepVGGBlock(RepBlock):
    """RepVGG's block (Ding et al., CVPR 2021): KxK conv+BN + 1x1 conv+BN (+ identity BN).

    Keys (train), named as in the RepVGG code: ``rbr_dense.conv.weight``, ``rbr_dense.bn.*``,
    ``rbr_1x1.conv.weight``, ``rbr_1x1.bn.*`` and, only when ``in == out`` and ``stride == 1``,
    ``rbr_identity.*`` (a BN). Deploy: ``tdb_reparam.*`` (RepVGG calls it ``rbr_reparam``).
    The nonlinearity is optional here (``nonlinear=``), whereas RepVGG always applies ReLU.
    """

    branch_names = ("rbr_dense", "rbr_1x1", "rbr_identity")

    def _build_branches(self) -> None:
        k = self.kernel_size
        self.rbr_dense = self._conv_bn((k, k))
        self.rbr_1x1 = self._conv_bn((1, 1))
        has_identity = self.in_channels == self.out_channels and self.stride == 1
        self.rbr_identity = self._bn(self.in_channels) if has_identity else None

    def branches(self) -> list[Branch]:
        branches = [Branch(self.rbr_dense.conv, self.rbr_dense.bn),
                    Branch(self.rbr_1x1.conv, self.rbr_1x1.bn)]
        if self.rbr_identity is not None:
            branches.append(Branch(None, self.rbr_identity))
        return branches


# --------------------------------------------------------------------------------------------
# factory and model-level helpers
# --------------------------------------------------------------------------------------------
def make_conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, *,
                 blocktype: str = DEFAULT_BLOCKTYPE, deploy: bool = False, fused: bool | str = "auto",
                 nonlinear: nn.Module | None = None) -> nn.Module:
    """A conv+BN of the given block type (KDrefine's ``conv_bn``/``conv_bn_relu``).

    As in the original, a 1x1 kernel or one of 7 or more always gives :class:`ConvBN`.
    ``padding`` defaults to 'same' (``dilation * (kernel_size // 2)``); ``nonlinear`` (e.g.
    ``nn.ReLU(inplace=True)``) is applied after the sum of the branches.
    """
    cls = get_block_type(blocktype)
    if kernel_size == 1 or kernel_size >= 7:
        cls = ConvBN
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
    for module in model.modules():
        if isinstance(module, (ConvBN, RepBlock)):
            module.fused = fused
    return model
