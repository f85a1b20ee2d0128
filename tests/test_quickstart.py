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
    """Run twice in a row in one folder (a short run, then the real one): the quickstart starts
    its own runs afresh (--overwrite), moving the first run's folders aside, not deleting them."""
    quickstart = [sys.executable, os.path.join(ROOT, "scripts", "quickstart.py")]
    # the longest test of the suite: two threads (make test gives each process one), so that it
    # uses the second core once the other worker is done
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = subprocess.run([*quickstart, "--teacher_epochs", "1", "--student_epochs", "1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    out = subprocess.run([*quickstart, "--teacher_epochs", "3", "--student_epochs", "8"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    students = os.listdir(tmp_path / "save" / "student_model")
    assert len(students) == 2 and sum(".old-" in name for name in students) == 1
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

