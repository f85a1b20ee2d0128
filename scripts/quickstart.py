"""The whole KDrefine pipeline offline, on scikit-learn's bundled digits, in a few minutes on a CPU.

The data set is :data:`dataset.OFFLINE_DATASET` (the built-in set that needs no download).

1. train a teacher (``train_teacher.py``),
2. distill a re-parameterizable student with train_student.py's default method, KDrefine,
3. convert the student to its deploy form (``convert.py``),
4. validate the train form and the deploy form (``validation.py``),
then print a small results table: the teacher's and the student's accuracy at their best epoch
(``_best.pth``) and at their last (``_last.pth``: the teacher distilled from, the student
converted). Each step's output is shown as it runs. Outputs go under ``./save/`` like any run.

Usage: python scripts/quickstart.py [--teacher resnet20] [--student represnet8]
                                    [--teacher_epochs 6] [--student_epochs 10] [--batch_size 32]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataset import OFFLINE_DATASET  # noqa: E402


def schedule(epochs: int) -> str:
    """Decay points at 60%, 75% and 90% of the run: the CRD schedule (150/180/210 of 240), shrunk."""
    points = sorted({max(1, round(epochs * f)) for f in (0.625, 0.75, 0.875)})
    return ",".join(str(p) for p in points)


def run(args: list[str]) -> str:
    """Run one of the project's scripts, printing its output as it comes (line by line, with its
    errors); stop the quickstart if it fails. Returns the output."""
    command = [sys.executable, os.path.join(ROOT, args[0]), *args[1:]]
    print("$ python " + " ".join(args), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the step's lines as it prints them, not in blocks
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, env=env) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    if proc.returncode != 0:
        sys.exit(f"quickstart: step {args[0]} failed (exit code {proc.returncode})")
    return "".join(lines)


def matched(pattern: str, output: str, step: str) -> str:
    """The last match of ``pattern`` (its group) in a step's output."""
    matches = re.findall(pattern, output, re.M)
    if not matches:
        sys.exit(f"quickstart: step {step} printed no line matching {pattern!r}")
    return matches[-1]


def found(pattern: str, output: str, step: str) -> float:
    """The number of the last match of ``pattern`` in a step's output."""
    return float(matched(pattern, output, step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="represnet8")
    parser.add_argument("--teacher_epochs", type=int, default=6)
    parser.add_argument("--student_epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32,
                        help="32 rather than 64: twice the updates per epoch on the small digits set")
    parser.add_argument("--seed", type=int, default=0)
    opt = parser.parse_args()
    # --overwrite: the quickstart starts its own runs afresh each time (earlier ones are moved
    # aside to <folder>.old-<time>, not deleted)
    common = ["--dataset", OFFLINE_DATASET, "--seed", str(opt.seed), "--batch_size", str(opt.batch_size), "--overwrite"]
    start = time.time()

    teacher_log = run(["train_teacher.py", "--model", opt.teacher, "--epochs", str(opt.teacher_epochs),
                       "--lr_decay_epochs", schedule(opt.teacher_epochs), "--trial", "quickstart", *common])
    teacher_best = found(r"best accuracy: ([0-9.]+)", teacher_log, "train_teacher.py")
    teacher_folder = matched(r"; saving to (\S+)$", teacher_log, "train_teacher.py")
    teacher_path = os.path.join(teacher_folder, f"{opt.teacher}_last.pth")
    # train_student.py's default --distill (KDrefine) with its recipe's weights; --learning_rate
    # 0.05, not its published 0.01: that rate is for 240 CIFAR-100 epochs; in 10 short epochs on
    # digits it leaves the student far from converged.
    student_log = run(["train_student.py", "--path_t", teacher_path, "--model_s", opt.student,
         "-r", "0.1", "-a", "0.9", "-b", "0", "--learning_rate", "0.05", "--trial", "quickstart",
         "--epochs", str(opt.student_epochs),
         "--lr_decay_epochs", schedule(opt.student_epochs), *common])
    teacher_last = found(r"teacher .* test accuracy: ([0-9.]+)", student_log, "train_student.py")
    student_best = found(r"best accuracy: ([0-9.]+)", student_log, "train_student.py")
    method = matched(r" with (\S+) \(r=", student_log, "train_student.py")
    folder = matched(r"; saving to (\S+)$", student_log, "train_student.py")
    train_form = os.path.join(folder, f"{opt.student}_last.pth")
    deploy_form = os.path.join(folder, f"{opt.student}_deploy.pth")
    run(["convert.py", "--load", train_form, "--save", deploy_form, "-a", opt.student])
    train_acc = found(r"accuracy: ([0-9.]+)", run(["validation.py", "--model", opt.student, "--model_path",
                      train_form, "--deploy_flag", "False", "--dataset", OFFLINE_DATASET]), "validation.py")
    deploy_acc = found(r"accuracy: ([0-9.]+)", run(["validation.py", "--model", opt.student, "--model_path",
                       deploy_form, "--deploy_flag", "True", "--dataset", OFFLINE_DATASET]), "validation.py")

    print(f"\nquickstart results on {OFFLINE_DATASET} (test split, top-1 %), {time.time() - start:.0f} s in all")
    print("| model | form | checkpoint | accuracy |")
    print("|---|---|---|---|")
    print(f"| teacher {opt.teacher} | plain | best epoch ({opt.teacher}_best.pth) | {teacher_best:.2f} |")
    print(f"| teacher {opt.teacher} | plain | last epoch ({opt.teacher}_last.pth, the one distilled from) "
          f"| {teacher_last:.2f} |")
    print(f"| student {opt.student} ({method}) | train (AMBB branches) | best epoch ({opt.student}_best.pth) "
          f"| {student_best:.2f} |")
    print(f"| student {opt.student} ({method}) | train (AMBB branches) | last epoch ({opt.student}_last.pth) "
          f"| {train_acc:.2f} |")
    print(f"| student {opt.student} ({method}) | deploy (fused) | last epoch, converted ({opt.student}_deploy.pth) "
          f"| {deploy_acc:.2f} |")
    print(f"deploy file: {deploy_form}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("quickstart: interrupted", file=sys.stderr)
        sys.exit(130)
