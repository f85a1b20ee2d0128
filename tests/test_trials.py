"""``train_student.py --trials N``: N students in one process against one shared teacher forward,
each trial computing what its separate run computes (same seed, same data order)."""
from __future__ import annotations

import json
import os

import pytest
import torch

import train_student
from helper.trials import split_outputs
from helper.util import data_seed
from tests.cli_helpers import exit_message, student_args, student_folder, teacher_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return teacher_workdir(tmp_path_factory, "trials")


def final_state(trial: str, distill: str = "kdrefine") -> dict[str, torch.Tensor]:
    folder = student_folder(distill=distill, trial=trial)
    return torch.load(os.path.join(folder, "represnet8_last.pth"), weights_only=True)


def metrics(trial: str, distill: str = "kdrefine") -> dict:
    with open(os.path.join(student_folder(distill=distill, trial=trial), "test_last_metrics.json")) as f:
        return json.load(f)


def assert_states_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("distill", ["kdrefine", "crd"])
def test_trials_compute_what_separate_runs_compute(workdir, monkeypatch, distill):
    """Trials 3 and 4 of ``--trials 2 --trial 3 --seed 7`` equal the separate runs ``--trial 3
    --seed 7`` and ``--trial 4 --seed 8``: weights, BN statistics, optimizer state, metrics."""
    monkeypatch.chdir(workdir)
    args = ["--distill", distill, "--nce_k", "64"]
    separate = {}
    for trial, seed in (("3", "7"), ("4", "8")):
        train_student.main(student_args(*args, "--trial", trial) + ["--seed", seed])
        separate[trial] = (final_state(trial, distill), metrics(trial, distill))
    train_student.main(student_args(*args, "--trial", "3", "--trials", "2") + ["--seed", "7"])
    for trial in ("3", "4"):
        state, ref = final_state(trial, distill), separate[trial][0]
        assert_states_close(state["model"], ref["model"])
        assert_states_close(state["method"], ref["method"])
        for k, buf in ref["optimizer"]["state"].items():
            torch.testing.assert_close(state["optimizer"]["state"][k]["momentum_buffer"],
                                       buf["momentum_buffer"], rtol=1e-4, atol=1e-5)
        assert state["epoch"] == 2 and state["config"]["trial"] == trial
        assert metrics(trial, distill)["test_acc"] == pytest.approx(separate[trial][1]["test_acc"], abs=1.0)
    # the two trials are independent runs, not copies
    w3, w4 = final_state("3", distill)["model"], final_state("4", distill)["model"]
    assert not torch.allclose(w3["fc.weight"], w4["fc.weight"])


def test_trials_resume_each_from_its_last_checkpoint(workdir, monkeypatch, capsys):
    """An interrupted ``--trials`` run continues with ``--resume``: every trial from its own
    ``_last.pth``, ending where the uninterrupted run ends."""
    monkeypatch.chdir(workdir)
    args = student_args("--trial", "5", "--trials", "2")
    train_student.main(args)
    straight = {t: final_state(t)["model"] for t in ("5", "6")}
    train_student.main(args[:args.index("--epochs") + 1] + ["1"] + args[args.index("--epochs") + 2:])
    capsys.readouterr()
    train_student.main(args + ["--resume"])
    out = capsys.readouterr().out
    assert out.count("resumed from") == 2 and "trial 5 | epoch   2/2" in out and "trial 6 | epoch   2/2" in out
    for trial in ("5", "6"):
        assert_states_close(final_state(trial)["model"], straight[trial])


def test_a_diverging_trial_stops_alone(workdir, monkeypatch, capsys):
    """Trial 8's loss turns NaN in epoch 2: trial 7 finishes and writes its metrics, trial 8
    keeps its epoch-1 checkpoint and no metrics, and the run exits 2 with one line naming it."""
    monkeypatch.chdir(workdir)
    build = train_student.build_trial

    def build_with_nan(opt, *args, **kwargs):
        trial = build(opt, *args, **kwargs)
        if opt.trial == "8":
            student_loss = trial.step.student_loss

            def poisoned(batch, feat_t, logit_t):
                loss, logits = student_loss(batch, feat_t, logit_t)
                return (loss * float("nan") if trial.step.epoch == 2 else loss), logits
            trial.step.student_loss = poisoned
        return trial

    monkeypatch.setattr(train_student, "build_trial", build_with_nan)
    msg = exit_message(capsys, train_student.main, student_args("--trial", "7", "--trials", "2"))
    assert "trial(s) 8 stopped" in msg and "the other 1 finished" in msg
    assert metrics("7")["epoch"] == 2
    assert not os.path.exists(os.path.join(student_folder(trial="8"), "test_last_metrics.json"))
    assert final_state("8")["epoch"] == 1 and final_state("7")["epoch"] == 2


@pytest.mark.parametrize("argv, fragment", [
    (["--trials", "0"], "--trials must be at least 1"),
    (["--trials", "2", "--trial", "a"], "must then be an integer"),
    (["--trials", "2", "--resume", "x.pth"], "with --trials give --resume alone"),
])
def test_trials_bad_flags_give_one_line(workdir, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(workdir)
    assert fragment in exit_message(capsys, train_student.main, student_args(*argv))


def test_data_seed_follows_seed_then_trial():
    assert data_seed(7, "3") == 7
    assert data_seed(None, "3") == 3 and data_seed(None, "4") == 4
    assert data_seed(None, "ablation") == 0


def test_split_outputs_gives_each_trial_its_rows():
    logits = torch.arange(10.0).view(5, 2)
    feats = [torch.arange(5.0), torch.arange(15.0).view(5, 3)]
    parts = split_outputs(feats, logits, [2, 3])
    assert [p[1].shape[0] for p in parts] == [2, 3]
    assert torch.equal(parts[1][0][1], feats[1][2:]) and torch.equal(parts[0][1], logits[:2])
    assert split_outputs(None, logits, [4, 1])[0][0] is None
