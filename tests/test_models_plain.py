"""The plain CIFAR model zoo against the reference fixtures of the original CRD code.

* ``models.json``: ordered state-dict keys and shapes, parameter counts, feature shapes, and a
  strict load of a state dict carrying exactly the contract's keys;
* ``forward_public.json``: eval-mode logits and feature summaries with deterministic weights;
* ``train_public.json``: one train-mode step of ``resnet20`` (logits, loss, gradients, BN stats);
* the ``get_bn_before_relu`` / ``get_feat_modules`` interface and the initialization rules.
"""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import model_dict
from tests.reference import forward_input, load_deterministic, load_json

PLAIN_MODELS = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "ResNet50",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2",
]
NO_BN_BEFORE_RELU = {"ShuffleV2"}
RTOL = 1e-4


def contract(name: str) -> dict:
    return load_json("models.json")[name]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return model_dict[name](num_classes=100)


@lru_cache(maxsize=None)
def build_shared(name: str) -> nn.Module:
    """A model in eval mode shared by the tests that only read it (construction dominates)."""
    return build(name).eval()


def shapes(tensors) -> list[list[int]]:
    return [list(t.shape) for t in tensors]


@pytest.fixture(scope="module", autouse=True)
def free_models():
    yield
    build_shared.cache_clear()


def test_every_plain_model_is_registered_and_in_the_contract():
    for name in PLAIN_MODELS:
        assert name in model_dict
        assert name in load_json("models.json")


@pytest.mark.parametrize("name", PLAIN_MODELS)
def test_state_dict_params_and_feature_shapes_match_contract(name):
    ref = contract(name)
    model = build_shared(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]

    x = torch.zeros(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats, logits_feat = model(x, is_feat=True)
        preact_feats, _ = model(x, is_feat=True, preact=True)
    assert logits.shape == (4, 100)
    torch.testing.assert_close(logits_feat, logits)
    assert shapes(feats) == ref["feat_shapes"]
    assert shapes(preact_feats) == ref["preact_feat_shapes"]
    assert feats[-1].dim() == 2  # the list ends with the pooled, flattened embedding


@pytest.mark.parametrize("name", PLAIN_MODELS)
def test_contract_state_dict_loads_strictly(name):
    """A checkpoint with exactly the original keys and shapes loads with ``strict=True``."""
    state = {}
    for key, shape in contract(name)["state_dict"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.full(shape, 0.25)
    model = build(name)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    first_key = next(iter(state))
    assert torch.all(model.state_dict()[first_key] == 0.25)


@pytest.mark.parametrize("name", PLAIN_MODELS)
def test_bn_before_relu_matches_middle_features(name):
    model = build_shared(name)
    if name in NO_BN_BEFORE_RELU:
        with pytest.raises(NotImplementedError):
            model.get_bn_before_relu()
        return
    bns = model.get_bn_before_relu()
    own = {id(m) for m in model.modules()}
    assert all(isinstance(bn, nn.BatchNorm2d) and id(bn) in own for bn in bns)
    with torch.no_grad():
        feats, _ = model(torch.zeros(2, 3, 32, 32), is_feat=True)
    middle = feats[1:-1]
    assert len(bns) == len(middle)
    assert [bn.num_features for bn in bns] == [f.shape[1] for f in middle]


@pytest.mark.parametrize("name", PLAIN_MODELS)
def test_feat_modules_are_submodules(name):
    model = build_shared(name)
    feat_modules = model.get_feat_modules()
    assert isinstance(feat_modules, nn.ModuleList) and len(feat_modules) > 0
    own = {id(m) for m in model.modules()}
    assert all(id(m) in own for m in feat_modules)


def assert_summary(tensor: torch.Tensor, ref: dict, what: str) -> None:
    t = tensor.detach().double()
    assert list(t.shape) == ref["shape"], what
    torch.testing.assert_close(t.sum().item(), ref["sum"], rtol=RTOL, atol=1e-3,
                               msg=f"{what}: sum")
    torch.testing.assert_close(t.abs().sum().item(), ref["abs_sum"], rtol=RTOL, atol=1e-3,
                               msg=f"{what}: abs_sum")
    samples = t.flatten()[torch.tensor(ref["sample_idx"])]
    torch.testing.assert_close(samples, torch.tensor(ref["samples"], dtype=torch.float64),
                               rtol=RTOL, atol=1e-5, msg=f"{what}: samples")


FORWARD_MODELS = [n for n in load_json("forward_public.json") if n in PLAIN_MODELS]


@pytest.mark.parametrize("name", FORWARD_MODELS)
def test_eval_forward_matches_reference(name):
    ref = load_json("forward_public.json")[name]
    model = load_deterministic(build(name)).eval()
    x = forward_input()[:4]
    with torch.no_grad():
        logits = model(x)
        feats, _ = model(x, is_feat=True)
        preact_feats, _ = model(x, is_feat=True, preact=True)
    torch.testing.assert_close(logits.double(), torch.tensor(ref["logits"], dtype=torch.float64),
                               rtol=RTOL, atol=1e-5)
    assert len(feats) == len(ref["feats"]) and len(preact_feats) == len(ref["preact_feats"])
    for i, (f, r) in enumerate(zip(feats, ref["feats"])):
        assert_summary(f, r, f"{name} feat {i}")
    for i, (f, r) in enumerate(zip(preact_feats, ref["preact_feats"])):
        assert_summary(f, r, f"{name} preact feat {i}")


def test_train_step_matches_reference_resnet20():
    ref = load_json("train_public.json")["resnet20"]
    model = load_deterministic(build("resnet20")).train()
    x = forward_input()
    target = (torch.arange(8) * 7) % 100
    logits = model(x)
    loss = F.cross_entropy(logits, target)
    loss.backward()

    torch.testing.assert_close(logits.detach().double(),
                               torch.tensor(ref["train_logits"], dtype=torch.float64),
                               rtol=RTOL, atol=1e-5)
    torch.testing.assert_close(loss.item(), ref["loss"], rtol=RTOL, atol=0.0)
    params = dict(model.named_parameters())
    assert set(params) == set(ref["grad_abs_sum"])
    for key, expected in ref["grad_abs_sum"].items():
        torch.testing.assert_close(params[key].grad.abs().sum().item(), expected, rtol=RTOL,
                                   atol=1e-6, msg=f"grad of {key}")
    buffers = dict(model.named_buffers())
    stats = {k for k in buffers if k.endswith(("running_mean", "running_var"))}
    assert stats == set(ref["buffer_sum_after"])
    for key, expected in ref["buffer_sum_after"].items():
        torch.testing.assert_close(buffers[key].sum().item(), expected, rtol=RTOL, atol=1e-6,
                                   msg=f"buffer {key}")


def test_without_is_feat_preact_returns_logits_only():
    model = build("resnet8").eval()
    out = model(torch.zeros(1, 3, 32, 32), preact=True)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 100)


def test_num_classes_keyword():
    for name in ("resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"):
        model = model_dict[name](num_classes=10).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# --- initialization rules of the original files -------------------------------------------

def _conv_std_ok(model: nn.Module) -> None:
    """He-normal fan-out: std = sqrt(2 / (k*k*out_channels)) on the largest convs."""
    convs = sorted((m for m in model.modules() if isinstance(m, nn.Conv2d)),
                   key=lambda m: m.weight.numel())[-3:]
    for conv in convs:
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        std = conv.weight.std().item()
        assert abs(std - math.sqrt(2.0 / fan_out)) < 0.1 * math.sqrt(2.0 / fan_out)
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2.0 / fan_out)


def _bn_default(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_init_resnet_and_resnet50():
    for name in ("resnet32x4", "ResNet50"):
        model = build(name)
        _conv_std_ok(model)
        _bn_default(model)
        fc = model.fc if name == "resnet32x4" else model.linear
        bound = 1 / math.sqrt(fc.in_features)  # PyTorch default: U(-1/sqrt(fan_in), ...)
        assert fc.weight.abs().max() <= bound and fc.weight.std() > 0.5 * bound
        assert fc.bias.abs().max() > 0


def test_init_wrn():
    model = build("wrn_40_2")
    _conv_std_ok(model)
    _bn_default(model)
    bound = 1 / math.sqrt(model.fc.in_features)
    assert model.fc.weight.abs().max() <= bound and model.fc.weight.std() > 0.5 * bound
    assert torch.all(model.fc.bias == 0)


def test_init_vgg_and_mobilenet():
    for name in ("vgg13", "MobileNetV2"):
        model = build(name)
        _conv_std_ok(model)
        _bn_default(model)
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                assert torch.all(m.bias == 0)
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)][0]
        assert abs(linear.weight.std().item() - 0.01) < 0.001
        assert torch.all(linear.bias == 0)


def test_init_shufflenets_keep_pytorch_defaults():
    for name in ("ShuffleV1", "ShuffleV2"):
        model = build(name)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                assert m.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-6
        assert model.linear.bias.abs().max() > 0


def test_wrn_preact_features_apply_the_next_bn():
    model = load_deterministic(build("wrn_16_1")).eval()
    x = forward_input()[:2]
    with torch.no_grad():
        feats, _ = model(x, is_feat=True)
        pre, _ = model(x, is_feat=True, preact=True)
        expected = [bn(f) for bn, f in zip(model.get_bn_before_relu(), feats[1:-1])]
    for got, want in zip(pre[1:-1], expected):
        torch.testing.assert_close(got, want)
