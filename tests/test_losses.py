"""The distiller-zoo losses against the stored reference values and their documented shapes."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

import distiller_zoo as dz
from helper.errors import UserError
from tests.reference import load_json, loss_inputs

RTOL = 1e-5



@pytest.fixture(scope="module")
def x() -> dict[str, torch.Tensor]:
    return loss_inputs()


@pytest.fixture(scope="module")
def public() -> dict:
    return load_json("losses_public.json")


def maps(x, prefix: str) -> list[torch.Tensor]:
    return [x[f"{prefix}{i}"] for i in range(3)]


def close(value, expected) -> None:
    assert float(value) == pytest.approx(expected, rel=RTOL, abs=1e-7)


# ----- stored values -----

def test_distill_kl(x, public):
    close(dz.DistillKL(4)(x["logits_s"], x["logits_t"]), public["DistillKL_T4"])


def test_kdrefine_terms(x, public):
    z_s = dz.standardize_logits(x["logits_s"], 2)
    z_t = dz.standardize_logits(x["logits_t"], 2)
    kl = dz.DistillKL(4)(z_s, z_t)
    ce = F.cross_entropy(z_s, x["target"])
    close(kl, public["kdrefine_kl_T4"])
    close(ce, public["kdrefine_ce"])
    close(0.1 * ce + 0.9 * kl, public["kdrefine_total_r0.1_a0.9"])


def test_dkd(x, public):
    loss = dz.DKDLoss(alpha=1, beta=8, temperature=4, warmup=20)(x["logits_s"], x["logits_t"],
                                                                 x["target"], epoch=20)
    close(loss, public["DKD_a1_b8_T4"])


def test_attention(x, public):
    losses = dz.Attention()(maps(x, "g_s"), maps(x, "g_t"))
    assert isinstance(losses, list) and len(losses) == 3
    for value, expected in zip(losses, public["Attention_p2"]):
        close(value, expected)


# ----- return types -----

def _crd_loss(x):
    opt = argparse.Namespace(s_dim=64, t_dim=128, feat_dim=16, n_data=40, nce_k=8, nce_t=0.07,
                             nce_m=0.5)
    idx = torch.arange(8)
    contrast_idx = torch.randint(0, 40, (8, 9), generator=torch.Generator().manual_seed(0))
    contrast_idx[:, 0] = idx
    return dz.CRDLoss(opt)(x["f_s"], x["f_t"], idx, contrast_idx)


def _selfa_loss(x):
    g_s, g_t = maps(x, "g_s"), maps(x, "g_t")
    attn = dz.SelfA(8, [f.shape[1] for f in g_s], [f.shape[1] for f in g_t], 1)
    return dz.SemCKDLoss()(*attn(g_s, g_t))


def _srrl_loss(x):
    trans, pred = dz.SRRL(s_n=64, t_n=128)(x["f_s"], torch.nn.Linear(128, 100))
    return dz.SRRLLoss()(trans, pred, x["f_t"], x["logits_t"])


LIST_LOSSES = {
    "Attention": (lambda x: dz.Attention()(maps(x, "g_s"), maps(x, "g_t")), 3),
    "Similarity": (lambda x: dz.Similarity()(maps(x, "g_s"), maps(x, "g_t")), 3),
    "NSTLoss": (lambda x: dz.NSTLoss()(maps(x, "g_s"), maps(x, "g_t")), 3),
    "KDSVD": (lambda x: dz.KDSVD()(maps(x, "g_s"), maps(x, "fsp_t")), 2),
    "FSP": (lambda x: dz.FSP([f.shape for f in maps(x, "g_s")], [f.shape for f in maps(x, "fsp_t")])(
        maps(x, "g_s"), maps(x, "fsp_t")), 2),
    "ABLoss": (lambda x: dz.ABLoss(3)(maps(x, "g_s"), maps(x, "fsp_t")), 3),
}

SCALAR_LOSSES = {
    "DistillKL": lambda x: dz.DistillKL(4)(x["logits_s"], x["logits_t"]),
    "HintLoss": lambda x: dz.HintLoss()(x["hint_s"], x["hint_t"]),
    "Correlation": lambda x: dz.Correlation()(x["e_s"], x["e_t"]),
    "VIDLoss": lambda x: dz.VIDLoss(32, 32, 32)(x["hint_s"], x["hint_t"]),
    "RKDLoss": lambda x: dz.RKDLoss()(x["f_s"], x["f_t"]),
    "PKT": lambda x: dz.PKT()(x["f_s"], x["f_t"]),
    "FactorTransfer": lambda x: dz.FactorTransfer()(x["hint_s"], x["hint_t"]),
    "DKDLoss": lambda x: dz.DKDLoss()(x["logits_s"], x["logits_t"], x["target"], 5),
    "CRDLoss": _crd_loss,
    "SemCKDLoss": _selfa_loss,
    "SRRLLoss": _srrl_loss,
}


@pytest.mark.parametrize("name", sorted(LIST_LOSSES))
def test_list_losses(x, name):
    fn, n = LIST_LOSSES[name]
    losses = fn(x)
    assert isinstance(losses, list) and len(losses) == n
    for value in losses:
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value)


@pytest.mark.parametrize("name", sorted(SCALAR_LOSSES))
def test_scalar_losses(x, name):
    value = SCALAR_LOSSES[name](x)
    assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value)


def test_spatial_pooling_matches_smaller_map(x):
    g_s0, t_half = x["g_s0"], x["g_t0_half"]
    pooled = F.adaptive_avg_pool2d(g_s0, t_half.shape[2:])
    assert torch.equal(dz.Attention()([g_s0], [t_half])[0], dz.Attention()([pooled], [t_half])[0])


def test_fsp_rejects_channel_mismatch(x):
    with pytest.raises(UserError, match="channel"):
        dz.FSP([f.shape for f in maps(x, "g_s")], [f.shape for f in maps(x, "g_t")])


# ----- logit standardization -----

@pytest.mark.parametrize("multiplier", [1.0, 2.0])
def test_standardize_logits_moments(x, multiplier):
    z = dz.standardize_logits(x["logits_s"].double(), multiplier)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(8, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(dim=1), torch.full((8,), multiplier, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_standardize_logits_formula(x):
    z = x["logits_t"]
    expected = 2.0 * (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-7)
    torch.testing.assert_close(dz.standardize_logits(z, 2.0), expected)


def test_standardize_logits_invariant_to_shift_and_scale(x):
    z = x["logits_s"]
    torch.testing.assert_close(dz.standardize_logits(3 * z + 5), dz.standardize_logits(z),
                               atol=1e-5, rtol=1e-5)


# ----- DKD -----

def _dkd(x, epoch, **kw):
    return dz.DKDLoss(**kw)(x["logits_s"], x["logits_t"], x["target"], epoch)


def test_dkd_warmup(x):
    full = _dkd(x, 20)
    close(_dkd(x, 5), 0.25 * float(full))
    close(_dkd(x, 10), 0.5 * float(full))
    close(_dkd(x, 240), float(full))
    assert float(_dkd(x, 0)) == 0.0


def test_dkd_keeps_tckd(x):
    from distiller_zoo.dkd import tckd_nckd

    tckd, nckd = tckd_nckd(x["logits_s"], x["logits_t"], x["target"], 4.0)
    assert float(tckd) > 0
    close(_dkd(x, 20), float(tckd + 8 * nckd))
    # alpha weights a term of its own: the total is not the NCKD-only loss of KDrefine's copy
    assert float(_dkd(x, 20, beta=0.0)) == pytest.approx(float(tckd), rel=RTOL)
    assert float(_dkd(x, 20)) != pytest.approx(float(8 * nckd), rel=1e-3)


def test_dkd_logit_stand(x):
    s, t = x["logits_s"], x["logits_t"]
    stand = dz.DKDLoss(logit_stand=True)(s, t, x["target"], 20)
    manual = dz.DKDLoss()(dz.standardize_logits(s), dz.standardize_logits(t), x["target"], 20)
    torch.testing.assert_close(stand, manual)
    assert float(stand) != pytest.approx(float(_dkd(x, 20)), rel=1e-3)
