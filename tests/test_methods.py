"""Every ``--distill`` method builds, trains a few steps and gives finite, non-zero gradients to
what it trains; incompatible pairs and unknown names fail with a one-line UserError."""
from __future__ import annotations

import argparse
import pathlib
import re
from dataclasses import FrozenInstanceError, fields

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import distiller_zoo as dz
from distiller_zoo.methods.base import StepInputs
from helper.errors import UserError
from tests.reference import load_json, loss_inputs

ALL_METHODS = dz.method_names()  # the registry: a method added is tested with the others
BATCH = 8
N_DATA = 32
IMG = 16



class _Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pre-activation output
        return self.bn(self.conv(x))


class TinyNet(nn.Module):
    """A CRD-style stand-in: features [stem, stage1, stage2, stage3, pooled], then logits."""

    def __init__(self, widths: tuple[int, int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(3, c0, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c0)
        self.relu = nn.ReLU()
        self.layer1 = _Stage(c0, c1, 1)
        self.layer2 = _Stage(c1, c2, 2)
        self.layer3 = _Stage(c2, c3, 2)
        self.fc = nn.Linear(c3, num_classes)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.layer1.bn, self.layer2.bn, self.layer3.bn]

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        f0 = self.relu(self.bn1(self.conv1(x)))
        p1 = self.layer1(f0)
        p2 = self.layer2(self.relu(p1))
        p3 = self.layer3(self.relu(p2))
        f3 = self.relu(p3)
        pooled = F.adaptive_avg_pool2d(f3, 1).flatten(1)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        mid = [p1, p2, p3] if preact else [self.relu(p1), self.relu(p2), f3]
        return [f0, *mid, pooled], logits


SAME_WIDTHS = ((8, 8, 16, 32), (8, 8, 16, 32))
WIDER_TEACHER = ((8, 8, 16, 32), (16, 16, 32, 64))


def make_opt(**kw) -> argparse.Namespace:
    base = dict(kd_T=4.0, feat_dim=16, nce_k=8, nce_t=0.07, nce_m=0.5, mode="exact", hint_layer=2,
                logit_stand=False, init_epochs=1, epochs=2, batch_size=BATCH, dkd_alpha=1.0,
                dkd_beta=8.0, dkd_T=4.0, dkd_warmup=20)
    for params_class in dz.methods.method_params_classes():  # the other methods' flags: their defaults
        base.update({f.name: f.default for f in fields(params_class) if f.name not in base})
    base.update(kw)
    return argparse.Namespace(**base)


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build(name: str, widths=SAME_WIDTHS, opt=None, seed: int = 0):
    torch.manual_seed(seed)
    student, teacher = TinyNet(widths[0]), frozen(TinyNet(widths[1]))
    method_cls = dz.methods.get_method(name)
    probe = torch.randn(2, 3, IMG, IMG)
    student.eval()
    with torch.no_grad():
        feat_s, _ = student(probe, is_feat=True, preact=method_cls.preact_for(teacher=False))
        feat_t, _ = teacher(probe, is_feat=True, preact=method_cls.preact_for(teacher=True))
    method = dz.build_method(name, opt or make_opt(), student, teacher, feat_s, feat_t, N_DATA)
    return student, teacher, method


def data(step: int):
    g = torch.Generator().manual_seed(100 + step)
    images = torch.randn(BATCH, 3, IMG, IMG, generator=g)
    target = torch.randint(0, 10, (BATCH,), generator=g)
    index = torch.randperm(N_DATA, generator=g)[:BATCH]
    contrast_idx = torch.randint(0, N_DATA, (BATCH, 9), generator=g)
    contrast_idx[:, 0] = index
    return images, target, index, contrast_idx


def step_terms(student, teacher, method, step: int, epoch: int = 1) -> dict[str, torch.Tensor]:
    images, target, index, contrast_idx = data(step)
    with torch.no_grad():
        feat_t, logit_t = teacher(images, is_feat=True, preact=method.preact_for(teacher=True))
    feat_s, logit_s = student(images, is_feat=True, preact=method.preact_for(teacher=False))
    return method(feat_s, logit_s, feat_t, logit_t, target, epoch, index=index,
                  contrast_idx=contrast_idx)


def assert_grads(modules: list[nn.Module], allow_unused: tuple[str, ...] = ()) -> None:
    for module in modules:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        assert named, f"{type(module).__name__} has no trainable parameters"
        total = 0.0
        for n, p in named:
            if p.grad is None:
                assert any(tag in n for tag in allow_unused), f"no gradient for {n}"
                continue
            assert torch.isfinite(p.grad).all(), f"non-finite gradient for {n}"
            total += float(p.grad.abs().sum())
        assert total > 0, f"all-zero gradients in {type(module).__name__}"


def unused_params(name: str) -> tuple[str, ...]:
    # SemCKD's MLPEmbed keeps the original's never-called `regressor` branch.
    return (".regressor.",) if name == "semckd" else ()


SAME_CHANNELS_ONLY = {"fsp", "kdsvd"}


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_trains(name):
    student, teacher, method = build(name, SAME_WIDTHS if name in SAME_CHANNELS_ONLY else WIDER_TEACHER)
    assert method.name == name
    if method.has_init_stage:
        init_modules = method.init_modules(student)
        assert init_modules
        params = [p for m in init_modules for p in m.parameters()]
        opt_init = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        student.eval()
        for m in init_modules:
            m.train()
        for step in range(2):
            images = data(step)[0]
            with torch.no_grad():
                feat_t, _ = teacher(images, is_feat=True, preact=method.needs_preact)
            feat_s, _ = student(images, is_feat=True, preact=method.needs_preact)
            loss = method.init_loss(feat_s, feat_t)
            assert loss.dim() == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
            opt_init.zero_grad()
            loss.backward()
            assert_grads(init_modules)
            opt_init.step()
    else:
        assert method.init_modules(student) == []

    trainable = [student, *method.trainable_modules()]
    optimizer = torch.optim.SGD([p for m in trainable for p in m.parameters()], lr=0.01, momentum=0.9)
    student.train()
    method.train()
    for step in range(2):
        terms = step_terms(student, teacher, method, step)
        assert {"cls", "div", "kd"} <= set(terms)
        assert not any(terms[k].requires_grad for k in set(terms) - {"cls", "div", "kd"})  # logged only
        for key, value in terms.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, key
            assert torch.isfinite(value), key
        loss = terms["cls"] + terms["div"] + terms["kd"]
        optimizer.zero_grad()
        loss.backward()
        assert_grads(trainable, unused_params(name))
        optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())


# What the shipped methods declare, pinned (features, student pre-activation, teacher
# pre-activation, sample indices, init stage), as RepDistiller's train_student.py feeds them. A
# method added later is not pinned here: test_declarations_match_behaviour checks every method.
SHIPPED_DECLARATIONS = {
    "abound": (True, True, True, False, True), "attention": (True, False, False, False, False),
    "correlation": (True, False, False, False, False), "crd": (True, False, False, True, False),
    "ctkd": (False, False, False, False, False), "dkd": (False, False, False, False, False),
    "factor": (True, False, False, False, True), "fsp": (True, False, False, False, True),
    "hint": (True, False, False, False, False), "kd": (False, False, False, False, False),
    "kdrefine": (False, False, False, False, False), "kdsvd": (True, False, False, False, False),
    "mlkd": (False, False, False, False, False), "nst": (True, False, False, False, False),
    "ofd": (True, True, True, False, False), "pkt": (True, False, False, False, False),
    "reviewkd": (True, False, True, False, False), "rkd": (True, False, False, False, False),
    "semckd": (True, False, False, False, False), "similarity": (True, False, False, False, False),
    "srrl": (True, False, False, False, False), "vid": (True, False, False, False, False),
}


@pytest.mark.parametrize("name", sorted(SHIPPED_DECLARATIONS))
def test_shipped_method_declarations(name):
    cls = dz.methods.get_method(name)
    declared = (cls.needs_feats, cls.preact_for(teacher=False), cls.preact_for(teacher=True),
                cls.needs_index, cls.has_init_stage)
    assert declared == SHIPPED_DECLARATIONS[name]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_declarations_match_behaviour(name):
    """A method that declares it reads no features (or no sample indices) gives the same terms
    without them, so the training loop may skip computing them."""
    cls = dz.methods.get_method(name)
    widths = SAME_WIDTHS if name in SAME_CHANNELS_ONLY else WIDER_TEACHER
    images, target, index, contrast_idx = data(0)

    def terms(drop_feats: bool, drop_index: bool) -> dict[str, torch.Tensor]:
        student, teacher, method = build(name, widths)
        with torch.no_grad():
            feat_t, logit_t = teacher(images, is_feat=True, preact=cls.preact_for(teacher=True))
        feat_s, logit_s = student(images, is_feat=True, preact=cls.preact_for(teacher=False))
        if drop_feats:
            feat_s, feat_t = [], []
        return method(feat_s, logit_s, feat_t, logit_t, target, 1,
                      index=None if drop_index else index,
                      contrast_idx=None if drop_index else contrast_idx)

    full = terms(False, False)
    reduced = terms(not cls.needs_feats, not cls.needs_index)
    assert set(full) == set(reduced)
    for key in full:
        torch.testing.assert_close(full[key], reduced[key], rtol=0, atol=0, msg=key)


def test_unknown_method_lists_known_names():
    with pytest.raises(UserError) as err:
        dz.build_method("nope", make_opt(), TinyNet(SAME_WIDTHS[0]), TinyNet(SAME_WIDTHS[1]), [], [], 1)
    message = str(err.value)
    assert "'nope'" in message and "\n" not in message
    assert all(name in message for name in ALL_METHODS)


@pytest.mark.parametrize("name", ["fsp", "kdsvd"])
def test_channel_mismatch_is_a_user_error(name):
    with pytest.raises(UserError, match="channel") as err:
        build(name, widths=WIDER_TEACHER)
    assert "[8, 16, 32]" in str(err.value) or "[8, 8, 16, 32]" in str(err.value)


def test_ab_connector_identity_for_equal_shapes():
    _, _, same = build("abound", SAME_WIDTHS)
    assert not list(same.connector.parameters())
    _, _, wider = build("abound", WIDER_TEACHER)
    assert all(isinstance(c, dz.ConvReg) for c in wider.connector.connectors)


def test_hint_layer_out_of_range():
    with pytest.raises(UserError, match="hint_layer"):
        build("hint", opt=make_opt(hint_layer=7))
    with pytest.raises(UserError, match="pooled"):
        build("hint", opt=make_opt(hint_layer=4))


def test_logit_stand_only_for_logit_methods():
    with pytest.raises(UserError, match="logit_stand"):
        build("hint", opt=make_opt(logit_stand=True))


def _logits(name: str, opt, epoch: int = 20):
    x = loss_inputs()
    _, _, method = build(name, opt=opt)
    return x, method(None, x["logits_s"], None, x["logits_t"], x["target"], epoch)


def test_kdrefine_terms_match_reference():
    public = load_json("losses_public.json")
    _, terms = _logits("kdrefine", make_opt())
    assert float(terms["cls"]) == pytest.approx(public["kdrefine_ce"], rel=1e-5)
    assert float(terms["div"]) == pytest.approx(public["kdrefine_kl_T4"], rel=1e-5)
    assert float(0.1 * terms["cls"] + 0.9 * terms["div"]) == pytest.approx(
        public["kdrefine_total_r0.1_a0.9"], rel=1e-5)
    assert float(terms["kd"]) == 0.0


def test_kd_terms_and_logit_stand():
    x, plain = _logits("kd", make_opt())
    public = load_json("losses_public.json")
    assert float(plain["div"]) == pytest.approx(public["DistillKL_T4"], rel=1e-5)
    assert float(plain["kd"]) == 0.0
    _, stand = _logits("kd", make_opt(logit_stand=True))
    torch.testing.assert_close(stand["cls"], F.cross_entropy(x["logits_s"], x["target"]))
    expected = dz.DistillKL(4)(dz.standardize_logits(x["logits_s"]),
                               dz.standardize_logits(x["logits_t"]))
    torch.testing.assert_close(stand["div"], expected)


def test_dkd_terms_and_logit_stand():
    x, plain = _logits("dkd", make_opt())
    public = load_json("losses_public.json")
    assert float(plain["kd"]) == pytest.approx(public["DKD_a1_b8_T4"], rel=1e-5)
    torch.testing.assert_close(plain["cls"], F.cross_entropy(x["logits_s"], x["target"]))
    _, warm = _logits("dkd", make_opt(), epoch=10)
    assert float(warm["kd"]) == pytest.approx(0.5 * public["DKD_a1_b8_T4"], rel=1e-5)
    _, stand = _logits("dkd", make_opt(logit_stand=True))
    expected = dz.DKDLoss()(dz.standardize_logits(x["logits_s"]), dz.standardize_logits(x["logits_t"]),
                            x["target"], 20)
    torch.testing.assert_close(stand["kd"], expected)
    torch.testing.assert_close(stand["cls"], plain["cls"])


def test_main_stage_keeps_idle_modules_in_eval():
    _, _, ab = build("abound")
    ab.train()
    assert not ab.connector.training
    _, _, ft = build("factor")
    ft.train()
    assert ft.translator.training and not ft.paraphraser.training


def test_owned_modules_are_registered_and_teacher_is_not():
    _, teacher, srrl = build("srrl")
    keys = srrl.state_dict().keys()
    assert any(k.startswith("srrl.") for k in keys)
    assert not any("fc" in k for k in keys)
    _, _, crd = build("crd")
    keys = crd.state_dict().keys()
    assert {"criterion_kd.contrast.memory_v1", "criterion_kd.contrast.memory_v2",
            "criterion_kd.contrast.params"} <= set(keys)
    crd.to(torch.float64)
    assert crd.criterion_kd.embed_s.linear.weight.dtype == torch.float64


def test_crd_memory_is_not_trained():
    _, _, crd = build("crd")
    trained = {id(p) for m in crd.trainable_modules() for p in m.parameters()}
    assert all(id(b) not in trained for b in crd.buffers())
    assert len(trained) == 4  # two Linear layers


def test_kd_term_sums_the_loss_group():
    student, teacher, method = build("attention")
    images, target, *_ = data(0)
    with torch.no_grad():
        feat_t, logit_t = teacher(images, is_feat=True)
        feat_s, logit_s = student(images, is_feat=True)
        terms = method(feat_s, logit_s, feat_t, logit_t, target, 1)
        expected = sum(dz.Attention()(feat_s[1:-1], feat_t[1:-1]))
    torch.testing.assert_close(terms["kd"], expected)


def test_semckd_needs_full_batches():
    student, teacher, method = build("semckd")
    assert method.needs_full_batches
    images = data(0)[0][:4]
    with torch.no_grad():
        feat_t, logit_t = teacher(images, is_feat=True)
    feat_s, logit_s = student(images, is_feat=True)
    with pytest.raises(ValueError, match="batch"):
        target = torch.zeros(4, dtype=torch.long)
        method.kd_loss(StepInputs(feat_s, logit_s, feat_t, logit_t, target, 1))


def _zoo_pair(student_name: str, teacher_name: str):
    models = pytest.importorskip("models")
    names = getattr(models, "model_dict", {})
    if student_name not in names or teacher_name not in names:
        pytest.skip(f"{student_name}/{teacher_name} not in models.model_dict yet")
    torch.manual_seed(0)
    return names[student_name](num_classes=100), frozen(names[teacher_name](num_classes=100))


ZOO_BATCH = 4


@pytest.fixture(scope="module")
def zoo_probe():
    """resnet8 <- resnet20 from the real zoo, their probe features and one batch of inputs."""
    student, teacher = _zoo_pair("resnet8", "resnet20")
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, 32, 32, generator=g)
    images = torch.randn(ZOO_BATCH, 3, 32, 32, generator=g)
    outputs = {}
    with torch.no_grad():
        for preact in (False, True):
            feats = (student.eval()(probe, is_feat=True, preact=preact)[0],
                     teacher(probe, is_feat=True, preact=preact)[0])
            outputs[preact] = (feats, teacher(images, is_feat=True, preact=preact))
    return student.state_dict(), teacher, images, outputs


@pytest.mark.parametrize("name", ALL_METHODS)
def test_real_zoo_pair(name, zoo_probe):
    import models

    student_state, teacher, images, outputs = zoo_probe
    student = models.model_dict["resnet8"](num_classes=100)
    student.load_state_dict(student_state)
    cls = dz.methods.get_method(name)
    preact, preact_t = cls.preact_for(teacher=False), cls.preact_for(teacher=True)
    feat_s, feat_t = outputs[preact][0][0], outputs[preact_t][0][1]
    feat_t_batch, logit_t = outputs[preact_t][1]
    method = dz.build_method(name, make_opt(batch_size=ZOO_BATCH), student, teacher, feat_s, feat_t,
                             N_DATA)
    student.train()
    method.train()
    target = torch.arange(ZOO_BATCH)
    index = torch.arange(ZOO_BATCH)
    contrast_idx = torch.randint(0, N_DATA, (ZOO_BATCH, 9))
    contrast_idx[:, 0] = index
    feats_s, logit_s = student(images, is_feat=True, preact=preact)
    if method.has_init_stage:
        method.init_loss(feats_s, feat_t_batch).backward(retain_graph=True)
        assert_grads([m for m in method.init_modules(student) if list(m.parameters())])
        student.zero_grad()
    terms = method(feats_s, logit_s, feat_t_batch, logit_t, target, 1, index=index,
                   contrast_idx=contrast_idx)
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert_grads([student, *method.trainable_modules()], unused_params(name))


def test_real_zoo_fsp_mismatch():
    student, teacher = _zoo_pair("resnet8x4", "resnet20")
    probe = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feat_s, _ = student.eval()(probe, is_feat=True)
        feat_t, _ = teacher(probe, is_feat=True)
    with pytest.raises(UserError, match="channel"):
        dz.build_method("fsp", make_opt(), student, teacher, feat_s, feat_t, N_DATA)


# ----------------------------------------------------------------------------- parameters


def test_each_params_class_declares_its_flags_once():
    """The flags of CRD, DKD and FitNet are generated from their params dataclasses, each class
    once (CRD and CC share ``CRDParams``), with the dataclass defaults, types and choices."""
    methods = dz.methods
    classes = methods.method_params_classes()
    assert classes == [methods.CRDParams, dz.get_method("ctkd").params_class, methods.DKDParams, methods.HintParams,
                       dz.get_method("mlkd").params_class, methods.OFDParams, methods.ReviewKDParams]
    assert dz.get_method("crd").params_class is dz.get_method("correlation").params_class
    parser = argparse.ArgumentParser()
    methods.add_method_flags(parser)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert sorted(actions) == sorted(f.name for c in classes for f in fields(c))
    for c in classes:
        for f in fields(c):
            action = actions[f.name]
            assert action.default == f.default and action.type is f.metadata["type"]
            assert action.choices == f.metadata["choices"] and action.help == f.metadata["help"]
    assert actions["hint_layer"].choices == [0, 1, 2, 3, 4] and actions["hint_layer"].default == 2
    assert (actions["feat_dim"].default, actions["nce_k"].default, actions["nce_t"].default,
            actions["nce_m"].default, actions["mode"].default) == (128, 16384, 0.07, 0.5, "exact")
    assert vars(parser.parse_args([])) == {f.name: f.default for c in classes for f in fields(c)}


def test_params_read_exactly_their_fields_every_field_required():
    methods = dz.methods
    flags = dict(dkd_alpha=1.0, dkd_beta=2.0, dkd_T=4.0, dkd_warmup=20, kd_T=3.0, unrelated=1)
    assert methods.DKDParams.from_flags(flags) == methods.DKDParams(dkd_beta=2.0)
    with pytest.raises(TypeError, match="dkd_alpha"):  # no silent default for a missing flag
        methods.DKDParams.from_flags({"dkd_beta": 2.0})
    with pytest.raises(FrozenInstanceError):
        methods.HintParams().hint_layer = 3


def test_methods_take_their_values_from_the_params():
    _, _, dkd = build("dkd", opt=make_opt(dkd_alpha=0.5, dkd_beta=2.0, dkd_T=2.0, dkd_warmup=5))
    kd = dkd.criterion_kd
    assert (kd.alpha, kd.beta, kd.temperature, kd.warmup) == (0.5, 2.0, 2.0, 5)
    _, _, crd = build("crd", opt=make_opt(feat_dim=12, nce_k=5, nce_t=0.2, nce_m=0.3))
    assert crd.criterion_kd.embed_s.linear.out_features == 12
    assert (crd.criterion_kd.contrast.K, crd.criterion_kd.contrast.momentum) == (5, pytest.approx(0.3))
    assert crd.criterion_kd.contrast.T == pytest.approx(0.2)
    _, _, cc = build("correlation", opt=make_opt(feat_dim=12))
    assert cc.embed_s.linear.out_features == 12
    _, _, hint = build("hint", opt=make_opt(hint_layer=1))
    assert hint.hint_layer == 1
    # an options object with only what the method reads: the rest takes the dataclass defaults
    with pytest.raises(TypeError):  # the legacy options path fills nothing in silently
        build("hint", opt=argparse.Namespace())


def test_init_learning_rate():
    _, _, ft = build("factor")
    assert ft.init_learning_rate(0.05, low_init_lr=True) == 0.01
    assert ft.init_learning_rate(0.05, low_init_lr=False) == 0.05
    for name in ("abound", "fsp", "kd"):
        _, _, method = build(name)
        assert method.init_learning_rate(0.05, True) == 0.05


def test_no_method_reads_the_options_object():
    root = pathlib.Path(dz.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text().replace("flags = vars(opt)", "")  # build_method's one adapter line
        assert "ctx.opt" not in text and "vars(" not in text, path
        assert not re.search(r"getattr\(\w*opt\w*,\s*[\"']", text), path  # no loose opt reads
