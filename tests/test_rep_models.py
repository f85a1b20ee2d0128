"""The re-parameterizable students against the compatibility contract in tests/fixtures/reference.

Checks ordered state-dict keys and shapes (training and deploy form), parameter counts, feature
shapes, the public forward/train fixtures of ``represnet20`` (with the fused and the separate
branch forward), and the repwrn design (which has no reference: see ``models/repwrn.py``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import model_dict, reparameterize_model
from models.registry import is_rep_model
from tests.reference import forward_input, load_deterministic, load_json

CONTRACT_MODELS = ["represnet20", "represnet32", "represnet8x4", "repvgg8", "repmobilenetv2",
                   "repshufflev1"]


def keys_and_shapes(model: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def contract() -> dict:
    return load_json("models.json")


@pytest.mark.parametrize("name", CONTRACT_MODELS)
def test_contract(name: str, contract: dict) -> None:
    ref = contract[name]
    assert is_rep_model(name)
    model = model_dict[name](num_classes=100)
    assert keys_and_shapes(model) == ref["state_dict"]
    assert n_params(model) == ref["params"]

    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre_feats, _ = model(x, is_feat=True, preact=True)
    assert [list(f.shape) for f in feats] == ref["feat_shapes"]
    assert [list(f.shape) for f in pre_feats] == ref["preact_feat_shapes"]
    assert logits.shape == (4, 100)

    reparameterize_model(model)
    assert keys_and_shapes(model) == ref["deploy_state_dict"]
    assert n_params(model) == ref["deploy_params"]
    deploy_built = model_dict[name](num_classes=100, deploy=True)
    assert keys_and_shapes(deploy_built) == ref["deploy_state_dict"]


def _summary_close(t: torch.Tensor, ref: dict) -> None:
    assert list(t.shape) == ref["shape"]
    flat = t.detach().double().flatten()
    torch.testing.assert_close(flat.sum().item(), ref["sum"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(flat.abs().sum().item(), ref["abs_sum"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(flat[ref["sample_idx"]], torch.tensor(ref["samples"]).double(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
def test_represnet20_forward_public(fused: bool) -> None:
    ref = load_json("forward_public.json")["represnet20"]
    x = forward_input()[:4]
    model = load_deterministic(model_dict["represnet20"](fused=fused)).eval()
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre_feats, _ = model(x, is_feat=True, preact=True)
    torch.testing.assert_close(logits, torch.tensor(ref["logits"]), rtol=1e-4, atol=1e-5)
    for f, r in zip(feats, ref["feats"], strict=True):
        _summary_close(f, r)
    for f, r in zip(pre_feats, ref["preact_feats"], strict=True):
        _summary_close(f, r)

    reparameterize_model(model)
    with torch.no_grad():
        deploy_logits = model(x)
    torch.testing.assert_close(deploy_logits, torch.tensor(ref["deploy_logits"]), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
def test_represnet20_train_public(fused: bool) -> None:
    ref = load_json("train_public.json")["represnet20"]
    x = forward_input()
    target = (torch.arange(8) * 7) % 100
    model = load_deterministic(model_dict["represnet20"](fused=fused)).train()
    logits = model(x)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    torch.testing.assert_close(logits, torch.tensor(ref["train_logits"]), rtol=1e-4, atol=1e-5)
    assert loss.item() == pytest.approx(ref["loss"], rel=1e-5)
    grads = dict(model.named_parameters())
    assert sorted(grads) == sorted(ref["grad_abs_sum"])
    for name, expected in ref["grad_abs_sum"].items():
        assert grads[name].grad.abs().sum().item() == pytest.approx(expected, rel=1e-4), name
    buffers = {k: v for k, v in model.named_buffers() if not k.endswith("num_batches_tracked")}
    assert sorted(buffers) == sorted(ref["buffer_sum_after"])
    for name, expected in ref["buffer_sum_after"].items():
        assert buffers[name].sum().item() == pytest.approx(expected, rel=1e-4, abs=1e-4), name
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert buf.item() == 1, name


def _plain_wrn_deploy_layout(plain: list[list]) -> list[list]:
    """The plain WRN's keys with ``bn2`` folded away and a bias on every 3x3 conv."""
    out = []
    for key, shape in plain:
        if ".bn2." in key:
            continue
        if len(shape) == 4 and shape[2:] == [3, 3]:
            stem = key[: -len(".weight")]
            out += [[f"{stem}.tdb_reparam.weight", shape], [f"{stem}.tdb_reparam.bias", shape[:1]]]
        else:
            out.append([key, shape])
    return out


@pytest.mark.parametrize("name,plain", [("repwrn_16_2", "wrn_16_2"), ("repwrn_40_1", "wrn_40_1")])
def test_repwrn_layout(name: str, plain: str, contract: dict) -> None:
    ref = contract[plain]
    model = model_dict[name]()
    assert is_rep_model(name)
    # every 3x3 conv of the plain WRN became an AMBB: 5 branches with a BN each
    n_3x3 = sum(1 for _, s in ref["state_dict"] if len(s) == 4 and s[2:] == [3, 3])
    assert sum(1 for k in model.state_dict() if k.endswith("duplicate1.conv.weight")) == n_3x3
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre_feats, _ = model(x, is_feat=True, preact=True)
    assert [list(f.shape)[1:] for f in feats] == [s[1:] for s in ref["feat_shapes"]]
    assert [list(f.shape)[1:] for f in pre_feats] == [s[1:] for s in ref["preact_feat_shapes"]]
    assert logits.shape == (2, 100)
    assert all(isinstance(m, torch.nn.BatchNorm2d) for m in model.get_bn_before_relu())

    reparameterize_model(model)
    expected = _plain_wrn_deploy_layout(ref["state_dict"])
    assert keys_and_shapes(model) == expected
    assert keys_and_shapes(model_dict[name](deploy=True)) == expected
    # per block the conv biases replace bn2; only the stem's bias (16) is extra
    assert n_params(model) == ref["params"] + 16


@pytest.mark.parametrize("name", CONTRACT_MODELS + ["repwrn_16_2", "repwrn_40_1"])
def test_feature_hooks(name: str) -> None:
    """get_feat_modules / get_bn_before_relu exist and point at modules of the model."""
    model = model_dict[name]()
    own = set(map(id, model.modules()))
    assert all(id(m) in own for m in model.get_feat_modules())
    assert all(id(m) in own for m in model.get_bn_before_relu())


def test_represnet20_init_statistics() -> None:
    """Kaiming-normal (fan_out) convs in every branch, BN 1/0, as the original."""
    torch.manual_seed(0)
    model = model_dict["represnet8x4"]()
    block = model.layer3[0].conv2  # 256 -> 256, 3x3
    for conv in [block.duplicate1.conv, block.ver_conv, block.hor_conv]:
        kh, kw = conv.kernel_size
        expected = (2.0 / (conv.out_channels * kh * kw)) ** 0.5
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert abs(conv.weight.mean().item()) < 0.05 * expected
    for bn in [block.duplicate2.bn, block.ver_bn]:
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
