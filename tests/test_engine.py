"""One loop: every optimizer step of a teacher, a student run and the init stage of two-stage
methods is taken in :func:`engine.fit.fit` → :func:`engine.fit.run_epoch`, three project frames
below the entry script's ``main`` (the plain run reads top to bottom); the trials of ``--trials``
(a shared teacher or stacked students) extend it as :func:`engine.trials.fit_trials` →
:func:`engine.trials.run_trials_epoch` → their stepping."""
from __future__ import annotations

import inspect
import os
from typing import Callable

import pytest
import torch

import train_student
import train_teacher
from engine.distill import build_method_for
from models import model_dict
from tests.cli_helpers import FAST, student_args, teacher_workdir

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(PROJECT, "tests")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Small CIFAR-format files (64 training images: 2 steps of 32 per epoch; the tests stop at
    a first step) and a short resnet8 teacher."""
    return teacher_workdir(tmp_path_factory, "engine", n_train=64)


class Stop(Exception):
    """Raised at the n-th optimizer step, to end the run there."""


def project_frames_below_main(stack: list[inspect.FrameInfo]) -> list[str]:
    """The functions of project code between the entry script's ``main`` and the optimizer
    step (innermost first), leaving out torch's wrappers and this test's recorder."""
    names = [f.function for f in stack]
    main = names.index("main")
    inner = stack[1:main]  # stack[0] is the recorder
    return [f.function for f in inner
            if f.filename.startswith(PROJECT) and not f.filename.startswith(TESTS)]


def record_steps(monkeypatch, stop_after: int | None = None,
                 stop_at: Callable[[list[str]], bool] | None = None) -> list[list[str]]:
    """Patch SGD.step to record the project frames of each call (then step); raise
    :class:`Stop` at call number ``stop_after``, or at the first call whose frames ``stop_at``
    accepts."""
    calls: list[list[str]] = []
    original = torch.optim.SGD.step

    def recording(self, *args, **kwargs):
        calls.append(project_frames_below_main(inspect.stack()))
        if (stop_after is not None and len(calls) >= stop_after) or (stop_at and stop_at(calls[-1])):
            raise Stop
        return original(self, *args, **kwargs)

    recording.hooked = True  # torch's step hooks wrap it otherwise; they are not ours to count
    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    return calls


PLAIN = ["fit", "run_epoch", "optimize"]
TRIALS = ["main_trials", "fit_trials", "run_trials_epoch", "step", "optimize"]


@pytest.mark.parametrize("extra, frames", [([], PLAIN),
                                           (["--trials", "2", "--trials_mode", "shared_teacher"], TRIALS),
                                           (["--trials", "2", "--trials_mode", "stacked"], TRIALS)],
                         ids=["single", "shared_teacher", "stacked"])
def test_student_step_is_three_frames_below_main(workdir, monkeypatch, extra, frames):
    monkeypatch.chdir(workdir)
    calls = record_steps(monkeypatch, stop_after=1)
    with pytest.raises(Stop):
        train_student.main(student_args("--distill", "kd", "--epochs", "1", "--overwrite", *extra))
    assert calls[0][::-1] == frames, calls[0]


def test_teacher_step_is_three_frames_below_main(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    calls = record_steps(monkeypatch, stop_after=1)
    with pytest.raises(Stop):
        train_teacher.main(["--model", "resnet8", "--epochs", "1", "--trial", "frames", *FAST])
    assert calls[0][::-1] == PLAIN, calls[0]


def test_the_init_stage_runs_in_the_same_loop(workdir, monkeypatch):
    """FSP's init stage and its main stage: every step of the init stage and the first of the
    main stage (the run stops there) go through fit and run_epoch."""
    monkeypatch.chdir(workdir)
    calls = record_steps(monkeypatch, stop_at=lambda frames: "run_init_stage" not in frames)
    with pytest.raises(Stop):
        train_student.main(student_args("--distill", "fsp", "--epochs", "1", "--init_epochs", "1",
                                        "--overwrite"))
    init = [c for c in calls if "run_init_stage" in c]
    main_stage = [c for c in calls if "run_init_stage" not in c]
    assert init and main_stage
    for frames in calls:
        assert frames[:3] == PLAIN[::-1], frames


def test_building_a_method_leaves_the_teachers_statistics_alone():
    """The probe batch that gives the method its feature shapes goes through the teacher in eval
    mode even when the caller left it in train mode: its BN statistics stay the file's."""
    config = train_student.parse_option(["--path_t", "t.pth", "--model_t", "resnet8", "--model_s", "resnet8",
                                         "--distill", "hint"])
    torch.manual_seed(0)
    student, teacher = model_dict["resnet8"](num_classes=100), model_dict["resnet8"](num_classes=100)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    build_method_for(config, student, teacher, torch.randn(2, 3, 32, 32), 100)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
