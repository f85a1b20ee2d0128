"""Every ``--distill`` method and every distiller-zoo loss gives the same values (and gradients)
on channels_last feature maps as on NCHW ones: channels_last is the training default, and a
``.view`` of a channels_last map fails ("view size is not compatible ...")."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import distiller_zoo as dz
from models import model_dict
from tests.test_methods import frozen, make_opt

CL = torch.channels_last
RTOL = 1e-5
BATCH = 8
N_DATA = 32
IMG = 32
# (teacher, student) pairs with equal channel counts at the compared stages (FSP, KDSVD apply).
# (vgg13 -> repvgg8 passes too, but SemCKD's 512-channel projections cost ~10 s there.)
PAIRS = {"resnet56-represnet20": ("resnet56", "represnet20"),
         "wrn_40_2-repwrn_16_2": ("wrn_40_2", "repwrn_16_2")}


def to_cl(t: torch.Tensor) -> torch.Tensor:
    """The same values in channels_last memory (4-D maps only; vectors stay as they are)."""
    return t.contiguous(memory_format=CL) if t.dim() == 4 else t


def is_cl(t: torch.Tensor) -> bool:
    return t.dim() != 4 or (t.is_contiguous(memory_format=CL) and not t.is_contiguous())


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    """Equal within ``rtol`` relative to the larger magnitude in ``a`` (elementwise for grads)."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, what
    assert torch.isfinite(b).all(), f"{what}: non-finite"
    scale = float(a.abs().max()) if a.numel() else 0.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= rtol * scale + 1e-12, f"{what}: max |diff| {err:.3e} vs scale {scale:.3e}"


# ----- every registered method on real models -----

class Pair:
    """Teacher, student, one batch and its features (plain and pre-activation) in NCHW, plus
    the features of channels_last copies of both models."""

    def __init__(self, t_name: str, s_name: str) -> None:
        torch.manual_seed(0)
        self.teacher = frozen(model_dict[t_name](num_classes=100))
        self.student = model_dict[s_name](num_classes=100)
        self.student.train()
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(BATCH, 3, IMG, IMG, generator=g)
        self.target = torch.randint(0, 100, (BATCH,), generator=g)
        self.index = torch.randperm(N_DATA, generator=g)[:BATCH]
        self.contrast_idx = torch.randint(0, N_DATA, (BATCH, 9), generator=g)
        self.contrast_idx[:, 0] = self.index
        teacher_cl = copy.deepcopy(self.teacher).to(memory_format=CL)
        student_cl = copy.deepcopy(self.student).to(memory_format=CL)
        self.nchw, self.model_cl = {}, {}
        with torch.no_grad():
            for preact in (False, True):
                self.nchw[preact] = self._run(self.student, self.teacher, self.images, preact)
                self.model_cl[preact] = self._run(student_cl, teacher_cl, to_cl(self.images), preact)

    @staticmethod
    def _run(student, teacher, images, preact):
        # student BN in train mode: run a copy so the running statistics stay those of the probe
        feat_s, logit_s = copy.deepcopy(student)(images, is_feat=True, preact=preact)
        feat_t, logit_t = teacher(images, is_feat=True, preact=preact)
        return feat_s, logit_s, feat_t, logit_t


@pytest.fixture(scope="module")
def pairs() -> dict[str, Pair]:
    return {key: Pair(*names) for key, names in PAIRS.items()}


def leaves(feats, layout):
    return [layout(f.detach()).requires_grad_(True) for f in feats]


def run_method(method, pair: Pair, feats, layout):
    """Terms of the main-stage forward (and the init-stage loss), their feature gradients."""
    feat_s, logit_s, feat_t, logit_t = feats
    feat_s = leaves(feat_s, layout)
    feat_t = [layout(f.detach()) for f in feat_t]  # the teacher's carry no gradient
    logit_s = logit_s.detach().requires_grad_(True)
    torch.manual_seed(123)
    terms = method(feat_s, logit_s, feat_t, logit_t, pair.target, 5, index=pair.index,
                   contrast_idx=pair.contrast_idx)
    if method.has_init_stage:
        terms["init"] = method.init_loss(feat_s, feat_t)
    total = sum(terms.values())
    grads = torch.autograd.grad(total, [*feat_s, logit_s], allow_unused=True)
    return terms, grads


@pytest.mark.parametrize("name", dz.method_names())
@pytest.mark.parametrize("pair_key", list(PAIRS))
def test_method_channels_last_matches_nchw(pairs, pair_key, name):
    pair = pairs[pair_key]
    cls = dz.get_method(name)
    feats = pair.nchw[cls.needs_preact]
    torch.manual_seed(0)
    method = dz.build_method(name, make_opt(batch_size=BATCH), pair.student, pair.teacher,
                             feats[0], feats[2], N_DATA)
    method.train()
    method_cl = copy.deepcopy(method).to(memory_format=CL)
    method_model_cl = copy.deepcopy(method_cl)  # CRD's memory bank: one fresh copy per run

    terms, grads = run_method(method, pair, feats, lambda t: t)
    # same values, channels_last layout, channels_last helper modules
    terms_cl, grads_cl = run_method(method_cl, pair, feats, to_cl)
    assert set(terms) == set(terms_cl) and {"cls", "div", "kd"} <= set(terms)
    for key in terms:
        assert_close(terms[key], terms_cl[key], f"{name}/{key}")
    for i, (g, g_cl) in enumerate(zip(grads, grads_cl)):
        assert (g is None) == (g_cl is None), f"{name}: gradient {i}"
        if g is not None:
            # float32 rounding of the helper convs + train-mode BN backward reaches ~2e-3 of
            # the largest entry (SemCKD); a layout mix-up would be O(1)
            assert_close(g, g_cl, f"{name}: gradient {i}", rtol=1e-2)
    if cls.needs_feats:  # the feature term is really computed (AB and FSP: in the init stage)
        assert float(terms["init" if name in {"abound", "fsp"} else "kd"].detach()) != 0

    # end to end: the channels_last models' own features (already channels_last), as in training
    model_feats = pair.model_cl[cls.needs_preact]
    assert all(is_cl(f) for f in model_feats[0][:-1] + model_feats[2][:-1])
    terms_model, _ = run_method(method_model_cl, pair, model_feats, lambda t: t)
    # the models' conv rounding differs between layouts (features ~3e-5 relative); PKT's tiny KL
    # of near-equal distributions amplifies that to ~6e-3
    for key in terms:
        assert_close(terms[key], terms_model[key], f"{name}/{key} (channels_last models)", rtol=2e-2)


# ----- the loss classes and helper modules directly -----

def rand(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def maps(channels, sizes, seed):
    return [rand(BATCH, c, s, s, seed=seed + i) for i, (c, s) in enumerate(zip(channels, sizes))]


G_S = maps((8, 16, 32), (16, 8, 4), 10)
G_T = maps((8, 16, 32), (16, 8, 4), 20)
G_T_WIDE = maps((16, 32, 64), (8, 8, 4), 30)  # other widths, a larger first student map
HINT_S, HINT_T = rand(BATCH, 16, 8, 8, seed=1), rand(BATCH, 24, 8, 8, seed=2)
VEC_S, VEC_T = rand(BATCH, 64, seed=3), rand(BATCH, 128, seed=4)


def transposed(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous (column-major) 2-D storage."""
    return t.t().contiguous().t()


def _seeded(build):
    torch.manual_seed(0)
    return build()


def _crd(layout, make):
    opt = make_opt(s_dim=16 * 4 * 4, t_dim=24 * 4 * 4, n_data=N_DATA)
    idx = torch.arange(BATCH)
    contrast_idx = torch.randint(0, N_DATA, (BATCH, 9), generator=torch.Generator().manual_seed(0))
    contrast_idx[:, 0] = idx
    loss = make(lambda: dz.CRDLoss(opt))  # CRD's Embed flattens the maps
    f_s, f_t = layout(rand(BATCH, 16, 4, 4, seed=5)), layout(rand(BATCH, 24, 4, 4, seed=6))
    return [loss(f_s, f_t, idx, transposed(contrast_idx))]  # negatives: non-contiguous too


def _selfa(layout, make):
    attn = make(lambda: dz.SelfA(BATCH, [8, 16, 32], [16, 32, 64], 1))
    return [dz.SemCKDLoss()(*attn([layout(f) for f in G_S], [layout(f) for f in G_T_WIDE]))]


def _srrl(layout, make):
    srrl = make(lambda: dz.SRRL(s_n=64, t_n=128))
    cls_t = make(lambda: nn.Linear(128, 100))
    trans, pred = srrl(VEC_S, cls_t)
    return [dz.SRRLLoss()(trans, pred, VEC_T, rand(BATCH, 100, seed=7))]


# name -> fn(layout, make): the loss values; ``layout`` maps an NCHW tensor to the layout under
# test, ``make`` builds a (seeded) helper module and moves it to the layout's memory format.
DIRECT = {
    "Similarity": lambda L, M: dz.Similarity()([L(f) for f in G_S], [L(f) for f in G_T_WIDE]),
    "NSTLoss": lambda L, M: dz.NSTLoss()([L(f) for f in G_S], [L(f) for f in G_T_WIDE]),
    "KDSVD": lambda L, M: dz.KDSVD()([L(f) for f in G_S], [L(f) for f in G_T]),
    "Attention": lambda L, M: dz.Attention()([L(f) for f in G_S], [L(f) for f in G_T_WIDE]),
    "FactorTransfer": lambda L, M: [dz.FactorTransfer()(L(HINT_S), L(G_T_WIDE[0]))],
    "FactorTransfer_p2": lambda L, M: [dz.FactorTransfer(p2=2)(L(HINT_S), L(HINT_T))],
    "FSP": lambda L, M: dz.FSP([f.shape for f in G_S], [f.shape for f in G_T])(
        [L(f) for f in G_S], [L(f) for f in G_T]),
    "ABLoss": lambda L, M: dz.ABLoss(3)([L(f) for f in G_S], [L(f) for f in G_T]),
    "RKDLoss_maps": lambda L, M: [dz.RKDLoss()(L(HINT_S), L(HINT_T))],
    "RKDLoss": lambda L, M: [dz.RKDLoss()(VEC_S, transposed(VEC_T) if L is not _id else VEC_T)],
    "PKT": lambda L, M: [dz.PKT()(VEC_S, transposed(VEC_T) if L is not _id else VEC_T)],
    "HintLoss": lambda L, M: [dz.HintLoss()(M(lambda: dz.ConvReg(HINT_S.shape, HINT_T.shape))(
        L(HINT_S)), L(HINT_T))],
    "VIDLoss": lambda L, M: [M(lambda: dz.VIDLoss(16, 24, 24))(L(HINT_S), L(HINT_T))],
    "Correlation_LinearEmbed": lambda L, M: [dz.Correlation()(
        M(lambda: dz.LinearEmbed(16 * 8 * 8, 12))(L(HINT_S)),
        M(lambda: dz.LinearEmbed(24 * 8 * 8, 12))(L(HINT_T)))],
    "Embed": lambda L, M: [M(lambda: dz.Embed(16 * 8 * 8, 12))(L(HINT_S)).sum(0)],
    "MLPEmbed": lambda L, M: [M(lambda: dz.MLPEmbed(64, 16))(L(VEC_S.reshape(BATCH, 4, 4, 4))).sum(0)],
    "CRDLoss_maps": _crd,
    "SelfA_SemCKDLoss": _selfa,
    "SRRL": _srrl,
    "Connector_ABLoss": lambda L, M: dz.ABLoss(3)(
        M(lambda: dz.Connector([f.shape for f in G_S], [f.shape for f in G_T_WIDE]))(
            [L(f) for f in G_S]), [L(f) for f in G_T_WIDE]),
    "Paraphraser_Translator": lambda L, M: [dz.FactorTransfer()(
        M(lambda: dz.Translator(HINT_S.shape, HINT_T.shape))(L(HINT_S)),
        M(lambda: dz.Paraphraser(HINT_T.shape))(L(HINT_T), is_factor=True))],
}


def _id(t: torch.Tensor) -> torch.Tensor:
    return t


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_loss_channels_last_matches_nchw(name):
    fn = DIRECT[name]
    expected = fn(_id, lambda build: _seeded(build))
    got = fn(to_cl, lambda build: _seeded(build).to(memory_format=CL))
    assert len(expected) == len(got) and expected
    for i, (a, b) in enumerate(zip(expected, got)):
        assert_close(a, b, f"{name}[{i}]")


def test_inputs_really_are_channels_last():
    assert all(is_cl(to_cl(f)) for f in G_S + G_T + G_T_WIDE + [HINT_S, HINT_T])
    with pytest.raises(RuntimeError, match="view"):
        to_cl(HINT_S).view(BATCH, -1)  # what the losses must not do
