"""The offline quickstart (digits) learns: teacher and student far above chance (10%) after a few
epochs, and the deploy form scores exactly what the train form scores."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_learns_on_digits(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "quickstart.py"),
                          "--teacher_epochs", "3", "--student_epochs", "8"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = dict(re.findall(r"\| (teacher|student .*?\| (?:train|deploy)).*?\| ([0-9.]+) \|", out.stdout))
    teacher = float(next(v for k, v in rows.items() if k.startswith("teacher")))
    train = float(next(v for k, v in rows.items() if k.endswith("train")))
    deploy = float(next(v for k, v in rows.items() if k.endswith("deploy")))
    assert teacher >= 60.0, out.stdout[-3000:]
    assert train >= 40.0, out.stdout[-3000:]
    assert deploy == train
    assert os.path.isfile(tmp_path / "save" / "student_model" /
                          "S_represnet8_T_resnet20_digits_kdrefine_r_0.1_a_0.9_b_0.0_quickstart" /
                          "represnet8_deploy.pth")


@pytest.mark.slow
def test_quickstart_runs_twice_in_a_row(tmp_path):
    """The quickstart starts its own runs afresh (--overwrite): a second run in the same folder
    works, and the first one's folders are moved aside, not deleted."""
    command = [sys.executable, os.path.join(ROOT, "scripts", "quickstart.py"),
               "--teacher_epochs", "1", "--student_epochs", "1"]
    for _ in range(2):
        out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    students = os.listdir(tmp_path / "save" / "student_model")
    assert len(students) == 2 and sum(".old-" in name for name in students) == 1
