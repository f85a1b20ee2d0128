"""The offline quickstart (digits) learns: teacher and student far above chance (10%) after a few
epochs, and the deploy form scores exactly what the train form scores."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: the learning run's epochs: the fewest that clear the thresholds below with a wide margin
#: (seed 0, one thread: teacher 89%, student 82%; the student needs 4 epochs at the full rate
#: before the schedule decays it, at 4 epochs in all it stays near 36%). The rerun in the same
#: folder uses the fewest possible.
TEACHER_EPOCHS, STUDENT_EPOCHS = 2, 6


def run_quickstart(folder, teacher_epochs: int, student_epochs: int):
    quickstart = [sys.executable, os.path.join(ROOT, "scripts", "quickstart.py"),
                  "--teacher_epochs", str(teacher_epochs), "--student_epochs", str(student_epochs)]
    # one OpenMP thread, as make test gives each process: the other worker keeps the second
    # core busy, and two threads on a shared core wait on each other at every op (measured:
    # a teacher epoch 12 s with one thread, 120 s with two on a loaded machine)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(quickstart, cwd=folder, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def results(stdout: str) -> tuple[float, float, float]:
    """Teacher, student train form and student deploy form accuracies of the results table."""
    rows = dict(re.findall(r"\| (teacher|student .*?\| (?:train|deploy)).*?\| ([0-9.]+) \|", stdout))
    teacher = float(next(v for k, v in rows.items() if k.startswith("teacher")))
    train = float(next(v for k, v in rows.items() if k.endswith("train")))
    deploy = float(next(v for k, v in rows.items() if k.endswith("deploy")))
    return teacher, train, deploy


@pytest.mark.slow
def test_quickstart_learns_on_digits(tmp_path):
    """Run twice in a row in one folder (the real run, then the shortest rerun): the quickstart
    starts its own runs afresh (--overwrite), moving the first run's folders aside, not deleting
    them."""
    out = run_quickstart(tmp_path, TEACHER_EPOCHS, STUDENT_EPOCHS)
    teacher, train, deploy = results(out.stdout)
    assert teacher >= 60.0, out.stdout[-3000:]
    assert train >= 40.0, out.stdout[-3000:]
    assert deploy == train

    rerun = run_quickstart(tmp_path, 1, 1)
    assert results(rerun.stdout)[2] == results(rerun.stdout)[1]
    students = os.listdir(tmp_path / "save" / "student_model")
    assert len(students) == 2 and sum(".old-" in name for name in students) == 1
    assert os.path.isfile(tmp_path / "save" / "student_model" /
                          "S_represnet8_T_resnet20_digits_kdrefine_r_0.1_a_0.9_b_0.0_quickstart" /
                          "represnet8_deploy.pth")
