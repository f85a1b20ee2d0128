"""Run-folder naming, scripts/run_trials.py (with a fake training command) and
scripts/summarize.py on generated save trees."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from helper.errors import UserError
from helper.naming import (parse_student_run_name, student_run_name, teacher_arch,
                           teacher_arch_from_path)

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
])
def test_parse_student_run_name(name, expected, known):
    keys = ("model_s", "model_t", "dataset", "distill", "gamma", "alpha", "beta", "trial")
    assert parse_student_run_name(name, known) == dict(zip(keys, expected))


def test_parse_rejects_other_folders():
    for name in ("resnet56_vanilla", "S_x_T_y_r_0.1_a_0.9_b_0.0_1", "S_a_T_b_c_d_r_x_a_1_b_0_1"):
        with pytest.raises(UserError, match="not a student run name"):
            parse_student_run_name(name, KNOWN)


def test_student_run_name_formats_weights_as_floats():
    opt = Namespace(model_s="wrn_16_2", model_t="wrn_40_2", dataset="cifar100", distill="kd",
                    gamma=0.1, alpha=0.9, beta=0, trial="1")
    name = student_run_name(opt)
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

FAKE_TRAIN = """\
import json, os, sys
args = sys.argv[1:]
trial = args[args.index("--trial") + 1]
if os.environ.get("FAKE_FAIL_TRIAL") == trial:
    sys.exit(3)
folder = os.path.join("save", "student_model",
                      "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_" + trial)
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "ran.json"), "w") as f:
    json.dump({"argv": args, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
with open(os.path.join(folder, "test_last_metrics.json"), "w") as f:
    json.dump({"test_acc": 70.0 + int(trial), "test_acc_top5": 90.0, "test_loss": 1.0,
               "epoch": 240}, f)
print("fake training of trial", trial)
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


def fake_command(tmp_path) -> list[str]:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    return [sys.executable, "fake_train.py", "--path_t",
            "save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth", "--model_s", "wrn_16_2",
            "--distill", "kd", "-b", "0", "--trial", "9"]


def read_run(tmp_path, trial: int) -> dict:
    with open(tmp_path / "save" / "student_model" / RUN_NAME.format(trial) / "ran.json") as f:
        return json.load(f)


def test_run_trials_sequential_skips_finished(tmp_path, run_trials):
    done = tmp_path / "save" / "student_model" / RUN_NAME.format(2)
    done.mkdir(parents=True)
    (done / "test_last_metrics.json").write_text(json.dumps({"test_acc": 1.0}))

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
    log = tmp_path / "save" / "student_model" / RUN_NAME.format(3) / "run_trials.log"
    assert "fake training of trial 3" in log.read_text()


def test_run_trials_reports_failures(tmp_path, run_trials, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_TRIAL", "1")
    status, out, _ = run_trials("-n", "2", "--", *fake_command(tmp_path))
    assert status == 1
    assert "1 ran, 0 skipped, 1 failed (trials 1)" in out


def test_run_trials_user_errors(tmp_path, run_trials):
    status, _, err = run_trials("-n", "2", "--", "python", "train_student.py",
                                "--path_t", "t/resnet56_vanilla/ckpt.pth")
    assert status == 2
    assert err == "error: the command needs --model_s (it names the run folder)\n"
    status, _, err = run_trials("-n", "2", "python", "train_student.py")
    assert status == 2 and "after '--'" in err
    status, _, err = run_trials("-n", "2", "--", "python", "t.py", "--model_s", "resnet8",
                                "--path_t", "t/resnet56_vanilla/c.pth", "-r", "x")
    assert status == 2 and "--gamma takes a number" in err


def test_run_trials_dry_run_names_default_weights(tmp_path, run_trials):
    status, out, _ = run_trials("-n", "1", "--dry-run", "--", "python", "train_student.py",
                                "--path_t", "t/resnet110_vanilla/ckpt.pth",
                                "--model_s", "represnet20")
    assert status == 0
    assert "S_represnet20_T_resnet110_cifar100_kdrefine_r_0.1_a_0.9_b_0.0_1" in out
    assert not (tmp_path / "save").exists()


def test_with_trial_replaces_every_form():
    with_trial = load_script("run_trials").with_trial
    assert with_trial(["p", "--trial", "3", "-b", "0", "--trial=4"], 2) == \
        ["p", "-b", "0", "--trial", "2"]


def test_run_trials_cli_exit_status(tmp_path):
    """The real command line: a user error is one line on stderr and exit status 2."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_trials.py"),
                             "-n", "2", "--", "python", "train_student.py"],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr == "error: the command needs --model_s (it names the run folder)\n"


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


def expected_cell(values: list[float]) -> str:
    std = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "—"
    return f"{statistics.fmean(values):.2f} ± {std} ({len(values)})"


def test_summarize_markdown_and_csv(tmp_path, capsys):
    summarize = load_script("summarize")
    folder = make_save_tree(tmp_path)
    csv_path = tmp_path / "table.csv"
    assert summarize.main([folder, "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    kd_wrn = expected_cell([74.0, 75.0, 76.5])
    assert kd_wrn == "75.17 ± 1.26 (3)"
    kd_res = expected_cell([70.5, 70.9])
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0] == "| method | resnet110 → represnet20 | wrn_40_2 → wrn_16_2 |"
    assert table[2] == f"| kd | {kd_res} | {kd_wrn} |"
    assert table[3] == "| kdrefine | 71.99 ± — (1) |  |"
    assert len(table) == 4

    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [["method", "resnet110 → represnet20", "wrn_40_2 → wrn_16_2"],
                    ["kd", kd_res, kd_wrn], ["kdrefine", "71.99 ± — (1)", ""]]


def test_summarize_other_metric_and_several_weights(tmp_path, capsys):
    summarize = load_script("summarize")
    folder = make_save_tree(tmp_path)
    extra = os.path.join(folder, "S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.5_b_0.0_1")
    os.makedirs(extra)
    with open(os.path.join(extra, "test_last_metrics.json"), "w") as f:
        json.dump({"test_acc": 73.0, "test_acc_top5": 94.0, "test_loss": 1.3, "epoch": 240}, f)
    assert summarize.main([folder, "--metric", "test_acc_top5"]) == 0
    out = capsys.readouterr().out
    assert "| kd (r=0.1, a=0.5, b=0.0) |  | 94.00 ± — (1) |" in out
    assert "| kd (r=0.1, a=0.9, b=0.0) | 95.00 ± 0.00 (2) | 95.00 ± 0.00 (3) |" in out


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
