"""Structural re-parameterization: fusion maths, block conversion, fused branch training.

* the pure functions of :mod:`models.fusion` against plain convs / BNs;
* every rep model x every block type: converted outputs (and, for AMBB, the ``is_feat``
  features, plain and ``preact``) equal the train-form ones (random BN
  statistics, eval mode), conversion is idempotent, deploy-built models load converted weights;
* the fused branch forward equals the separate-branch forward: outputs, gradients of every
  parameter and of the input, running statistics and ``num_batches_tracked`` -- per block type,
  with grouped, depthwise and stride-2 cases;
* errors and the structure of a converted ``represnet20`` (the plain ResNet-20's convs, no BN on
  the rep paths).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from models import build_model, model_dict, reparameterize_model
from models.fusion import (add_branches, add_identity, embed_center, fuse_bn_module,
                           identity_kernel, stack_branches, unstack_branches)
from models.registry import rep_model_names
from models.rep_blocks import (ACB, AMBB, BLOCK_TYPES, ConvBN, RepBlock, RepVGGBlock,
                               make_conv_bn, set_fused)
from tests.reference import load_json

BLOCK_TYPE_NAMES = ["AMBB", "base", "ACB", "RepVGG"]
REP_MODELS = sorted(["represnet20", "represnet32", "represnet8x4", "repvgg8", "repmobilenetv2",
                     "repshufflev1", "repwrn_16_2", "repwrn_40_1"])


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and affine parameters; the scale is kept small so that a sum of up
    to five branches stays O(1) through deep networks."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            m.weight.copy_(0.1 + 0.3 * torch.rand(c, generator=gen))
            m.bias.copy_(0.1 * torch.randn(c, generator=gen))


# ------------------------------------------------------------------------------------------
# fusion maths
# ------------------------------------------------------------------------------------------
def test_fuse_conv_bn_matches_eval_bn() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(6)
    randomize_bn(bn)
    bn.eval()
    x = torch.randn(2, 4, 7, 7)
    kernel, bias = fuse_bn_module(conv.weight, bn)
    torch.testing.assert_close(F.conv2d(x, kernel, bias, padding=1), bn(conv(x)))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("small", [(3, 1), (1, 3), (1, 1)])
def test_embed_center_with_aligned_padding(small: tuple[int, int], groups: int,
                                           stride: int) -> None:
    """A kh x kw conv whose padding is reduced by its size difference equals the zero-padded
    3x3 conv -- and, as a check that alignment matters, not without that padding offset."""
    x = torch.randn(2, 8, 9, 10)
    w = torch.randn(8, 8 // groups, *small)
    pad = (1 - (3 - small[0]) // 2, 1 - (3 - small[1]) // 2)
    ref = F.conv2d(x, w, stride=stride, padding=pad, groups=groups)
    big = embed_center(w, 3)
    assert big.shape[-2:] == (3, 3)
    torch.testing.assert_close(F.conv2d(x, big, stride=stride, padding=1, groups=groups), ref)
    if small != (1, 1):  # padding everything by 1 misaligns (and reshapes) the small conv
        wrong = F.conv2d(x, w, stride=stride, padding=1, groups=groups)
        assert wrong.shape != ref.shape or not torch.allclose(wrong, ref)


@pytest.mark.parametrize("channels,groups", [(6, 1), (6, 3), (6, 6)])
def test_identity_kernel(channels: int, groups: int) -> None:
    x = torch.randn(2, channels, 5, 5)
    kernel = identity_kernel(channels, groups, 3)
    torch.testing.assert_close(F.conv2d(x, kernel, padding=1, groups=groups), x)
    scale = torch.randn(channels)
    base = torch.randn(channels, channels // groups, 3, 3)
    torch.testing.assert_close(add_identity(base, scale, groups),
                               base + kernel * scale.reshape(-1, 1, 1, 1))


def test_add_branches_is_sum_of_convs() -> None:
    x = torch.randn(2, 3, 6, 6)
    ks, bs = [torch.randn(4, 3, 3, 3) for _ in range(3)], [torch.randn(4) for _ in range(3)]
    k, b = add_branches(ks, bs)
    ref = sum(F.conv2d(x, ki, bi, padding=1) for ki, bi in zip(ks, bs))
    torch.testing.assert_close(F.conv2d(x, k, b, padding=1), ref)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_stack_branches_runs_parallel_convs_as_one(groups: int) -> None:
    x = torch.randn(2, 6, 5, 5)
    ws = [torch.randn(12, 6 // groups, 3, 3) for _ in range(3)]
    stacked = stack_branches(ws, groups)
    y = F.conv2d(x, stacked, padding=1, groups=groups)
    per_branch = y.reshape(2, groups, 3, 12 // groups, 5, 5)
    for b, w in enumerate(ws):
        ref = F.conv2d(x, w, padding=1, groups=groups)
        torch.testing.assert_close(per_branch[:, :, b].reshape(2, 12, 5, 5), ref)
    torch.testing.assert_close(unstack_branches(stacked, 3, groups), torch.stack(ws))
    vecs = [torch.randn(12) for _ in range(3)]
    torch.testing.assert_close(unstack_branches(stack_branches(vecs, groups), 3, groups),
                               torch.stack(vecs))


# ------------------------------------------------------------------------------------------
# block types and errors
# ------------------------------------------------------------------------------------------
def test_block_registry() -> None:
    assert set(BLOCK_TYPES) == set(BLOCK_TYPE_NAMES)
    assert isinstance(make_conv_bn(4, 4, 3), AMBB)  # default
    assert isinstance(make_conv_bn(4, 4, 3, blocktype="ACB"), ACB)
    assert isinstance(make_conv_bn(4, 4, 3, blocktype="RepVGG"), RepVGGBlock)
    assert isinstance(make_conv_bn(4, 4, 3, blocktype="base"), ConvBN)
    for k in (1, 7):  # as the original: 1x1 and large kernels are always a plain conv+BN
        assert isinstance(make_conv_bn(4, 4, k, blocktype="AMBB"), ConvBN)


def test_unknown_blocktype_is_a_user_error() -> None:
    for build in (lambda: make_conv_bn(4, 4, 3, blocktype="DBB"),
                  lambda: model_dict["represnet20"](blocktype="DBB"),
                  lambda: build_model("repvgg8", blocktype="DBB")):
        with pytest.raises(UserError) as err:
            build()
        message = str(err.value)
        assert "'DBB'" in message
        for name in BLOCK_TYPE_NAMES:
            assert name in message


def test_bad_padding_is_rejected() -> None:
    with pytest.raises(ValueError, match="padding"):
        AMBB(4, 4, 3, padding=0)


def test_block_key_names() -> None:
    def keys(m):
        return list(m.state_dict())

    assert keys(make_conv_bn(4, 4, 3, blocktype="ACB"))[:3] == [
        "square_conv.weight", "square_bn.weight", "square_bn.bias"]
    repvgg = keys(make_conv_bn(4, 4, 3, blocktype="RepVGG"))
    assert repvgg[0] == "rbr_dense.conv.weight" and "rbr_1x1.conv.weight" in repvgg
    assert "rbr_identity.running_var" in repvgg
    assert not any("rbr_identity" in k for k in keys(make_conv_bn(4, 8, 3, blocktype="RepVGG")))
    assert not any("rbr_identity" in k for k in keys(make_conv_bn(4, 4, 3, 2, blocktype="RepVGG")))
    for blocktype in ("AMBB", "ACB", "RepVGG"):
        block = make_conv_bn(4, 4, 3, blocktype=blocktype)
        block.switch_to_deploy()
        assert keys(block) == ["tdb_reparam.weight", "tdb_reparam.bias"]
    base = make_conv_bn(4, 4, 3, blocktype="base")
    assert keys(base)[:2] == ["conv.weight", "bn.weight"]
    base.switch_to_deploy()
    assert keys(base) == ["conv.weight", "conv.bias"]


# ------------------------------------------------------------------------------------------
# whole models: conversion equivalence, idempotence, loading into deploy-built models
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blocktype", BLOCK_TYPE_NAMES)
@pytest.mark.parametrize("name", REP_MODELS)
def test_model_conversion(name: str, blocktype: str) -> None:
    torch.manual_seed(0)
    model = model_dict[name](blocktype=blocktype, fused=False)
    randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        # what distillation reads (OFD, ReviewKD, AB: preact) is tapped alike in both forms
        # (checked with one block type: which features are tapped does not depend on it)
        ref_feats = {p: model(x, is_feat=True, preact=p)[0] for p in (False, True)} if blocktype == "AMBB" else {}
        set_fused(model, True)  # eval-mode fused path: every block folded on the fly
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())

    reparameterize_model(model)
    assert not any(isinstance(m, RepBlock) and not m.deploy for m in model.modules())
    with torch.no_grad():
        out = model(x)
        feats = {p: model(x, is_feat=True, preact=p)[0] for p in ref_feats}
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    for p in ref_feats:
        for f, r in zip(feats[p], ref_feats[p], strict=True):
            torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5 * r.abs().max().item())

    state = copy.deepcopy(model.state_dict())
    assert reparameterize_model(model) is model  # second call: harmless
    assert list(model.state_dict()) == list(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        assert torch.equal(model(x), out)

    deployed = model_dict[name](blocktype=blocktype, deploy=True)
    deployed.load_state_dict(state, strict=True)
    deployed.eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), out)


def test_all_rep_models_are_covered() -> None:
    assert rep_model_names >= set(REP_MODELS)


def test_converted_represnet20_has_plain_resnet20_convs() -> None:
    """Structurally the plain ResNet-20: same convs (count, shapes, order), no BN on the
    rep paths (only the two 1x1 downsample shortcuts keep theirs, as in the plain model)."""
    model = reparameterize_model(model_dict["represnet20"]().eval())
    plain = load_json("models.json")["resnet20"]["state_dict"]
    plain_convs = [shape for _, shape in plain if len(shape) == 4]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [list(c.weight.shape) for c in convs] == plain_convs
    bns = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == ["layer2.0.downsample.1", "layer3.0.downsample.1"]
    assert all(c.bias is not None for c in convs if c.kernel_size == (3, 3))


# ------------------------------------------------------------------------------------------
# fused branch training == separate branches
# ------------------------------------------------------------------------------------------
BLOCK_CASES = [  # (in, out, stride, groups)
    (8, 8, 1, 1),
    (8, 16, 2, 1),  # stride 2, channel change
    (12, 12, 1, 3),  # grouped
    (8, 8, 1, 8),  # depthwise
    (8, 8, 2, 8),  # depthwise, stride 2
    (6, 12, 1, 6),  # depthwise with channel multiplier
]


def _train_step(block: nn.Module, x: torch.Tensor, weight: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = block(x)
    (out * weight).sum().backward()
    return out, x.grad


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "in{}-out{}-s{}-g{}".format(*c))
@pytest.mark.parametrize("blocktype", BLOCK_TYPE_NAMES)
def test_fused_equals_separate_in_training(blocktype: str, case: tuple, momentum) -> None:
    cin, cout, stride, groups = case
    torch.manual_seed(0)
    separate = make_conv_bn(cin, cout, 3, stride, groups=groups, blocktype=blocktype, fused=False,
                            nonlinear=nn.ReLU())
    for m in separate.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    randomize_bn(separate)
    # float64: a conv weight followed by a train-mode BN has a gradient that is zero up to eps
    # effects (BN is scale invariant), e.g. a depthwise 1x1 -- in float32 that is pure rounding.
    separate.double()
    fused = copy.deepcopy(separate)
    set_fused(fused, True)
    assert list(fused.state_dict()) == list(separate.state_dict())
    x = torch.randn(4, cin, 9, 9, dtype=torch.float64)
    weight = torch.randn_like(separate(x))  # one step to move the statistics off their start
    fused(x)
    for _ in range(2):
        separate.zero_grad()
        fused.zero_grad()
        out_s, gx_s = _train_step(separate, x, weight)
        out_f, gx_f = _train_step(fused, x, weight)
        torch.testing.assert_close(out_f, out_s, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gx_f, gx_s, rtol=1e-9, atol=1e-10)
        grads_f = dict(fused.named_parameters())
        for name, p in separate.named_parameters():
            torch.testing.assert_close(grads_f[name].grad, p.grad, rtol=1e-8, atol=1e-10,
                                       msg=lambda m, n=name: f"grad {n}: {m}")
        buffers_f = dict(fused.named_buffers())
        for name, buf in separate.named_buffers():
            torch.testing.assert_close(buffers_f[name], buf, rtol=1e-10, atol=1e-12,
                                       msg=lambda m, n=name: f"buffer {n}: {m}")
    counts = [b.item() for n, b in fused.named_buffers() if n.endswith("num_batches_tracked")]
    assert counts and all(c == 3 for c in counts)


@pytest.mark.parametrize("kernel_size,dilation", [(5, 1), (3, 2)])
@pytest.mark.parametrize("blocktype", ["AMBB", "ACB", "RepVGG"])
def test_other_kernel_sizes_and_dilation(blocktype: str, kernel_size: int, dilation: int) -> None:
    """5x5 kernels and dilated 3x3: fused training == separate, and conversion is exact."""
    torch.manual_seed(0)
    separate = make_conv_bn(6, 6, kernel_size, dilation=dilation, groups=2, blocktype=blocktype,
                            fused=False).double()
    randomize_bn(separate)
    fused = set_fused(copy.deepcopy(separate), True)
    x = torch.randn(3, 6, 11, 11, dtype=torch.float64)
    torch.testing.assert_close(fused(x), separate(x), rtol=1e-10, atol=1e-10)
    for (name, buf), buf_f in zip(separate.named_buffers(), fused.buffers()):
        torch.testing.assert_close(buf_f, buf, rtol=1e-10, atol=1e-12, msg=name)
    separate.eval()
    with torch.no_grad():
        ref = separate(x)
        separate.switch_to_deploy()
        torch.testing.assert_close(separate(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("blocktype", ["AMBB", "ACB", "RepVGG"])
def test_fused_eval_gradients(blocktype: str) -> None:
    """Eval mode folds the branches on the fly; gradients still reach every branch parameter."""
    torch.manual_seed(0)
    separate = make_conv_bn(8, 8, 3, 1, groups=2, blocktype=blocktype, fused=False)
    randomize_bn(separate)
    separate.eval()
    fused = copy.deepcopy(separate)
    set_fused(fused, True)
    x = torch.randn(2, 8, 6, 6)
    weight = torch.randn(2, 8, 6, 6)
    out_s, gx_s = _train_step(separate, x, weight)
    out_f, gx_f = _train_step(fused, x, weight)
    torch.testing.assert_close(out_f, out_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_s, rtol=1e-4, atol=1e-5)
    grads_f = dict(fused.named_parameters())
    for name, p in separate.named_parameters():
        torch.testing.assert_close(grads_f[name].grad, p.grad, rtol=1e-4,
                                   atol=1e-5 * p.grad.abs().max().item())
    for (name, buf), buf_f in zip(separate.named_buffers(), fused.buffers()):
        assert torch.equal(buf, buf_f), name  # eval: statistics untouched


def test_fused_with_frozen_bn_falls_back() -> None:
    """A block in train mode whose BNs were put in eval mode (frozen BN) is computed right."""
    torch.manual_seed(0)
    separate = make_conv_bn(8, 8, 3, blocktype="AMBB", fused=False)
    randomize_bn(separate)
    separate.train()
    separate.duplicate2.bn.eval()  # mixed modes
    fused = copy.deepcopy(separate)
    set_fused(fused, True)
    x = torch.randn(4, 8, 6, 6)
    torch.testing.assert_close(fused(x), separate(x))
    for (name, buf), buf_f in zip(separate.named_buffers(), fused.buffers()):
        torch.testing.assert_close(buf_f, buf, msg=name)


def test_fused_model_training_step_matches_separate() -> None:
    """A whole model (grouped depthwise rep blocks): one SGD step gives the same weights."""
    torch.manual_seed(0)
    separate = model_dict["repmobilenetv2"](fused=False).train()
    fused = copy.deepcopy(separate)
    set_fused(fused, True)
    x = torch.randn(4, 3, 32, 32)
    target = torch.arange(4)
    for model in (separate, fused):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        F.cross_entropy(model(x), target).backward()
        opt.step()
    state_f = fused.state_dict()
    for key, value in separate.state_dict().items():
        torch.testing.assert_close(state_f[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_auto_fusion_takes_the_separate_path_for_cpu_training(monkeypatch) -> None:
    """fused="auto" (the default): separate branches for CPU training, fold in eval mode."""
    block = make_conv_bn(4, 4, 3, blocktype="AMBB")
    assert block.fused == "auto"
    calls = []
    monkeypatch.setattr(type(block), "_forward_fused_train",
                        lambda self, x, branches: calls.append("fused") or x)
    x = torch.randn(2, 4, 6, 6)
    block.train()(x)
    assert calls == []
    set_fused(block, True)
    block(x)
    assert calls == ["fused"]
    set_fused(block, "auto")
    block.eval()
    expected = block._forward_separate(x)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)
