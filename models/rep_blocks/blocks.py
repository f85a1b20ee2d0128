"""The re-parameterizable conv+BN blocks.

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

from typing import ClassVar, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..fusion import add_branches, add_identity, embed_center, fuse_bn_module, stack_branches
from .kernels import batch_norm_branches, bn_fusion_mode
from .registry import register_block_type

__all__ = ["Branch", "ConvBN", "RepBlock", "AMBB", "ACB", "RepVGGBlock"]


class Branch(NamedTuple):
    """One training-time branch: ``bn(conv(x))``, or ``bn(x)`` when ``conv`` is None (identity)."""

    conv: nn.Conv2d | None
    bn: nn.BatchNorm2d


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

    @classmethod
    def key_markers(cls) -> dict[str, tuple[str, ...]]:
        """Submodule names that only this block's ``"train"`` / ``"deploy"`` form puts in a
        state dict: none, since ``conv``/``bn`` keys look like any plain conv+BN pair's."""
        return {"train": (), "deploy": ()}

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
    #: The attribute holding the deploy-form conv (the same for every multi-branch block).
    deploy_names: ClassVar[tuple[str, ...]] = ("tdb_reparam",)

    @classmethod
    def key_markers(cls) -> dict[str, tuple[str, ...]]:
        """Submodule names that only this block's ``"train"`` form (its ``branch_names``) or its
        ``"deploy"`` form (``tdb_reparam``) puts in a state dict, so that a file's form can be
        told from its keys (:func:`models.rep_blocks.state_dict_forms`)."""
        return {"train": cls.branch_names, "deploy": cls.deploy_names}

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
        mode = bn_fusion_mode([b.bn for b in branches])
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
        y = batch_norm_branches(y, [b.bn for b in branches], g)
        return y.reshape(n, g, len(branches), c, h, w).sum(2).reshape(n, out_ch, h, w)


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
