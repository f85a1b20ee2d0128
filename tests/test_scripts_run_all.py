"""The table scripts (scripts/run_*.sh) run every line even when one fails, list the failed lines
at the end and exit non-zero; ``--help`` prints each script's own usage once; their teachers are
the released layout by default, or the teachers run_cifar_vanilla.sh trains with ``TEACHERS``.

No training: a stand-in ``python`` first on PATH records each line's arguments and fails (or is
"interrupted") on the line chosen by the test. Last, .ci/run runs ``make test`` in a fresh venv.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import train_teacher
from distiller_zoo import method_names
from scripts import table_scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = [script.name for script in table_scripts.scripts()]  # every generated script
#: the README's and the scripts' example for the teachers that run_cifar_vanilla.sh trains
OWN_TEACHERS = "save/models/{t}_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth"

STAND_IN = """#!/bin/sh
# a stand-in for python: record the line, then fail or pause as the test asks
printf '%s\\n' "$*" >> "$CALLS"
case " $* " in
  *" $FAIL_ON "*) echo "error: rigged failure" >&2; exit 3 ;;
  *" $INTERRUPT_ON "*) echo interrupted >&2; exit 130 ;;
  *" $PAUSE_ON "*) touch "$CALLS.paused"; sleep 30 ;;
esac
exit 0
"""


def stand_in_env(tmp_path, **env: str) -> dict[str, str]:
    """This environment with the stand-in python first on PATH, no TEACHER(S) or STUDENT of
    the caller's, and ``env`` on top."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(STAND_IN)
    (bin_dir / "python").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("TEACHER", "TEACHERS", "STUDENT")}
    return {**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CALLS": str(tmp_path / "calls.log"), "FAIL_ON": "(none)", "INTERRUPT_ON": "(none)",
            "PAUSE_ON": "(none)", **env}


def run_script(tmp_path, script: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``scripts/<script>`` in ``tmp_path`` with the stand-in python; the lines it ran."""
    calls = tmp_path / "calls.log"
    calls.unlink(missing_ok=True)
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args], cwd=tmp_path,
                         env=stand_in_env(tmp_path, **env), capture_output=True, text=True, timeout=60)
    return out, calls.read_text().splitlines() if calls.exists() else []


def flag(line: str, name: str) -> str:
    words = line.split()
    return words[words.index(name) + 1]


def test_a_failing_line_does_not_stop_the_others(tmp_path):
    """The last line but one (one line per registered method) fails: the last, after it, still
    runs; the end names it."""
    names = method_names()
    n, failing = len(names), f"--distill {names[-2]}"
    out, calls = run_script(tmp_path, "run_cifar_distill.sh", "--trial", "2", FAIL_ON=failing)
    assert out.returncode == 1, out.stdout + out.stderr
    assert [flag(c, "--distill") for c in calls] == names
    assert len(calls) == n and all(c.endswith("--trial 2") for c in calls)  # flags reach every line
    failed = [line for line in out.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and "(exit 3)" in failed[0] and failing in failed[0], out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: 1 of {n} lines of run_cifar_distill.sh failed")
    assert "error: rigged failure" in out.stderr  # the line's own message is kept


def generated_lines(script: str) -> list[list[str]]:
    """The train_teacher.py / train_student.py lines of a script, as its generator writes them
    (scripts/table_scripts.py, from the experiment files)."""
    made = {s.name: s for s in table_scripts.scripts()}[script]
    return [shlex.split(line)[2:] for line in made.body if line.startswith(("line python ", "run "))]


def student_of(words: list[str]) -> str:
    return words[words.index("--model_s" if "--model_s" in words else "--model") + 1]


@pytest.mark.parametrize("script", ["run_cifar_vanilla.sh", "run_kdrefine.sh", "run_dkd.sh"])
def test_every_line_runs_and_failures_are_counted(tmp_path, script):
    """Every line runs; the lines of the script's most frequent student (teacher) fail and are
    counted."""
    made = generated_lines(script)
    models = [student_of(words) for words in made]
    lines, model = len(made), max(models, key=models.count)
    fail_on = f"{'--model_s' if '--model_s' in made[0] else '--model'} {model}"
    n_failed = models.count(model)
    out, calls = run_script(tmp_path, script)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(calls) == lines and f"all {lines} lines of {script} finished" in out.stdout
    out, calls = run_script(tmp_path, script, FAIL_ON=fail_on)
    assert out.returncode == 1 and len(calls) == lines, out.stderr
    failed = [line for line in out.stderr.splitlines() if line.startswith("failed (exit 3) python ")]
    assert len(failed) == n_failed and all(fail_on in line for line in failed), out.stderr
    assert f"error: {n_failed} of {lines} lines of {script} failed" in out.stderr


def test_an_interrupted_line_stops_the_script(tmp_path):
    """A line that ends as python does on Ctrl-C (exit 130) stops the table there."""
    students = [student_of(words) for words in generated_lines("run_kdrefine.sh")]
    stop = next(k for k, name in enumerate(students) if k >= 2 and name not in students[:k])
    out, calls = run_script(tmp_path, "run_kdrefine.sh", INTERRUPT_ON=f"--model_s {students[stop]}")
    assert out.returncode == 130
    assert [flag(c, "--model_s") for c in calls] == students[:stop + 1]
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"error: interrupted at line {stop + 1} of run_kdrefine.sh")


def as_from_a_terminal() -> None:
    """In the child before exec: SIGINT handled by default and not blocked, as in a terminal's
    shell. A disposition ignored or a mask blocked in the test process (a pytest worker, a thread
    of an earlier test's job runner) is inherited across exec, and bash cannot trap a signal
    that was ignored when it started: it would run every line through the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_stops_the_script(tmp_path):
    """SIGINT to the foreground process group (Ctrl-C) during a line: no later line runs."""
    calls = tmp_path / "calls.log"
    teachers = [student_of(words) for words in generated_lines("run_cifar_vanilla.sh")]
    proc = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "run_cifar_vanilla.sh")], cwd=tmp_path,
                            env=stand_in_env(tmp_path, PAUSE_ON=f"--model {teachers[1]}"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 20
    while not os.path.exists(f"{calls}.paused") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert [flag(c, "--model") for c in calls.read_text().splitlines()] == teachers[:2]
    assert "error: interrupted at line 2 of run_cifar_vanilla.sh" in err


@pytest.mark.parametrize("script", [*TABLES, "fetch_pretrained_teachers.sh"])
@pytest.mark.parametrize("help_flag", ["--help", "-h"])
def test_help_prints_the_scripts_own_usage_once(tmp_path, script, help_flag):
    out, calls = run_script(tmp_path, script, "--trial", "2", help_flag)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert calls == []  # no train_student.py --help per line, no download
    assert out.stdout.count(f"Usage: bash scripts/{script}") == 1, out.stdout
    assert not out.stdout.startswith("#!") and "set -euo" not in out.stdout
    assert os.listdir(tmp_path) == ["bin"]


@pytest.mark.parametrize("script", TABLES[1:])
def test_teachers_default_to_the_fetched_layout(tmp_path, script):
    """Without TEACHERS: RepDistiller's released files, where fetch_pretrained_teachers.sh puts them."""
    out, calls = run_script(tmp_path, script)
    assert out.returncode == 0, out.stderr
    for call in calls:
        assert re.fullmatch(r"\./save/models/\w+_vanilla/ckpt_epoch_240\.pth", flag(call, "--path_t")), call


def teacher_run_file(model: str, capsys) -> str:
    """Where ``train_teacher.py --model MODEL`` (run_cifar_vanilla.sh's line) writes its final
    ``ckpt_epoch_<epochs>.pth``, from its own ``--print_config``."""
    assert train_teacher.main(["--model", model, "--print_config"]) == {}
    config = json.loads(capsys.readouterr().out)
    return os.path.join(config["save_folder"], f"ckpt_epoch_{config['epochs']}.pth")


@pytest.mark.parametrize("script", TABLES[1:])
def test_teachers_pattern_reads_the_teachers_of_run_cifar_vanilla(tmp_path, script, capsys, monkeypatch):
    """TEACHERS as the README and the scripts print it points each line at the file the teacher's
    own run_cifar_vanilla.sh line writes."""
    monkeypatch.chdir(tmp_path)
    _, vanilla = run_script(tmp_path, "run_cifar_vanilla.sh")
    trained = {flag(c, "--model") for c in vanilla}
    out, calls = run_script(tmp_path, script, TEACHERS=OWN_TEACHERS)
    assert out.returncode == 0, out.stderr
    used = {flag(c, "--path_t") for c in calls}
    expected = {teacher_run_file(model, capsys) for model in trained}
    assert used and used <= expected, (used, expected)
    for name in ("README.md", f"scripts/{script}", "scripts/run_cifar_vanilla.sh"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            assert OWN_TEACHERS in f.read(), name


def test_teacher_overrides_the_pattern_in_run_cifar_distill(tmp_path):
    out, calls = run_script(tmp_path, "run_cifar_distill.sh", TEACHER="t/resnet110_x/best.pth",
                            TEACHERS=OWN_TEACHERS, STUDENT="resnet20")
    assert out.returncode == 0, out.stderr
    assert {(flag(c, "--path_t"), flag(c, "--model_s")) for c in calls} == {("t/resnet110_x/best.pth", "resnet20")}


@pytest.mark.parametrize("script", TABLES[1:])
def test_a_pattern_without_the_name_is_refused_before_any_line(tmp_path, script):
    out, calls = run_script(tmp_path, script, TEACHERS="save/models/my_teacher.pth")
    assert out.returncode == 2 and calls == []
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TEACHERS=save/models/my_teacher.pth has no {t}")


def test_ci_runs_make_test_with_the_python_of_a_fresh_venv(tmp_path):
    """.ci/run, in an empty clone, makes .venv and hands its python to `make test`. Stand-ins:
    python3 makes the venv without pip (seconds less), make records how it was called and which
    interpreter it was given."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(os.path.join(ROOT, ".ci", "run"), tmp_path / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {"python3": f'#!/bin/sh\n[ "$1 $2" = "-m venv" ] || exit 9\nshift 2\n'
                            f'exec {shlex.quote(sys.executable)} -m venv --without-pip "$@"\n',
                 "make": '#!/bin/sh\necho "make $*"\nexec "${2#PYTHON=}" -c "import sys; print(sys.prefix)"\n'}
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], cwd="/", env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-2:] == ["make test PYTHON=.venv/bin/python", str(tmp_path / ".venv")]
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert ".venv/" in f.read().split()
