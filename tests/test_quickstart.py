"""The offline quickstart (digits) learns: teacher and student far above chance (10%) after a few
epochs, and the deploy form scores exactly what the train form scores."""
import os
import re
import signal
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
    # its own process group: a run past the timeout is ended with the step it is running
    with subprocess.Popen(quickstart, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    return subprocess.CompletedProcess(quickstart, proc.returncode, stdout, stderr)


def table(stdout: str) -> dict[str, float]:
    """The results table: ``"<model> | <form> | <checkpoint>"`` -> accuracy."""
    rows = re.findall(r"^\| ((?:teacher|student) .*?) \| ([0-9.]+) \|$", stdout, re.M)
    return {label: float(acc) for label, acc in rows}


def results(stdout: str) -> tuple[float, float, float]:
    """Teacher (the last epoch's, distilled from), student train form and student deploy form
    accuracies of the results table, and the table's best-epoch rows checked against the log."""
    rows = table(stdout)
    assert len(rows) == 5, stdout[-3000:]
    teacher_best = next(v for k, v in rows.items() if k.startswith("teacher") and "best epoch" in k)
    teacher = next(v for k, v in rows.items() if k.startswith("teacher") and "last epoch" in k)
    student_best = next(v for k, v in rows.items() if "| train" in k and "best epoch" in k)
    train = next(v for k, v in rows.items() if "| train" in k and "last epoch" in k)
    deploy = next(v for k, v in rows.items() if "| deploy" in k and "last epoch" in k)
    # the best epochs' rows are the "best accuracy" lines of the teacher's and the student's logs
    assert [float(a) for a in re.findall(r"^best accuracy: ([0-9.]+)$", stdout, re.M)] == [teacher_best, student_best]
    assert teacher_best >= teacher and student_best >= train
    return teacher, train, deploy


STEP = """import os, sys, time
print("first line")
for _ in range(400):  # up to 20 s for the quickstart to show the line while this step still runs
    if os.path.exists(sys.argv[1]):
        print("shown while running")
        break
    time.sleep(0.05)
else:
    print("held until the end")
"""


def test_each_step_shows_its_output_as_it_runs(tmp_path):
    """A step's lines reach the quickstart's output while the step runs, not when it ends."""
    step, seen = tmp_path / "step.py", tmp_path / "seen"
    step.write_text(STEP)
    code = "import sys; from scripts.quickstart import run; run(sys.argv[1:])"
    with subprocess.Popen([sys.executable, "-c", code, str(step), str(seen)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline().startswith("$ python ")
        assert proc.stdout.readline() == "first line\n"
        seen.touch()
        assert proc.stdout.read() == "shown while running\n"
    assert proc.returncode == 0


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
