"""DOT (Zhao et al., ICCV 2023; ``--dot``): our optimizer and our engine's step equal the
authors' (``tests/fixtures/peer_reference/dot.json``, made with mdistiller's own
``DistillationOrientedTrainer``: see that folder's README), with a grad scaler and under two
processes; its flags; and a digits run with ``--dot`` that resumes exactly."""
from __future__ import annotations

import json
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train_student
from engine.config import StudentOptim
from engine.distill import DistillStep
from engine.dot import DISTILL_BUFFER, TASK_BUFFER, DistillationOrientedSGD, SplitLoss, average_gradients
from engine.loops import Batch, optimize
from engine.trainer import make_optimizer
from helper.distributed import DistContext
from engine.stepping import SharedTeacher
from engine.distill import StudentParts
from engine.trials import stepping_for
from tests.cli_helpers import FAST, TEACHER_LAST, exit_message, teacher_workdir
from tests.test_reviewkd_ofd import small_digits_teacher

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "peer_reference", "dot.json")
CPU = torch.device("cpu")
with open(FIXTURE, encoding="utf-8") as fh:
    REF = json.load(fh)
HYPER = REF["hyper"]
NAMES = list(REF["init"])  # trunk.weight, trunk.bias, head_a.weight, head_b.weight, unused, reg.weight


# ---- the fixture's tiny model, as our engine's student, teacher and method ---------------

class TinyStudent(nn.Module):
    """The fixture's student: ``tanh`` trunk, two heads (``head_b`` feeds only the task loss)
    and a parameter no loss reaches."""

    def __init__(self) -> None:
        super().__init__()
        for name in NAMES[:5]:
            self.register_parameter(name.replace(".", "_"), nn.Parameter(torch.tensor(REF["init"][name])))

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False) -> torch.Tensor:
        h = torch.tanh(x @ self.trunk_weight.T + self.trunk_bias)
        return torch.cat([h @ self.head_a_weight.T, h @ self.head_b_weight.T], dim=1)


class TinyTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(REF["teacher_weight"]))

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False) -> torch.Tensor:
        return x @ self.weight.T


class TinyMethod(nn.Module):
    """The fixture's terms, case ``sliced``: the distillation terms read the first two of the
    student's logits (``head_b`` then gets a zero distillation gradient through the
    concatenation, as every student parameter gets both gradients in a real step); ``reg``
    (a regressor) feeds only the distillation loss."""

    needs_feats = False
    needs_preact = False
    needs_strong_view = False

    def trainable_modules(self) -> list[nn.Module]:
        return [self]

    def __init__(self) -> None:
        super().__init__()
        self.reg = nn.Parameter(torch.tensor(REF["init"]["reg.weight"]))

    def forward(self, feat_s, logit_s, feat_t, logit_t, target, epoch, index=None, contrast_idx=None):
        return {"cls": F.cross_entropy(logit_s, target),
                "div": (logit_s[:, :2] - logit_t[:, :2]).pow(2).mean(),
                "kd": (logit_s[:, :2] @ self.reg.T - logit_t[:, :2]).pow(2).mean()}


WEIGHTS = {"cls": HYPER["gamma"], "div": HYPER["alpha"], "kd": HYPER["beta"]}


def fixture_params() -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value, requires_grad=True) for name, value in REF["init"].items()}


def split_loss(p: dict[str, torch.Tensor]) -> SplitLoss:
    """The fixture's task and distillation losses (the reference script's formulas), case
    ``separate``: the distillation terms read ``head_a``'s output alone, so ``head_b`` gets
    only the task gradient (case ``sliced``, the engine's, is :class:`TinyMethod`'s)."""
    x, target = torch.tensor(REF["x"]), torch.tensor(REF["target"])
    h = torch.tanh(x @ p["trunk.weight"].T + p["trunk.bias"])
    logit_a = h @ p["head_a.weight"].T
    logit_s = torch.cat([logit_a, h @ p["head_b.weight"].T], dim=1)
    logit_t = x @ torch.tensor(REF["teacher_weight"]).T
    cls = F.cross_entropy(logit_s, target)
    div = (logit_a - logit_t[:, :2]).pow(2).mean()
    kd = (logit_a @ p["reg.weight"].T - logit_t[:, :2]).pow(2).mean()
    return SplitLoss(HYPER["gamma"] * cls, HYPER["alpha"] * div + HYPER["beta"] * kd)


def dot(params, delta: float = HYPER["delta"], weight_decay: float = HYPER["weight_decay"]
        ) -> DistillationOrientedSGD:
    return DistillationOrientedSGD(params, lr=HYPER["lr"], momentum=HYPER["momentum"], delta=delta,
                                   weight_decay=weight_decay)


def assert_step(params: dict[str, torch.Tensor], step: int, case: str = "separate") -> None:
    for name, value in params.items():
        torch.testing.assert_close(value.detach(), torch.tensor(REF["after_step"][case][step][name]),
                                   msg=lambda m: f"{name} after step {step + 1} ({case}): {m}")


# ---- the optimizer ----------------------------------------------------------------------

def test_the_optimizer_equals_the_authors():
    params = fixture_params()
    optimizer = dot(list(params.values()))
    for step in range(HYPER["steps"]):
        optimizer.backward_and_step(split_loss(params))
        assert_step(params, step)
    state = optimizer.state[params["trunk.weight"]]
    assert set(state) == {TASK_BUFFER, DISTILL_BUFFER}
    assert set(optimizer.state[params["head_b.weight"]]) == {TASK_BUFFER}
    assert set(optimizer.state[params["reg.weight"]]) == {DISTILL_BUFFER}
    assert params["unused"] not in optimizer.state
    assert params["unused"].tolist() == REF["init"]["unused"]


def test_its_state_dict_continues_both_momenta():
    """What ``--resume`` restores: both buffers, so a new optimizer continues the same steps."""
    params = fixture_params()
    first = dot(list(params.values()))
    for _ in range(2):
        first.backward_and_step(split_loss(params))
    state = first.state_dict()
    keys = {key for entry in state["state"].values() for key in entry}
    assert keys == {TASK_BUFFER, DISTILL_BUFFER}
    copies = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    second = dot(list(copies.values()))
    second.load_state_dict(state)
    second.backward_and_step(split_loss(copies))
    assert_step(copies, 2)
    sgd = torch.optim.SGD(list(copies.values()), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="not a DOT optimizer's"):
        dot(list(copies.values())).load_state_dict(sgd.state_dict())  # resume: one line, not a crash later


@pytest.mark.parametrize("weight_decay", [0.0, HYPER["weight_decay"]])
def test_delta_zero_is_sgd_but_for_the_authors_first_step_of_a_distillation_only_parameter(weight_decay):
    """With delta 0 DOT is SGD on the summed loss, except what the authors' code does: a
    parameter only the distillation loss reaches (``reg``) skips its weight decay on its first
    step (``lr * wd * p``), which the optimizer keeps to stay equal to their numbers (the
    difference then moves every later step: compared on the first one only)."""
    dot_params, sgd_params = fixture_params(), fixture_params()
    optimizer = dot(list(dot_params.values()), delta=0.0, weight_decay=weight_decay)
    sgd = torch.optim.SGD(list(sgd_params.values()), lr=HYPER["lr"], momentum=HYPER["momentum"],
                          weight_decay=weight_decay)
    reg0 = torch.tensor(REF["init"]["reg.weight"])
    for _ in range(3 if weight_decay == 0 else 1):
        optimizer.backward_and_step(split_loss(dot_params))
        sgd.zero_grad()
        loss = split_loss(sgd_params)
        (loss.task + loss.distill).backward()
        sgd.step()
        for name in NAMES[:5]:
            torch.testing.assert_close(dot_params[name].detach(), sgd_params[name].detach())
        torch.testing.assert_close(dot_params["reg.weight"].detach(),
                                   sgd_params["reg.weight"].detach() + HYPER["lr"] * weight_decay * reg0)


def test_a_grad_scaler_scales_both_losses_and_skips_a_non_finite_step():
    params = fixture_params()
    optimizer = dot(list(params.values()))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=1000)
    for step in range(HYPER["steps"]):
        optimizer.backward_and_step(split_loss(params), scaler)
        assert_step(params, step)  # a power-of-two scale is exact
    before = {name: p.detach().clone() for name, p in params.items()}
    loss = split_loss(params)
    optimizer.backward_and_step(SplitLoss(loss.task, loss.distill * float("inf")), scaler)
    assert all(torch.equal(before[name], p.detach()) for name, p in params.items())  # step skipped
    assert scaler.get_scale() == 2.0 ** 11 and optimizer.held_gradients() == []
    optimizer.backward_and_step(split_loss(params), scaler)  # and the next one steps again
    assert not torch.equal(before["trunk.weight"], params["trunk.weight"].detach())


def test_gradients_are_averaged_over_processes_as_ddp_does():
    """Two processes simulated: a parameter with a gradient on one of them gets half of it,
    one with a gradient on none stays without."""
    a = [torch.zeros(2, requires_grad=True) for _ in range(4)]
    b = [torch.zeros(2, requires_grad=True) for _ in range(4)]
    a[0].grad, a[1].grad = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 4.0])
    b[0].grad, b[2].grad = torch.tensor([3.0, 4.0]), torch.tensor([2.0, 6.0])

    def flat(params):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        return torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([float(p.grad is not None) for p in params])])

    other = flat(b)
    average_gradients(a, lambda t: t + other, world_size=2)
    assert a[0].grad.tolist() == [2.0, 3.0] and a[1].grad.tolist() == [2.0, 2.0]
    assert a[2].grad.tolist() == [1.0, 3.0] and a[3].grad is None


# ---- the engine's step -------------------------------------------------------------------

def optimizer_config() -> StudentOptim:
    """The optimization section ``--dot`` with the fixture's settings makes."""
    return StudentOptim(epochs=1, batch_size=5, learning_rate=HYPER["lr"], base_learning_rate=HYPER["lr"],
                        lr_decay_epochs=(), lr_decay_rate=0.1, weight_decay=HYPER["weight_decay"],
                        momentum=HYPER["momentum"], no_lr_scale=False, world_size=1,
                        schedule_defaults=frozenset(), dot=True, dot_delta=HYPER["delta"])


def engine_parts(dist: DistContext | None = None):
    student, teacher, method = TinyStudent(), TinyTeacher(), TinyMethod()
    step = DistillStep(student, teacher, method, WEIGHTS, dist=dist, dot=True)
    optimizer = make_optimizer([*student.parameters(), *method.parameters()], optimizer_config())
    named = {name: getattr(student, name.replace(".", "_")) for name in NAMES[:5]}
    return step, optimizer, {**named, "reg.weight": method.reg}


def test_the_engine_step_equals_the_authors():
    """train_student's step: the method's ``cls`` term is the task loss, its ``div`` and
    ``kd`` terms the distillation loss, stepped by the optimizer ``--dot`` makes."""
    step, optimizer, params = engine_parts()
    assert isinstance(optimizer, DistillationOrientedSGD)
    batch = Batch(torch.tensor(REF["x"]), torch.tensor(REF["target"]))
    for k in range(HYPER["steps"]):
        output = optimize(lambda: step(batch, 1), optimizer, None, CPU, amp=False)
        assert set(output.terms) == {"cls", "div", "kd"}
        assert_step(params, k, "sliced")


def _two_process_step(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        step, optimizer, params = engine_parts(DistContext(CPU, rank=rank, world_size=2))
        x, target = torch.tensor(REF["x"]), torch.tensor(REF["target"])
        x, target = torch.cat([x, x.flip(0)]), torch.cat([target, target.flip(0)])  # halves of 5
        batch = Batch(x[5 * rank:5 * rank + 5], target[5 * rank:5 * rank + 5])
        for _ in range(HYPER["steps"]):
            optimize(lambda: step(batch, 1), optimizer, None, CPU, amp=False)
        torch.save({name: p.detach() for name, p in params.items()}, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_under_two_processes_each_backward_is_averaged(tmp_path):
    """DDP cannot synchronise DOT's two backward passes: the step runs under ``no_sync`` and
    averages each backward's gradients itself. Two processes, each on half of a batch, end
    where one process ends on the whole batch (each half is the fixture's batch, so the
    reference holds for both)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "params")
    # forked: the processes start with the modules already imported (a fresh interpreter
    # would import torch again, seconds each)
    torch.multiprocessing.start_processes(_two_process_step, args=(port, out), nprocs=2, start_method="fork")
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for name in NAMES:
        assert torch.equal(ranks[0][name], ranks[1][name])
        torch.testing.assert_close(ranks[0][name], torch.tensor(REF["after_step"]["sliced"][-1][name]))


# ---- flags and a digits run --------------------------------------------------------------

def printed_config(capsys, *flags: str, teacher: str = "resnet8") -> dict:
    argv = ["--path_t", f"save/models/{teacher}_vanilla/ckpt_epoch_240.pth", *flags, "--print_config"]
    assert train_student.main(argv) == {}
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_flags(capsys):
    plain = printed_config(capsys)  # records what runs recorded before --dot existed
    assert "dot" not in plain and "dot_delta" not in plain and "_dot_" not in plain["save_folder"]
    cifar = printed_config(capsys, "--dot")
    assert (cifar["dot"], cifar["dot_delta"]) == (True, 0.075) and "_kd_dot_r_" not in cifar["save_folder"]
    assert "_kdrefine_dot_r_" in cifar["save_folder"]
    imagenet = printed_config(capsys, "--dot", "--dataset", "imagenet", "--model_s", "resnet18", teacher="resnet34")
    assert imagenet["dot_delta"] == 0.09
    assert printed_config(capsys, "--dot", "--dot_delta", "0.05")["dot_delta"] == 0.05
    path = ["--path_t", "t.pth"]
    assert exit_message(capsys, train_student.main, [*path, "--dot_delta", "0.1"]) == (
        "error: --dot_delta 0.1 sets the momentum spread of --dot, which is off; add --dot or leave --dot_delta out")
    assert exit_message(capsys, train_student.main, [*path, "--dot", "--dot_delta", "0.2"]) == (
        "error: --dot_delta 0.2 with --momentum 0.9: DOT's task momentum 0.7 must be positive and its "
        "distillation momentum 1.1 below 1; give a smaller --dot_delta")
    for delta in ("-0.1", "0"):
        assert f"--dot_delta {delta}: must lie in (0, 1)" in exit_message(
            capsys, train_student.main, [*path, "--dot", "--dot_delta", delta])
    assert "use --trials_mode shared_teacher" in exit_message(
        capsys, train_student.main, [*path, "--dot", "--trials", "2", "--trials_mode", "stacked"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return teacher_workdir(tmp_path_factory, "dot")


def test_a_run_with_dot_resumes_exactly(workdir, tmp_path, monkeypatch):
    """``--dot`` end to end (small CIFAR-format files, a 2-epoch resnet8 teacher): its
    checkpoint holds both momenta, and a run stopped after epoch 1 and resumed ends where the
    uninterrupted run does."""
    teacher = str(workdir / TEACHER_LAST)
    student = ["--path_t", teacher, "--model_s", "resnet8", "--distill", "kd", "--dot", "--lr_decay_epochs", "1",
               "--data_folder", str(workdir / "data"), *FAST]
    monkeypatch.chdir(tmp_path)
    os.mkdir("whole")
    os.mkdir("parts")
    os.chdir("whole")
    train_student.main([*student, "--epochs", "2"])
    os.chdir(tmp_path / "parts")
    train_student.main([*student, "--epochs", "1"])
    train_student.main([*student, "--epochs", "2", "--resume"])
    folder = os.path.join("save", "student_model", "S_resnet8_T_resnet8_cifar100_kd_dot_r_0.1_a_0.9_b_0.0_1")
    resumed = torch.load(os.path.join(folder, "resnet8_last.pth"), weights_only=True)
    straight = torch.load(tmp_path / "whole" / folder / "resnet8_last.pth", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 2
    assert resumed["config"]["dot"] and resumed["config"]["dot_delta"] == 0.075
    kinds = {key for entry in resumed["optimizer"]["state"].values() for key in entry}
    assert kinds == {TASK_BUFFER, DISTILL_BUFFER}
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    for index, entry in straight["optimizer"]["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(resumed["optimizer"]["state"][index][key], value, rtol=0, atol=0)


def test_trials_with_dot_take_one_step_each():
    """``--trials`` with ``--dot``: one DOT optimizer per trial (shared teacher forward), never
    stacked, also where ``auto`` would stack (CUDA)."""
    parts = []
    for _ in range(2):
        step, optimizer, _ = engine_parts()
        config = SimpleNamespace(optim=optimizer_config(), method=SimpleNamespace(distill="kd"))
        parts.append(StudentParts(config, step.loss.student, step.method, step, train_loader=None))
    for mode, device in (("auto", torch.device("cuda")), ("shared_teacher", CPU)):
        stepping, optimizers = stepping_for(parts, mode, device)
        assert isinstance(stepping, SharedTeacher) and len(optimizers) == 2
        assert all(isinstance(o, DistillationOrientedSGD) for o in optimizers)


def test_summarize_labels_dot_runs_and_shows_kd_dot_numbers(tmp_path, capsys):
    from tests.test_summarize import config, load_summarize

    root = tmp_path / "save" / "student_model"
    for trial, acc in ((1, 75.0), (2, 75.4)):
        folder = root / f"S_resnet8x4_T_resnet32x4_cifar100_kd_dot_r_0.1_a_0.9_b_0.0_{trial}"
        folder.mkdir(parents=True)
        record = {**config("resnet8x4", "resnet32x4", "kd", "AMBB", 3, trial, "cifar100"), "dot": True,
                  "dot_delta": 0.075}
        metrics = {"test_acc": acc, "test_acc_top5": 90.0, "test_loss": 1.0, "epoch": 3, "planned_epochs": 3,
                   "reached_epoch": 3, "config": record, "teacher": {"path": "t.pth", "sha256": "a1" * 32}}
        (folder / "test_last_metrics.json").write_text(json.dumps(metrics))
    assert load_summarize().main([str(root), "--published"]) in (0, None)
    out = capsys.readouterr().out
    assert "| kd (dot) | 75.20 ± 0.28 (2) [75.12, +0.08] |" in out
    assert "DOT (Zhao et al., ICCV 2023): mdistiller README" in out


def test_ctkd_with_dot_trains_on_digits(tmp_path, monkeypatch, capsys):
    """CTKD under DOT on the digits set (two steps of 16) through ``train_student.main``: the run
    folder says both, the checkpoint holds the learned temperature and both momentum buffers of
    the optimizer, and the epoch's mean temperature is in the metrics."""
    teacher = small_digits_teacher(tmp_path, monkeypatch)
    last = train_student.main(["--dataset", "digits", "--path_t", teacher, "--model_s", "resnet8",
                               "--batch_size", "16", "--num_workers", "0", "--seed", "0", "--epochs", "1",
                               "--distill", "ctkd", "--dot"])
    assert 0 <= last["test_acc"] <= 100
    folder = tmp_path / "save" / "student_model" / "S_resnet8_T_resnet8_digits_ctkd_dot_r_0.1_a_0.9_b_0.0_1"
    saved = torch.load(folder / "resnet8_last.pth", weights_only=True)
    assert any("theta" in key for key in saved["method"])
    buffers = [set(state) for state in saved["optimizer"]["state"].values()]
    assert any(TASK_BUFFER in b and DISTILL_BUFFER in b for b in buffers)
    metrics = json.loads((folder / "test_last_metrics.json").read_text())
    assert metrics["epoch"] == 1 and metrics["config"]["dot"] is True
    assert "Traceback" not in capsys.readouterr().err
