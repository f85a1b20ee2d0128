"""Run-folder naming, scripts/run_trials.py (with a fake training command) and
scripts/summarize.py on generated save trees."""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

import train_student
from engine.config import config_dict
from engine.trials import trial_configs
from helper.errors import UserError
from helper.naming import (parse_student_run_name, student_run_name, teacher_arch,
                           teacher_arch_from_path)
from helper.provenance import config_differences, result_settings
from tests.guards import deadline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN = ["resnet8", "resnet8x4", "resnet20", "resnet56", "resnet110", "wrn_16_2", "wrn_40_1",
         "wrn_40_2", "represnet20", "represnet8x4", "vgg8", "vgg13", "MobileNetV2", "ResNet50"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ---- naming -------------------------------------------------------------------------------

@pytest.mark.parametrize("known", [KNOWN, []])
@pytest.mark.parametrize("name, expected", [
    ("S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_1",
     ("wrn_16_2", "wrn_40_2", "cifar100", "kd", 0.1, 0.9, 0.0, "1")),
    ("S_represnet20_T_resnet110_cifar100_kdrefine_r_0.1_a_0.9_b_0.0_3",
     ("represnet20", "resnet110", "cifar100", "kdrefine", 0.1, 0.9, 0.0, "3")),
    ("S_represnet8x4_T_resnet8x4_cifar100_crd_r_1.0_a_0.0_b_0.8_12",
     ("represnet8x4", "resnet8x4", "cifar100", "crd", 1.0, 0.0, 0.8, "12")),
    ("S_represnet20_T_resnet110_cifar100_kdrefine_t_ACB_r_0.1_a_0.9_b_0.0_2",
     ("represnet20", "resnet110", "cifar100", "kdrefine", 0.1, 0.9, 0.0, "2", "ACB")),
    ("S_repwrn_16_2_T_wrn_40_2_digits_fsp_t_RepVGG_r_1.0_a_0.0_b_50.0_1",
     ("repwrn_16_2", "wrn_40_2", "digits", "fsp", 1.0, 0.0, 50.0, "1", "RepVGG")),
])
def test_parse_student_run_name(name, expected, known):
    keys = ("model_s", "model_t", "dataset", "distill", "gamma", "alpha", "beta", "trial",
            "blocktype")
    expected = expected if len(expected) == len(keys) else (*expected, "AMBB")
    assert parse_student_run_name(name, known) == dict(zip(keys, expected))


def test_run_names_differ_by_block_type_and_keep_the_default_format():
    names = {bt: student_run_name(**vars(Namespace(model_s="represnet20", model_t="resnet110",
                                            dataset="cifar100", distill="kdrefine", gamma=0.1,
                                            alpha=0.9, beta=0, trial="1", blocktype=bt)))
             for bt in ("AMBB", "ACB", "RepVGG", "base")}
    assert names["AMBB"] == "S_represnet20_T_resnet110_cifar100_kdrefine_r_0.1_a_0.9_b_0.0_1"
    assert len(set(names.values())) == 4
    for bt, name in names.items():
        assert parse_student_run_name(name, KNOWN)["blocktype"] == bt
    ls = Namespace(model_s="resnet20", model_t="resnet56", dataset="cifar100", distill="dkd",
                   gamma=1, alpha=0, beta=1, trial="1", logit_stand=True, blocktype="ACB")
    assert student_run_name(**vars(ls)) == "S_resnet20_T_resnet56_cifar100_dkd_ls_t_ACB_r_1.0_a_0.0_b_1.0_1"
    parsed = parse_student_run_name(student_run_name(**vars(ls)), KNOWN)
    assert (parsed["distill"], parsed["logit_stand"], parsed["blocktype"]) == ("dkd", True, "ACB")


def test_parse_rejects_other_folders():
    for name in ("resnet56_vanilla", "S_x_T_y_r_0.1_a_0.9_b_0.0_1", "S_a_T_b_c_d_r_x_a_1_b_0_1"):
        with pytest.raises(UserError, match="not a student run name"):
            parse_student_run_name(name, KNOWN)


def test_student_run_name_formats_weights_as_floats():
    opt = Namespace(model_s="wrn_16_2", model_t="wrn_40_2", dataset="cifar100", distill="kd",
                    gamma=0.1, alpha=0.9, beta=0, trial="1")
    name = student_run_name(**vars(opt))
    assert name == "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_1"
    assert parse_student_run_name(name, KNOWN)["beta"] == 0.0


def test_teacher_arch_from_folder_and_checkpoint(tmp_path):
    assert teacher_arch_from_path("save/models/resnet56_vanilla/ckpt_epoch_240.pth", KNOWN) \
        == "resnet56"
    wrn = "save/models/wrn_40_2_cifar100_lr_0.05_decay_0.0005_trial_0/wrn_40_2_best.pth"
    assert teacher_arch_from_path(wrn, KNOWN) == "wrn_40_2"
    assert teacher_arch_from_path(wrn, []) == "wrn_40_2"  # RepDistiller's rule without names
    assert teacher_arch_from_path("t/resnet8x4_vanilla/ckpt.pth", KNOWN) == "resnet8x4"
    assert teacher_arch_from_path("t/ResNet50_vanilla/ckpt.pth", KNOWN) == "ResNet50"

    ckpt = tmp_path / "teacher_folder" / "ckpt.pth"
    ckpt.parent.mkdir()
    torch.save({"arch": "resnet110", "model": {}}, ckpt)
    assert teacher_arch(str(ckpt), KNOWN) == "resnet110"
    torch.save({"model": {}}, ckpt)  # no 'arch': the folder name decides
    assert teacher_arch(str(ckpt), KNOWN) == "teacher"


# ---- run_trials ---------------------------------------------------------------------------

# A stand-in for train_student.py: --print_config prints the resolved configuration as one
# JSON line; a run writes <model_s>_last.pth and test_last_metrics.json with provenance.
FAKE_TRAIN = """\
import argparse, hashlib, json, os, sys
p = argparse.ArgumentParser(prog="fake_train.py")
p.add_argument("--path_t", required=True)
p.add_argument("--model_s", required=True)
p.add_argument("--distill", default="kd")
p.add_argument("--dataset", default="cifar100")
p.add_argument("-r", "--gamma", type=float, default=0.1)
p.add_argument("-a", "--alpha", type=float, default=0.9)
p.add_argument("-b", "--beta", type=float, default=0.0)
p.add_argument("--epochs", type=int, default=240)
p.add_argument("--trial", default="1")
p.add_argument("--seed", type=int, default=None)
p.add_argument("--num_workers", type=int, default=8)
p.add_argument("--resume", nargs="?", const="auto", default=None)
p.add_argument("--overwrite", action="store_true")
p.add_argument("--print_config", action="store_true")
p.add_argument("--trials", type=int, default=1)
opt = p.parse_args()
config = vars(opt)
config["model_t"] = os.path.basename(os.path.dirname(opt.path_t)).split("_vanilla")[0]
folder = os.path.join("save", "student_model",
                      "S_{model_s}_T_{model_t}_{dataset}_{distill}_r_{gamma}_a_{alpha}_b_{beta}_{trial}"
                      .format(**config))
if not os.environ.get("FAKE_NO_SAVE_FOLDER"):
    config["save_folder"] = folder
if opt.print_config:
    print("some log line")
    print(json.dumps(config, sort_keys=True))
    sys.exit(0)
if os.environ.get("FAKE_FAIL_TRIAL") == opt.trial:
    sys.exit(3)
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "ran.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
reached = min(opt.epochs, int(os.environ.get("FAKE_STOP_AT", opt.epochs)))
with open(os.path.join(folder, opt.model_s + "_last.pth"), "w") as f:
    f.write("checkpoint")
sha = None
if os.path.isfile(opt.path_t):
    with open(opt.path_t, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
metrics = {"test_acc": 70.0 + int(opt.trial), "test_acc_top5": 90.0, "test_loss": 1.0,
           "epoch": reached, "planned_epochs": opt.epochs, "reached_epoch": reached,
           "config": dict(config, print_config=False),
           "teacher": {"path": opt.path_t, "sha256": sha, "test_acc": 75.0}}
with open(os.path.join(folder, "test_last_metrics.json"), "w") as f:
    json.dump(metrics, f)
print("fake training of trial", opt.trial)
"""
RUN_NAME = "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_{}"


@pytest.fixture
def run_trials(tmp_path, monkeypatch, capfd):
    """Call scripts/run_trials.py's main in ``tmp_path``; return (exit status, stdout, stderr)."""
    main = load_script("run_trials").main
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            status = main(list(args))
        except SystemExit as exc:  # user errors exit 2 through exit_on_user_error
            status = exc.code
        out, err = capfd.readouterr()
        return status, out, err

    return run


def fake_command(tmp_path, *extra: str) -> list[str]:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    return [sys.executable, "fake_train.py", "--path_t",
            "save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth", "--model_s", "wrn_16_2",
            "--distill", "kd", "-b", "0", "--trial", "9", *extra]


def run_dir(tmp_path, trial: int):
    return tmp_path / "save" / "student_model" / RUN_NAME.format(trial)


def read_run(tmp_path, trial: int) -> dict:
    with open(run_dir(tmp_path, trial) / "ran.json") as f:
        return json.load(f)


def test_run_trials_sequential_skips_finished(tmp_path, run_trials):
    done = run_dir(tmp_path, 2)
    done.mkdir(parents=True)
    # an older metrics file (no recorded settings) whose epoch is the command's planned one
    (done / "test_last_metrics.json").write_text(json.dumps({"test_acc": 1.0, "epoch": 240}))

    status, out, _ = run_trials("-n", "3", "--", *fake_command(tmp_path))
    assert status == 0
    assert "trial 2: skipped" in out
    assert "fake training of trial 1" in out  # output stays on the terminal
    assert "2 ran, 1 skipped, 0 failed" in out
    for trial in (1, 3):
        argv = read_run(tmp_path, trial)["argv"]
        assert argv[-2:] == ["--trial", str(trial)] and argv.count("--trial") == 1
        assert read_run(tmp_path, trial)["gpu"] == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert not (done / "ran.json").exists()

    status, out, _ = run_trials("-n", "3", "--", *fake_command(tmp_path))
    assert status == 0 and "0 ran, 3 skipped, 0 failed" in out


def test_run_trials_on_gpus_sets_cuda_visible_devices(tmp_path, run_trials):
    status, out, _ = run_trials("-n", "4", "--gpus", "0,1", "--", *fake_command(tmp_path))
    assert status == 0, out
    gpus = [read_run(tmp_path, t)["gpu"] for t in range(1, 5)]
    assert set(gpus) == {"0", "1"}
    log = run_dir(tmp_path, 3) / "run_trials.log"
    assert "fake training of trial 3" in log.read_text()


def test_run_trials_reports_failures(tmp_path, run_trials, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_TRIAL", "1")
    status, out, _ = run_trials("-n", "2", "--", *fake_command(tmp_path))
    assert status == 1
    assert "1 ran, 0 skipped, 1 failed (trials 1)" in out


def test_run_trials_user_errors(tmp_path, run_trials):
    command = fake_command(tmp_path)
    status, _, err = run_trials("-n", "2", "--", *command[:4])  # no --model_s
    assert status == 2
    assert err == ("error: the command failed with --print_config (exit 2): fake_train.py: "
                   "error: the following arguments are required: --model_s\n")
    status, _, err = run_trials("-n", "2", sys.executable, "fake_train.py")
    assert status == 2 and "after '--'" in err
    status, _, err = run_trials("-n", "2", "--", *command, "-r", "x")
    assert status == 2 and err.count("\n") == 1
    assert "argument -r/--gamma: invalid float value: 'x'" in err
    status, _, err = run_trials("-n", "2", "--", *command, "--trials", "3")
    assert status == 2 and err.count("\n") == 1 and "drop --trials 3" in err
    assert not (tmp_path / "save").exists()


def test_run_trials_missing_program_is_one_line(tmp_path, run_trials):
    status, out, err = run_trials("-n", "2", "--", "./no_such_program", "--model_s", "resnet8")
    assert status == 2 and out == ""
    assert err == "error: cannot run ./no_such_program: no such program\n"
    status, out, err = run_trials("-n", "1", "--", sys.executable, "no_such_script.py")
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("error: the command failed with --print_config (exit 2): ")
    assert "no_such_script.py" in err


def test_run_trials_dry_run_names_default_weights(tmp_path, run_trials):
    """The real train_student.py --print_config names the folder (recipe weights of kdrefine)."""
    status, out, err = run_trials("-n", "1", "--dry-run", "--", sys.executable,
                                  os.path.join(ROOT, "train_student.py"),
                                  "--path_t", "t/resnet110_vanilla/ckpt.pth",
                                  "--model_s", "represnet20")
    assert status == 0, err
    assert ("(saves to save/student_model/"
            "S_represnet20_T_resnet110_cifar100_kdrefine_r_0.1_a_0.9_b_0.0_1)") in out
    assert not (tmp_path / "save").exists()


def test_with_trial_replaces_every_form():
    with_trial = load_script("run_trials").with_trial
    assert with_trial(["p", "--trial", "3", "-b", "0", "--trial=4"], 2) == \
        ["p", "-b", "0", "--trial", "2"]


def test_run_trials_cli_exit_status(tmp_path):
    """The real command line: a user error is one line on stderr and exit status 2."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_trials.py"),
                             "-n", "2", "--", sys.executable, "train_student.py"],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: the command failed with --print_config (exit 2): ")
    assert "train_student.py" in result.stderr
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_trials.py"),
                             "-n", "2", "--", "no_such_program_xyz"],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr == "error: cannot run no_such_program_xyz: no such program\n"


def test_run_trials_resumes_unfinished_and_interrupted(tmp_path, run_trials, monkeypatch):
    monkeypatch.setenv("FAKE_STOP_AT", "1")
    status, out, _ = run_trials("-n", "3", "--", *fake_command(tmp_path, "--epochs", "3"))
    assert status == 0 and "3 ran, 0 skipped" in out
    monkeypatch.delenv("FAKE_STOP_AT")
    (run_dir(tmp_path, 2) / "test_last_metrics.json").unlink()  # killed before the end
    (run_dir(tmp_path, 3) / "wrn_16_2_last.pth").unlink()       # stopped, no checkpoint

    status, out, _ = run_trials("-n", "3", "--", *fake_command(tmp_path, "--epochs", "3"))
    assert status == 0 and "3 ran, 0 skipped, 0 failed" in out
    last = os.path.join("save", "student_model", RUN_NAME.format(1), "wrn_16_2_last.pth")
    assert f"trial 1: unfinished (epoch 1 of 3), continuing from {last}" in out
    assert read_run(tmp_path, 1)["argv"][-3:] == ["--trial", "1", "--resume"]
    assert read_run(tmp_path, 2)["argv"][-3:] == ["--trial", "2", "--resume"]
    assert "trial 3: unfinished (epoch 1 of 3) and no wrn_16_2_last.pth: running it again" in out
    assert read_run(tmp_path, 3)["argv"][-3:] == ["--trial", "3", "--overwrite"]

    status, out, _ = run_trials("-n", "3", "--", *fake_command(tmp_path, "--epochs", "3"))
    assert status == 0 and "0 ran, 3 skipped, 0 failed" in out


def test_run_trials_stops_on_a_different_configuration(tmp_path, run_trials):
    status, _, _ = run_trials("-n", "2", "--", *fake_command(tmp_path, "--epochs", "2"))
    assert status == 0
    before = read_run(tmp_path, 1)
    status, out, err = run_trials("-n", "3", "--", *fake_command(tmp_path))
    assert status == 2 and out == ""
    folder = os.path.join("save", "student_model", RUN_NAME.format(1))
    assert err == (f"error: trial 1: {folder} holds a run of a different configuration: "
                   "epochs: 2 in the folder, 240 in the command; move the folder away or "
                   "change the command (and 1 more trials)\n")
    assert read_run(tmp_path, 1) == before and not run_dir(tmp_path, 3).exists()  # nothing ran

    # settings that do not change results (here --num_workers) do not count
    status, out, _ = run_trials("-n", "2", "--", *fake_command(tmp_path, "--epochs", "2",
                                                               "--num_workers", "2"))
    assert status == 0 and "0 ran, 2 skipped" in out
    # the seed does
    status, _, err = run_trials("-n", "1", "--", *fake_command(tmp_path, "--epochs", "2",
                                                               "--seed", "5"))
    assert status == 2 and "seed: none in the folder, 5 in the command" in err


def test_run_trials_compares_teachers_by_hash(tmp_path, run_trials):
    teacher = tmp_path / "save" / "models" / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"teacher one")
    status, _, _ = run_trials("-n", "1", "--", *fake_command(tmp_path, "--epochs", "1"))
    assert status == 0
    copy = tmp_path / "elsewhere" / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"teacher one")  # the same teacher under another path: same trial
    command = fake_command(tmp_path, "--epochs", "1")
    command[3] = str(copy.relative_to(tmp_path))
    status, out, _ = run_trials("-n", "1", "--", *command)
    assert status == 0 and "0 ran, 1 skipped" in out

    teacher.write_bytes(b"teacher two")
    status, _, err = run_trials("-n", "1", "--", *fake_command(tmp_path, "--epochs", "1"))
    one = hashlib.sha256(b"teacher one").hexdigest()[:12]
    two = hashlib.sha256(b"teacher two").hexdigest()[:12]
    assert status == 2
    assert f"teacher: sha256 {one} in the folder, sha256 {two} in the command" in err


def test_run_trials_without_recorded_settings(tmp_path, run_trials):
    for trial, epoch in ((1, 240), (2, 2), (3, 2)):
        run_dir(tmp_path, trial).mkdir(parents=True)
        (run_dir(tmp_path, trial) / "test_last_metrics.json").write_text(json.dumps(
            {"test_acc": 70.0, "test_acc_top5": 90.0, "test_loss": 1.0, "epoch": epoch}))
    (run_dir(tmp_path, 2) / "wrn_16_2_last.pth").write_text("checkpoint")
    status, _, err = run_trials("-n", "3", "--", *fake_command(tmp_path))
    folder = os.path.join("save", "student_model", RUN_NAME.format(3))
    assert status == 2
    assert err == (f"error: trial 3: {folder} holds test_last_metrics.json of epoch 2 without "
                   "recorded settings and no wrn_16_2_last.pth to resume, but the command "
                   "plans 240 epochs; move the folder away to rerun this trial\n")
    status, out, _ = run_trials("-n", "2", "--", *fake_command(tmp_path))
    assert status == 0 and "1 ran, 1 skipped" in out
    assert "trial 1: skipped" in out
    assert read_run(tmp_path, 2)["argv"][-1] == "--resume"


def test_run_trials_folder_from_run_name_without_save_folder(tmp_path, run_trials,
                                                             monkeypatch):
    monkeypatch.setenv("FAKE_NO_SAVE_FOLDER", "1")
    status, out, _ = run_trials("-n", "2", "--", *fake_command(tmp_path, "--epochs", "1"))
    assert status == 0 and "2 ran" in out
    status, out, _ = run_trials("-n", "2", "--dry-run", "--",
                                *fake_command(tmp_path, "--epochs", "1"))
    assert status == 0 and out.count("skipped") == 2


def test_run_trials_checks_the_checkpoint_it_would_resume(tmp_path, run_trials):
    folder = run_dir(tmp_path, 1)
    folder.mkdir(parents=True)
    torch.save({"epoch": 1, "config": {"model_s": "wrn_16_2", "epochs": 2, "trial": "1",
                                       "learning_rate": 0.4, "base_learning_rate": 0.05}},
               folder / "wrn_16_2_last.pth")
    status, _, err = run_trials("-n", "1", "--", *fake_command(tmp_path, "--epochs", "3"))
    assert status == 2 and err.count("\n") == 1
    assert "epochs: 2 in the checkpoint, 3 in the command" in err
    status, out, _ = run_trials("-n", "1", "--", *fake_command(tmp_path, "--epochs", "2"))
    assert status == 0 and read_run(tmp_path, 1)["argv"][-1] == "--resume"


def test_run_trials_seeds_trial_i_with_seed_plus_i_minus_1(tmp_path, run_trials):
    status, out, _ = run_trials("-n", "3", "--dry_run", "--", *fake_command(tmp_path, "--seed", "0"))
    assert status == 0
    for trial in (1, 2, 3):
        assert f"--trial {trial} --seed {trial - 1}  (saves to" in out
    # unseeded: no seed is added (each trial's data order follows its trial number)
    status, out, _ = run_trials("-n", "2", "--dry_run", "--", *fake_command(tmp_path))
    assert status == 0 and "--seed" not in out
    status, out, _ = run_trials("-n", "3", "--", *fake_command(tmp_path, "--seed=7"))
    assert status == 0 and "3 ran" in out
    for trial in (1, 2, 3):
        argv = read_run(tmp_path, trial)["argv"]
        assert argv[-4:] == ["--trial", str(trial), "--seed", str(6 + trial)]
        assert argv.count("--seed") == 1 and "--seed=7" not in argv


def test_run_trials_makes_the_trials_of_train_student_trials():
    """Trial i of run_trials.py is trial i of ``train_student.py --trial 1 --trials n``: the same
    trial, seed, folder and result-relevant configuration (engine.trials.trial_configs)."""
    argv = ["--path_t", "t.pth", "--model_t", "resnet8", "--model_s", "resnet8", "--seed", "10"]
    commands = load_script("run_trials").trial_commands(["python", "train_student.py", *argv], 3)
    separate = [train_student.parse_option(cmd[2:]) for cmd in commands]
    together = trial_configs(train_student.parse_option([*argv, "--trial", "1", "--trials", "3"]))
    assert [(c.run.trial, c.run.seed) for c in separate] == [("1", 10), ("2", 11), ("3", 12)]
    for one, other in zip(separate, together):
        assert (one.run.trial, one.run.seed, one.save_folder) == \
            (other.run.trial, other.run.seed, other.save_folder)
        assert not config_differences(result_settings(config_dict(one)),
                                      result_settings(config_dict(other)))


def test_run_trials_refuses_two_trials_with_one_seed(tmp_path, run_trials):
    # argparse takes --se for --seed; the runner cannot change that seed: refused, nothing runs
    status, out, err = run_trials("-n", "3", "--", *fake_command(tmp_path, "--se", "5"))
    assert status == 2 and out == ""
    assert err == ("error: trials 1 and 2 would both train with seed 5, which makes them one run "
                   "twice: give the seed as --seed S (trial i then gets S+i-1) or leave it out\n")
    assert not (tmp_path / "save").exists()


def test_run_trials_dry_run_spellings(tmp_path, run_trials):
    for flag in ("--dry_run", "--dry-run"):
        status, out, _ = run_trials("-n", "1", flag, "--", *fake_command(tmp_path))
        assert status == 0 and "trial 1: would run" in out
    status, out, _ = run_trials("--help")
    assert status == 0 and "--dry_run, --dry-run" in out and "[--dry_run]" in out
    assert not (tmp_path / "save").exists()


def test_run_trials_stops_at_a_fifo_named_like_metrics(tmp_path, run_trials):
    folder = run_dir(tmp_path, 1)
    folder.mkdir(parents=True)
    os.mkfifo(folder / "test_last_metrics.json")
    with deadline(60):  # a FIFO opened for reading blocks: fail instead of hanging
        status, _, err = run_trials("-n", "1", "--dry_run", "--", *fake_command(tmp_path))
    assert status == 2 and err.count("\n") == 1
    assert "not a regular file (a FIFO)" in err


# ---- summarize ----------------------------------------------------------------------------

RUNS = {  # run folder -> test_acc
    "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_1": 74.0,
    "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_2": 75.0,
    "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_3": 76.5,
    "S_represnet20_T_resnet110_cifar100_kd_r_0.1_a_0.9_b_0.0_1": 70.5,
    "S_represnet20_T_resnet110_cifar100_kd_r_0.1_a_0.9_b_0.0_2": 70.9,
    "S_represnet20_T_resnet110_cifar100_kdrefine_r_0.1_a_0.9_b_0.0_3": 71.99,
}


def make_save_tree(root) -> str:
    folder = root / "save" / "student_model"
    for name, acc in RUNS.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "test_last_metrics.json").write_text(json.dumps(
            {"test_acc": acc, "test_acc_top5": 95.0, "test_loss": 1.2, "epoch": 240}))
    (folder / "resnet56_vanilla").mkdir()  # not a student run: ignored
    return str(folder)


def expected_cell(values: list[float], mark: str = " †") -> str:
    """A cell as summarize.py prints it; these test files record no settings: marked †."""
    std = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "—"
    return f"{statistics.fmean(values):.2f} ± {std} ({len(values)}){mark}"


def test_summarize_markdown_and_csv(tmp_path, capsys):
    summarize = load_script("summarize")
    folder = make_save_tree(tmp_path)
    csv_path = tmp_path / "table.csv"
    assert summarize.main([folder, "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    kd_wrn = expected_cell([74.0, 75.0, 76.5])
    assert kd_wrn == "75.17 ± 1.26 (3) †"
    kd_res = expected_cell([70.5, 70.9])
    table = [line for line in out.splitlines() if line.startswith("|")]
    # pairs in the published tables' order (KDrefine's: wrn_40_2 → wrn_16_2 first)
    assert table[0] == "| method | wrn_40_2 → wrn_16_2 | resnet110 → represnet20 |"
    assert table[2] == f"| kd | {kd_wrn} | {kd_res} |"
    assert table[3] == "| kdrefine |  | 71.99 ± — (1) † |"
    assert len(table) == 4
    assert "† these metrics files record no settings" in out

    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["dataset", "teacher", "student", "method", "blocktype", "gamma", "alpha",
                       "beta", "setting", "mean", "std", "n", "published", "diff", "checked",
                       "unfinished"]
    expected = [  # one row per cell; published: CRD Table 1 (plain students), KDrefine's row
        ["cifar100", "wrn_40_2", "wrn_16_2", "kd", "AMBB", 0.1, 0.9, 0.0, "",
         statistics.fmean([74.0, 75.0, 76.5]), statistics.stdev([74.0, 75.0, 76.5]), 3,
         74.92, statistics.fmean([74.0, 75.0, 76.5]) - 74.92, 0, 0],
        ["cifar100", "resnet110", "represnet20", "kd", "AMBB", 0.1, 0.9, 0.0, "", 70.7,
         statistics.stdev([70.5, 70.9]), 2, 70.67, 70.7 - 70.67, 0, 0],
        ["cifar100", "resnet110", "represnet20", "kdrefine", "AMBB", 0.1, 0.9, 0.0, "", 71.99,
         "", 1, 71.99, 0.0, 0, 0],
    ]
    assert len(rows) == 1 + len(expected)
    for row, want in zip(rows[1:], expected):
        assert row[:5] == want[:5] and row[8] == want[8]
        for got, value in zip(row[5:8] + row[9:], want[5:8] + want[9:]):
            assert got == "" if value == "" else float(got) == pytest.approx(value, abs=1e-6)


def test_summarize_other_metric_and_several_weights(tmp_path, capsys):
    summarize = load_script("summarize")
    folder = make_save_tree(tmp_path)
    extra = os.path.join(folder, "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.5_b_0.0_1")
    os.makedirs(extra)
    with open(os.path.join(extra, "test_last_metrics.json"), "w") as f:
        json.dump({"test_acc": 73.0, "test_acc_top5": 94.0, "test_loss": 1.3, "epoch": 240}, f)
    assert summarize.main([folder, "--metric", "test_acc_top5"]) == 0
    out = capsys.readouterr().out
    assert "| kd (r=0.1, a=0.5, b=0.0) | 94.00 ± — (1) † |  |" in out
    assert "| kd (r=0.1, a=0.9, b=0.0) | 95.00 ± 0.00 (3) † | 95.00 ± 0.00 (2) † |" in out


def test_summarize_errors(tmp_path, capsys):
    summarize = load_script("summarize")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        summarize.main([str(empty)])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err == (f"error: no test_last_metrics.json with a student run name under {empty}; "
                   "nothing to summarize\n")

    folder = make_save_tree(tmp_path)
    png = tmp_path / "chart.png"
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(SystemExit) as exc:
            summarize.main([folder, "--png", str(png)])
        err = capsys.readouterr().err
        assert exc.value.code == 2
        assert err == ("error: --png needs matplotlib, which is not installed: "
                       "pip install matplotlib\n")
    else:
        assert summarize.main([folder, "--png", str(png)]) == 0
        assert png.stat().st_size > 0
