"""Logs: progress lines on piped stdout (a tqdm bar on terminals), ``train.log`` in the run folder,
and the TensorBoard scalars of the loss terms, of the init stage and the configuration text."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_student
import train_teacher
from helper import logging_utils
from helper.errors import UserError
from engine.fit import LoopSettings, Member, run_epoch
from engine.loops import DeviceMeter
from engine.trainer import Run
from helper.distributed import DistContext
from helper.logging_utils import LOG_FILE, is_terminal, tee_to
from tests.cli_helpers import FAST, student_args, student_folder, teacher_workdir

PIPED_TEACHER = os.path.join("save", "models", "resnet8_cifar100_lr_0.05_decay_0.0005_trial_piped")
LINE = re.compile(r"^Epoch: \[(\d+)\]\[(\d+)/(\d+)\]\tTime \d+\.\d{3} \(\d+\.\d{3}\)\t"
                  r"Loss \d+\.\d{4} \(\d+\.\d{4}\)\tAcc@1 \d+\.\d{2} \(\d+\.\d{2}\)\t"
                  r"Acc@5 \d+\.\d{2} \(\d+\.\d{2}\)$")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Small CIFAR-format files (64 training images: 2 steps of 32 per epoch, a line at step 2)
    and a short resnet8 teacher (students train from it)."""
    return teacher_workdir(tmp_path_factory, "logs", n_train=64)


def events(folder: str) -> EventAccumulator:
    acc = EventAccumulator(folder)
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def config_text(acc: EventAccumulator) -> dict:
    tensor = acc.Tensors("config/text_summary")[0].tensor_proto
    return json.loads(tensor.string_val[0].decode())


def no_bar(text: str) -> bool:
    return "\r" not in text and "it/s" not in text and "s/it" not in text


def test_piped_teacher_run_prints_lines_and_tees_them_to_train_log(workdir, monkeypatch, capsys):
    """A teacher run with stdout captured (not a terminal): a RepDistiller-style line every
    --print_freq steps, no tqdm bar anywhere; train.log holds what was printed, and a resumed
    run appends to it; TensorBoard holds the configuration as text."""
    monkeypatch.chdir(workdir)
    argv = ["--model", "resnet8", "--trial", "piped", "--epochs", "1", "--print_freq", "3",
            "--batch_size", "8", "--device", "cpu", "--num_workers", "0", "--seed", "0"]
    train_teacher.main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("Epoch: ")]
    assert lines and all(LINE.match(line) for line in lines), lines
    steps = [int(LINE.match(line)[2]) for line in lines]
    total = int(LINE.match(lines[0])[3])
    assert steps == list(range(3, total + 1, 3)) == [3, 6] and lines[0].startswith(f"Epoch: [1][3/{total}]\t")
    assert no_bar(captured.out) and no_bar(captured.err)

    log = os.path.join(PIPED_TEACHER, LOG_FILE)
    with open(log, encoding="utf-8") as f:
        first = f.read()
    assert first == captured.out  # everything the run printed, from the headline on
    assert first.startswith("training resnet8 on cifar100") and "best accuracy:" in first

    config = config_text(events(os.path.join("save", "teacher_tensorboards",
                                             os.path.basename(PIPED_TEACHER))))
    assert config["model"] == "resnet8" and config["dataset"] == "cifar100" and config["print_freq"] == 3

    train_teacher.main([*argv[:5], "2", *argv[6:], "--resume"])
    resumed = capsys.readouterr().out
    with open(log, encoding="utf-8") as f:
        both = f.read()
    assert both.startswith(first) and len(both) > len(first)
    assert "Epoch: [2][3/" in both and "Epoch: [2][3/" in resumed


def test_terminal_keeps_the_bar_and_prints_no_lines(capsys):
    """``terminal`` chooses: True shows the tqdm bar (no lines), False prints lines (no bar);
    either way the device sums are read once per --print_freq steps and once at the end."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(4, 3, 2, 2), torch.randint(0, 10, (4,))) for _ in range(10)]

    def compute_loss(batch):
        logits = model(batch.images)
        return torch.nn.functional.cross_entropy(logits, batch.target), logits

    reads = []
    original = DeviceMeter.totals

    def counting(self, dist=None):
        reads.append(1)
        return original(self, dist)

    cpu = torch.device("cpu")
    run = Run(name="m", save_folder="unused", train_modules=[model], eval_model=model,
              optimizer=optimizer, state_modules={})

    def one_epoch(epoch, terminal):
        run_epoch(Member(None, run, loader), lambda batch, epoch: compute_loss(batch), epoch,
                  LoopSettings(print_freq=5, terminal=terminal), DistContext(cpu))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DeviceMeter, "totals", counting)
        one_epoch(1, terminal=True)
        bar = capsys.readouterr()
        assert len(reads) == 3  # steps 5 and 10, then the epoch's result
        one_epoch(2, terminal=False)
        piped = capsys.readouterr()
        assert len(reads) == 6
    assert "Epoch: " not in bar.out + bar.err and "train epoch 1" in bar.out  # the bar, on stdout
    assert [line.split("\t")[0] for line in piped.out.splitlines()] == [
        "Epoch: [2][5/10]", "Epoch: [2][10/10]"]
    assert no_bar(piped.out) and piped.err == ""


def test_is_terminal_follows_the_stream(tmp_path):
    class Tty:
        def isatty(self):
            return True

    assert is_terminal(Tty()) and not is_terminal(open(tmp_path / "f", "w"))
    assert not is_terminal(object())


def test_tee_appends_and_records_the_error_line(tmp_path, capsys):
    path = str(tmp_path / "run" / LOG_FILE)
    stdout = sys.stdout
    with tee_to(path):
        print("first")
        assert logging_utils.console() is stdout
    with pytest.raises(UserError):
        with tee_to(path):
            print("second")
            raise UserError("training loss became nan")
    assert sys.stdout is stdout
    assert open(path).read() == "first\nsecond\nerror: training loss became nan\n"
    assert capsys.readouterr().out == "first\nsecond\n"


def test_student_run_logs_each_loss_term(workdir, monkeypatch, capsys):
    """kd: TensorBoard holds the epoch means of cls, div and kd (unweighted; the weighted sum
    is train_loss) and the resolved configuration; the printed lines are in train.log."""
    monkeypatch.chdir(workdir)
    train_student.main(student_args("--distill", "kd", "--trial", "terms", "-b", "0.5"))
    out = capsys.readouterr().out
    folder = student_folder("kd", b="0.5", trial="terms")
    acc = events(os.path.join("save", "student_tensorboards", os.path.basename(folder)))
    tags = acc.Tags()["scalars"]
    assert {"train_loss_cls", "train_loss_div", "train_loss_kd", "train_loss", "lr"} <= set(tags)
    for epoch in (1, 2):
        cls, div, kd, total = (dict(scalars(acc, t))[epoch] for t in
                               ("train_loss_cls", "train_loss_div", "train_loss_kd", "train_loss"))
        assert total == pytest.approx(0.1 * cls + 0.9 * div + 0.5 * kd, rel=1e-5)
        assert cls > 0 and div > 0
    config = config_text(acc)
    assert config["distill"] == "kd" and config["beta"] == 0.5
    log = open(os.path.join(folder, LOG_FILE)).read()
    printed = [line for line in out.splitlines() if line.startswith("Epoch: [")]
    assert printed and all(line in log.splitlines() for line in printed)
    assert "Epoch: [1][2/2]" in log


def test_init_stage_loss_goes_to_tensorboard(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    train_student.main(["--path_t", os.path.join("save", "models",
                                                 "resnet8_cifar100_lr_0.05_decay_0.0005_trial_0",
                                                 "resnet8_last.pth"),
                        "--model_s", "resnet8", "--epochs", "1", "--distill", "factor",
                        "--init_epochs", "1", *FAST, "--trial", "init"])
    out = capsys.readouterr().out
    assert "init Epoch: [1][2/2]" in out and "init epoch   1/1 | loss " in out
    name = "S_resnet8_T_resnet8_cifar100_factor_r_1.0_a_0.0_b_200.0_init"
    acc = events(os.path.join("save", "student_tensorboards", name))
    (step, value), = scalars(acc, "init_loss")
    assert step == 1 and value > 0
    assert {"train_loss_cls", "train_loss_div", "train_loss_kd"} <= set(acc.Tags()["scalars"])


def test_stacked_trials_log_their_own_terms(workdir, monkeypatch, capsys):
    """Stacked students: each trial's TensorBoard gets its own loss terms, and each trial
    prints its labelled progress lines."""
    monkeypatch.chdir(workdir)
    train_student.main(student_args("--distill", "kdrefine", "--trial", "30", "--trials", "2",
                                    "--trials_mode", "stacked", "--epochs", "1"))
    out = capsys.readouterr().out
    assert "trial 30 | Epoch: [1][2/2]" in out and "trial 31 | Epoch: [1][2/2]" in out
    values = []
    for trial in ("30", "31"):
        folder = student_folder(trial=trial)
        acc = events(os.path.join("save", "student_tensorboards", os.path.basename(folder)))
        terms = {t: dict(scalars(acc, f"train_loss_{t}"))[1] for t in ("cls", "div", "kd")}
        total = dict(scalars(acc, "train_loss"))[1]
        assert total == pytest.approx(0.1 * terms["cls"] + 0.9 * terms["div"], rel=1e-5)
        values.append(terms["cls"])
        assert os.path.isfile(os.path.join(folder, LOG_FILE))
    assert values[0] != values[1]  # each trial's own, not one shared value
