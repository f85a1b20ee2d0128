"""ReviewKD and OFD equal their authors' code (megvii-research/mdistiller a08d46f) on fixed inputs
and weights (``tests/fixtures/peer_reference/mdistiller_reviewkd_ofd.json``, see its README):
loss values and gradients with respect to the student's features, OFD's margins; where
mdistiller pairs OFD's stages with the wrong margins, the paper's pairing and the difference.
Then the methods' refusals, the student/teacher features they read, and one digits run of each
through ``train_student.py`` (OFD's resumed)."""
from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

import dataset.digits
import train_student
from distiller_zoo.methods import OFDParams, ReviewKDParams, SharedParams, build_distiller, get_method
from helper.errors import UserError
from models import model_dict
from tests.reference import FLOAT32_CANCELLATION_RTOL, deterministic_state_dict

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "peer_reference",
                       "mdistiller_reviewkd_ofd.json")
with open(FIXTURE, encoding="utf-8") as _fh:
    REF = json.load(_fh)
RTOL, ATOL = 1e-5, 1e-7


def draw(name: str, shape) -> torch.Tensor:
    """The fixture's inputs: float32 of a float64 ``randn`` seeded with ``crc32(name)``."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64).float()


def maps(prefix: str, n: int, channels: list[int], sizes: list[int]) -> list[torch.Tensor]:
    return [draw(f"{prefix}{i}", (n, c, h, h)) for i, (c, h) in enumerate(zip(channels, sizes))]


def load_theirs(module: nn.Module, prefix: str, their_key) -> None:
    """Load the fixture's deterministic weights, drawn under mdistiller's state-dict keys."""
    ours = module.state_dict()
    theirs = {f"{prefix}/{their_key(k)}": v for k, v in ours.items()}
    drawn = deterministic_state_dict(theirs)
    module.load_state_dict({k: drawn[f"{prefix}/{their_key(k)}"] for k in ours})


def abf_key(key: str) -> str:
    """``fusions.<i>.reduce|output|attention.*`` -> mdistiller's ``<i>.conv1|conv2|att_conv.*``."""
    index, part, rest = re.fullmatch(r"fusions\.(\d+)\.(\w+)\.(.*)", key).groups()
    return f"{index}.{ {'reduce': 'conv1', 'output': 'conv2', 'attention': 'att_conv'}[part]}.{rest}"


def close(actual: torch.Tensor, expected, what: str) -> None:
    """Element-wise within RTOL, or within FLOAT32_CANCELLATION_RTOL of the tensor's largest
    entry (a gradient's small entries are sums of larger contributions)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype).reshape(actual.shape)
    atol = max(ATOL, FLOAT32_CANCELLATION_RTOL * float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------- ReviewKD


def reviewkd_inputs(case: str):
    c = REF[case]
    n = c["n"]
    feat_s = maps(f"{case}/feat_s", n, c["student_channels"], c["student_sizes"])
    feat_s.append(draw(f"{case}/pooled_s", (n, c["student_channels"][-1])))
    feat_t = maps(f"{case}/feat_t", n, c["teacher_channels"], c["teacher_sizes"])
    feat_t.append(draw(f"{case}/pooled_t", (n, c["teacher_channels"][-1])))
    feat_s = [f.requires_grad_(True) for f in feat_s]
    return c, feat_s, feat_t, draw(f"{case}/logits_s", (n, 10)), draw(f"{case}/logits_t", (n, 10))


@pytest.mark.parametrize("case", ["reviewkd_same_size", "reviewkd_upsample"])
def test_reviewkd_equals_mdistiller(case):
    """The weighted terms r*cls + b*kd are mdistiller's loss_ce + loss_kd (CIFAR recipe), with
    the same gradients w.r.t. the student's levels; in "reviewkd_upsample" the teacher's maps are
    2-4x the student's and the student has a stage more (the deepest levels are paired)."""
    c, feat_s, feat_t, logits_s, logits_t = reviewkd_inputs(case)
    cls = get_method("reviewkd")
    cfg = c["config"]
    assert (cls.recipe.gamma, cls.recipe.alpha, cls.recipe.beta) == (cfg["CE_WEIGHT"], 0.0, cfg["REVIEWKD_WEIGHT"])
    params = ReviewKDParams()
    assert (params.reviewkd_warmup, params.reviewkd_max_mid_channel) == (cfg["WARMUP_EPOCHS"], cfg["MAX_MID_CHANNEL"])
    method = build_distiller("reviewkd", SharedParams(), params, nn.Identity(), nn.Identity(), feat_s, feat_t, 1)
    load_theirs(method.criterion_kd, f"{case}/abfs", abf_key)
    method.train()
    terms = method(feat_s, logits_s, feat_t, logits_t, torch.tensor(c["target"]), c["epoch"])
    close(cls.recipe.gamma * terms["cls"], c["loss_ce"], "loss_ce")
    loss_kd = cls.recipe.beta * terms["kd"]
    close(loss_kd, c["loss_kd"], "loss_kd")
    grads = torch.autograd.grad(loss_kd, feat_s[1:], allow_unused=True)
    for i, (g, f, expected) in enumerate(zip(grads, feat_s[1:], c["grad_levels_s"], strict=True)):
        close(torch.zeros_like(f) if g is None else g, expected, f"gradient of student level {i + 1}")


def test_reviewkd_warms_up_and_honours_the_mid_channel_flag():
    """``min(epoch / warmup, 1)``; ``--reviewkd_max_mid_channel`` caps the fused width (mdistiller
    reads its MAX_MID_CHANNEL setting nowhere and always caps at 512)."""
    c, feat_s, feat_t, logits_s, logits_t = reviewkd_inputs("reviewkd_same_size")
    target = torch.tensor(c["target"])
    method = build_distiller("reviewkd", SharedParams(), ReviewKDParams(reviewkd_warmup=4), nn.Identity(),
                             nn.Identity(), feat_s, feat_t, 1).train()
    kd = [float(method(feat_s, logits_s, feat_t, logits_t, target, epoch)["kd"].detach()) for epoch in (1, 2, 4, 9)]
    assert kd[1] == pytest.approx(2 * kd[0]) and kd[2] == pytest.approx(4 * kd[0]) == pytest.approx(kd[3])
    narrow = build_distiller("reviewkd", SharedParams(), ReviewKDParams(reviewkd_max_mid_channel=3), nn.Identity(),
                             nn.Identity(), feat_s, feat_t, 1)
    assert {f.reduce[0].out_channels for f in narrow.criterion_kd.fusions} == {3}
    assert {f.reduce[0].out_channels for f in method.criterion_kd.fusions} == {c["student_channels"][-1]}


# ----------------------------------------------------------------------------- OFD


class BNTeacher(nn.Module):
    """A teacher that has only its BNs before the ReLUs (what OFD reads of it beyond features)."""

    def __init__(self, weights: list[list[float]], biases: list[list[float]]) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(len(w)) for w in weights)
        with torch.no_grad():
            for bn, w, b in zip(self.bns, weights, biases):
                bn.weight.copy_(torch.tensor(w))
                bn.bias.copy_(torch.tensor(b))

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return list(self.bns)


def ofd_terms(case: str):
    c = REF[case]
    n = c["n"]
    pooled = [torch.zeros(n, 1)]  # feats[-1], which OFD does not read
    feat_s = [f.requires_grad_(True) for f in maps(f"{case}/preact_s", n, c["student_channels"], c["student_sizes"])]
    feat_s += pooled
    feat_t = maps(f"{case}/preact_t", n, c["teacher_channels"], c["teacher_sizes"]) + pooled
    teacher = BNTeacher(c["bn_weight"], c["bn_bias"])
    method = build_distiller("ofd", SharedParams(), OFDParams(), nn.Identity(), teacher, feat_s, feat_t, 1)
    load_theirs(method.criterion_kd.connectors, f"{case}/connectors", lambda k: f"connectors.{k}")
    method.train()
    terms = method(feat_s, draw(f"{case}/logits_s", (n, 10)), feat_t, torch.zeros(n, 10), torch.tensor(c["target"]), 1)
    loss_kd = get_method("ofd").recipe.beta * terms["kd"]
    grads = torch.autograd.grad(loss_kd, feat_s[1:-1], allow_unused=True)
    grads = [torch.zeros_like(f) if g is None else g for f, g in zip(feat_s[1:-1], grads)]
    return c, method, terms, loss_kd, grads


def test_ofd_equals_mdistiller():
    c, method, terms, loss_kd, grads = ofd_terms("ofd")
    recipe = get_method("ofd").recipe
    assert (recipe.gamma, recipe.alpha, recipe.beta) == (c["ce_weight"], 0.0, c["feat_weight"])
    assert OFDParams().ofd_connector_kernel == c["kernel_size"]
    for i, (ours, theirs) in enumerate(zip(method.criterion_kd.margins(), c["margins"], strict=True)):
        close(ours.flatten(), theirs, f"margin of stage {i}")
    close(recipe.gamma * terms["cls"], c["loss_ce"], "loss_ce")
    close(loss_kd, c["loss_kd"], "loss_kd")
    for i, (g, expected) in enumerate(zip(grads, c["grad_preact_s"], strict=True)):
        close(g, expected, f"gradient of student stage {i + 1}")


def test_ofd_pairs_each_stage_with_its_own_margin():
    """A teacher with a stage more than the student: both codes pair the deepest stages, but
    mdistiller gives them the margins of the teacher's *first* BNs. Ours equals mdistiller's code
    with the margins aligned as the stages are (the paper's margin of each stage's own BN), and
    differs from mdistiller's number."""
    c, method, _, loss_kd, grads = ofd_terms("ofd_more_teacher_stages")
    assert len(c["margins"]) == len(method.criterion_kd.margins()) + 1
    for ours, theirs in zip(method.criterion_kd.margins(), c["margins"][1:], strict=True):
        close(ours.flatten(), theirs, "margin")
    close(loss_kd, c["loss_kd_aligned_margins"], "loss_kd")
    for g, expected in zip(grads, c["grad_preact_s_aligned_margins"], strict=True):
        close(g, expected, "gradient")
    assert abs(float(loss_kd.detach()) - c["loss_kd"]) > 0.01 * c["loss_kd"]  # mdistiller's unaligned margins


def test_margin_of_degenerate_channels():
    """A zero BN scale: the response is the constant bias, so the margin is the bias when it is
    negative and 0 otherwise (no NaN; mdistiller divides by zero there)."""
    from distiller_zoo.ofd import bn_margin

    margin = bn_margin(torch.tensor([0.0, 0.0, 0.0, -2.0]), torch.tensor([-0.5, 0.7, 0.0, 0.0]))
    expected = torch.tensor([-0.5, 0.0, 0.0, -2.0 * (2 / torch.pi) ** 0.5])  # E[x | x < 0], x ~ N(0, 4)
    torch.testing.assert_close(margin, expected)


# ----------------------------------------------------------------------------- what they read


def probe(model: nn.Module, preact: bool) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 32, 32), is_feat=True, preact=preact)[0]


@pytest.mark.parametrize("teacher", ["represnet8", "ShuffleV2"])
def test_ofd_refuses_a_teacher_without_plain_bns_in_one_line(teacher):
    """Rep blocks (a sum of branches) and ShuffleNetV2 (half its stage output has no BN) have no
    BN whose statistics describe the pre-ReLU response."""
    student, net = model_dict["resnet8"](num_classes=10), model_dict[teacher](num_classes=10)
    with pytest.raises(UserError) as err:
        build_distiller("ofd", SharedParams(), OFDParams(), student, net, probe(student, True), probe(net, True), 1)
    assert "\n" not in str(err.value) and "margins" in str(err.value)


def test_the_features_each_method_reads():
    """OFD: pre-activation features of both; ReviewKD: the student's after, the teacher's before
    the ReLU (mdistiller's CIFAR recipe)."""
    assert (get_method("ofd").preact_for(teacher=False), get_method("ofd").preact_for(teacher=True)) == (True, True)
    assert (get_method("reviewkd").preact_for(teacher=False),
            get_method("reviewkd").preact_for(teacher=True)) == (False, True)


# ----------------------------------------------------------------------------- end to end


def small_digits(full=dataset.digits.load_digits_data):
    """The digits set cut to 32 training and 32 test images (two steps of 16)."""
    data = full()
    return replace(data, train_images=data.train_images[:32], train_labels=data.train_labels[:32],
                   test_images=data.test_images[:32], test_labels=data.test_labels[:32])


def small_digits_teacher(tmp_path, monkeypatch) -> str:
    """Work in ``tmp_path`` on :func:`small_digits` with a random resnet8 teacher (seed 0) saved
    where the scripts look for it; its path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dataset.digits, "load_digits_data", small_digits)
    torch.manual_seed(0)
    teacher = os.path.join("save", "models", "resnet8_vanilla", "ckpt_epoch_240.pth")
    os.makedirs(os.path.dirname(teacher))
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict()}, teacher)
    return teacher


def test_reviewkd_and_ofd_train_on_digits(tmp_path, monkeypatch, capsys):
    """Both methods through ``train_student.main`` with their recipes (run folder, saved method
    state); OFD's run then resumed for a second epoch, which goes on training its connectors."""
    teacher = small_digits_teacher(tmp_path, monkeypatch)
    common = ["--dataset", "digits", "--path_t", teacher, "--model_s", "resnet8", "--batch_size", "16",
              "--num_workers", "0", "--seed", "0", "--print_freq", "100", "--lr_decay_epochs", "1"]
    saved = {}
    for method in ("reviewkd", "ofd"):
        recipe = get_method(method).recipe
        first = train_student.main([*common, "--distill", method, "--epochs", "1"])
        assert 0 <= first["test_acc"] <= 100
        folder = next(p for p in (tmp_path / "save" / "student_model").iterdir() if f"_{method}_" in p.name)
        assert f"_r_{recipe.gamma}_a_{recipe.alpha}_b_{recipe.beta}_" in folder.name
        saved[method] = torch.load(folder / "resnet8_last.pth", weights_only=True)["method"]
        assert saved[method] and all(k.startswith("criterion_kd.") for k in saved[method])
    assert train_student.main([*common, "--distill", "ofd", "--epochs", "2", "--resume"])["test_acc"] >= 0
    assert json.loads((folder / "test_last_metrics.json").read_text())["epoch"] == 2
    after = torch.load(folder / "resnet8_last.pth", weights_only=True)["method"]
    assert set(after) == set(saved["ofd"])
    assert all(torch.equal(after[k], saved["ofd"][k]) for k in after if "margin" in k)  # fixed by the teacher
    assert any(not torch.equal(after[k], saved["ofd"][k]) for k in after if "connectors" in k)
    assert "Traceback" not in capsys.readouterr().err
