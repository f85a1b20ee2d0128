"""No silent overwrite, one writer per run folder, metrics always written with their provenance.

The crash windows are hit exactly: the process is stopped (KeyboardInterrupt, as a kill would)
at the moment the metrics file is about to be written, after the final checkpoint.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import train_student
import train_teacher
import helper.logging_utils as logging_utils
import helper.run_folder as run_folder
from helper.errors import UserError, exit_on_user_error
from helper.logging_utils import LOG_FILE, tee_to
from helper.run_folder import acquire_lock, check_outputs, claimed, lock_path
from tests.cli_helpers import FAST, TEACHER_LAST, TEACHER_RUN, exit_message, student_args, teacher_workdir

METRICS = "test_last_metrics.json"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return teacher_workdir(tmp_path_factory, "run_folder")


def folder_of(trial: str, distill: str = "kd", tag: str = "") -> str:
    return os.path.join("save", "student_model",
                        f"S_represnet8_T_resnet8_cifar100_{distill}{tag}_r_0.1_a_0.9_b_0.0_{trial}")


def test_a_second_fresh_run_stops_and_names_the_difference(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    train_student.main(student_args("--distill", "kd", "--trial", "twice"))
    folder = folder_of("twice")
    before = json.load(open(os.path.join(folder, METRICS)))
    capsys.readouterr()
    msg = exit_message(capsys, train_student.main,
                       student_args("--distill", "kd", "--trial", "twice", "--epochs", "1"))
    assert folder in msg and "--resume" in msg and "--overwrite" in msg
    assert "epochs: 2 in the folder, 1 in the command" in msg
    assert json.load(open(os.path.join(folder, METRICS))) == before  # untouched
    msg = exit_message(capsys, train_student.main, student_args("--distill", "kd", "--trial", "twice"))
    assert "same settings" in msg


def test_overwrite_moves_the_old_run_aside(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    train_student.main(student_args("--distill", "kd", "--trial", "over", "--epochs", "1"))
    folder = folder_of("over")
    train_student.main(student_args("--distill", "kd", "--trial", "over", "--overwrite"))
    assert "moved the earlier run to" in capsys.readouterr().out
    assert json.load(open(os.path.join(folder, METRICS)))["epoch"] == 2
    olds = [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(os.path.basename(folder) + ".old-")]
    assert len(olds) == 1
    old = json.load(open(os.path.join(os.path.dirname(folder), olds[0], METRICS)))
    assert old["epoch"] == 1  # kept, not deleted
    tb = os.path.join("save", "student_tensorboards")
    assert any(n.startswith(os.path.basename(folder) + ".old-") for n in os.listdir(tb))


def test_block_types_write_separate_folders(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    args = student_args("--distill", "kd", "--trial", "bt", "--epochs", "1")
    train_student.main(args)
    train_student.main([*args, "-t", "ACB"])
    assert os.path.isfile(os.path.join(folder_of("bt"), METRICS))
    acb = json.load(open(os.path.join(folder_of("bt", tag="_t_ACB"), METRICS)))
    assert acb["config"]["blocktype"] == "ACB"


def test_metrics_carry_provenance(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    train_student.main(student_args("--distill", "kd", "--trial", "prov"))
    metrics = json.load(open(os.path.join(folder_of("prov"), METRICS)))
    assert {"test_acc", "test_acc_top5", "test_loss", "epoch"} <= set(metrics)
    assert metrics["planned_epochs"] == metrics["reached_epoch"] == metrics["epoch"] == 2
    assert metrics["config"]["distill"] == "kd" and metrics["config"]["epochs"] == 2
    assert metrics["config"]["save_folder"] == folder_of("prov")
    import hashlib

    assert metrics["teacher"]["path"] == TEACHER_LAST
    assert metrics["teacher"]["sha256"] == hashlib.sha256(open(TEACHER_LAST, "rb").read()).hexdigest()
    assert 0 <= metrics["teacher"]["test_acc"] <= 100
    assert metrics["versions"]["torch"] == torch.__version__ and metrics["versions"]["project"]
    assert metrics["wall_time_s"] > 0


def killed_at_metrics(monkeypatch):
    """Stop the process as the metrics file is about to be written (after the last checkpoint)."""
    real = train_student.write_json_atomic

    def kill(path, payload):
        if path.endswith(METRICS):
            raise KeyboardInterrupt
        return real(path, payload)

    monkeypatch.setattr(train_student, "write_json_atomic", kill)


@pytest.mark.parametrize("trials", [1, 2])
def test_resume_after_the_final_checkpoint_writes_the_metrics(workdir, monkeypatch, capsys, trials):
    monkeypatch.chdir(workdir)
    trial = f"{10 * trials}"
    args = student_args("--distill", "kd", "--trial", trial, "--trials", str(trials))
    with monkeypatch.context() as patch:
        killed_at_metrics(patch)
        with pytest.raises(SystemExit) as err:
            train_student.main(args)
        assert err.value.code == 130
    folders = [folder_of(str(int(trial) + k)) for k in range(trials)]
    for folder in folders:
        assert os.path.isfile(os.path.join(folder, "represnet8_last.pth"))
        assert not os.path.exists(os.path.join(folder, METRICS))
        assert not os.path.exists(lock_path(folder))  # released on the way out
    capsys.readouterr()
    train_student.main([*args, "--resume"])
    assert "nothing left to train" in capsys.readouterr().out
    for folder in folders:
        metrics = json.load(open(os.path.join(folder, METRICS)))
        assert metrics["reached_epoch"] == metrics["planned_epochs"] == 2


def test_teacher_rerun_stops_and_overwrite_starts_clean(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    args = ["--model", "resnet8", "--epochs", "2", "--lr_decay_epochs", "1", "--save_freq", "1", *FAST]
    msg = exit_message(capsys, train_teacher.main, args)
    assert TEACHER_RUN in msg and "--overwrite" in msg
    train_teacher.main([*args, "--trial", "t2", "--epochs", "1"])
    capsys.readouterr()
    train_teacher.main([*args, "--trial", "t2", "--epochs", "1", "--overwrite"])
    name = TEACHER_RUN.replace("trial_0", "trial_t2")
    folder = os.path.join("save", "models", name)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pth")) == [
        "ckpt_epoch_1.pth", "resnet8_best.pth", "resnet8_last.pth"]
    assert len(os.listdir(os.path.join("save", "teacher_tensorboards", name))) == 1


def test_a_live_lock_stops_a_second_run_and_a_stale_one_is_taken_over(tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(lock_path(folder), "w") as fh:  # a lock of an older version: pid and host
            fh.write(f"{sleeper.pid} {os.uname().nodename}\n")
        with pytest.raises(UserError) as err:
            with claimed(folder, None, resume=None, overwrite=False):
                pass
        assert f"pid {sleeper.pid}" in str(err.value) and "\n" not in str(err.value)
    finally:
        sleeper.kill()
        sleeper.wait()
    with claimed(folder, None, resume=None, overwrite=False):  # its process is gone: stale
        assert open(lock_path(folder)).read().startswith(str(os.getpid()))
    assert not os.path.exists(lock_path(folder))
    acquire_lock(folder)
    os.remove(lock_path(folder))


def test_stale_temporary_files_are_removed_when_a_run_starts(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".tmp_abcd1234.pth").write_bytes(b"half a checkpoint")
    with claimed(str(folder), None, resume="auto", overwrite=False):
        assert not (folder / ".tmp_abcd1234.pth").exists()


def test_an_unwritable_or_impossible_save_folder_stops_at_once(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create"):
        with claimed(str(blocker / "run"), None, resume=None, overwrite=False):
            pass
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access = os.access  # this machine runs tests as root, who may write anywhere: a stand-in

    def no_write(path, mode, **kw):
        return False if str(path) == str(readonly / "run") and mode & os.W_OK else real_access(path, mode, **kw)

    monkeypatched = pytest.MonkeyPatch()
    monkeypatched.setattr(run_folder.os, "access", no_write)
    try:
        with pytest.raises(UserError, match="cannot write into"):
            with claimed(str(readonly / "run"), None, resume=None, overwrite=False):
                pass
    finally:
        monkeypatched.undo()


def test_resume_from_another_architecture_is_one_line(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    msg = exit_message(capsys, train_student.main,
                       student_args("--distill", "kd", "--trial", "arch", "--resume", TEACHER_LAST))
    assert TEACHER_LAST in msg and "resnet8 run" in msg and "represnet8" in msg


def test_the_folder_is_checked_before_the_init_stage(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    args = student_args("--distill", "factor", "--trial", "init", "--epochs", "1", "--init_epochs", "1")
    train_student.main(args)
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        train_student.main(args)
    assert err.value.code == 2
    out, errors = capsys.readouterr()
    assert "init epoch" not in out and "teacher" not in out  # stopped before loading anything
    assert "already holds a run" in errors


def test_output_files_that_cannot_be_written_stop_at_once(tmp_path):
    from helper.run_folder import check_output_file

    with pytest.raises(UserError, match="is a directory"):
        check_output_file(str(tmp_path), "--save")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="--save"):
        check_output_file(str(blocker / "deploy.pth"), "--save")
    check_output_file(str(tmp_path / "new" / "deploy.pth"), "--save")  # missing folders are made
    assert (tmp_path / "new").is_dir()


# ---- one writer: the lock beside the folder ---------------------------------------------------

def a_run_folder(tmp_path) -> str:
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    open(os.path.join(folder, "resnet8_last.pth"), "wb").close()  # what makes it hold a run
    return folder


def test_the_lock_stays_held_while_overwrite_moves_the_folder_aside(tmp_path, monkeypatch, capsys):
    """The issue's race: a resume that starts while --overwrite moves the folder aside is refused
    (before, the lock was dropped for the move and the resume could write into the .old- folder)."""
    folder, tb = a_run_folder(tmp_path), str(tmp_path / "tb" / "run")
    os.makedirs(tb)
    real_move, seen = run_folder.move_aside, []

    def move_with_a_second_claimant(path):
        with pytest.raises(UserError) as err:
            with claimed(folder, tb, resume="auto", overwrite=False):
                pass
        seen.append(str(err.value))
        return real_move(path)

    monkeypatch.setattr(run_folder, "move_aside", move_with_a_second_claimant)
    with claimed(folder, tb, resume=None, overwrite=True):
        assert os.path.isfile(lock_path(folder)) and os.listdir(folder) == []
    assert len(seen) == 2 and all("is writing into" in text for text in seen)  # folder and TensorBoard moves
    old = [n for n in os.listdir(tmp_path) if n.startswith("run.old-")]
    assert len(old) == 1 and os.listdir(tmp_path / old[0]) == ["resnet8_last.pth"]  # no lock went with it
    assert not os.path.exists(lock_path(folder))


def test_stale_locks_are_taken_over_and_a_reused_pid_is_detected(tmp_path, capsys):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    here = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for content, why in ((f"{dead.pid} {here} 123\n", f"its process (pid {dead.pid}) has ended"),
                         (f"{os.getpid()} {here} 1\n", f"its pid {os.getpid()} now belongs to another program"),
                         ("", "it is unreadable or empty")):
        with open(lock_path(folder), "w") as fh:
            fh.write(content)
        with claimed(folder, None, resume=None, overwrite=False):
            assert open(lock_path(folder)).read().split()[:2] == [str(os.getpid()), here]
        assert f"note: taking over the stale lock {lock_path(folder)}: {why}" in capsys.readouterr().out
    with open(lock_path(folder), "w") as fh:  # this very process, started when it says: held
        fh.write(f"{os.getpid()} {here} {run_folder.process_start(os.getpid())}\n")
    with pytest.raises(UserError, match="is writing into"):
        acquire_lock(folder)
    os.remove(lock_path(folder))


def test_a_lock_that_cannot_be_judged_names_the_file_to_delete(tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    for content, where in (("4242 another-host 99\n", "if no run on another-host writes there any more"),
                           (f"{os.getpid()} {socket.gethostname()}\n", "its pid was reused")):
        with open(lock_path(folder), "w") as fh:
            fh.write(content)
        with pytest.raises(UserError) as err:
            with claimed(folder, None, resume=None, overwrite=False):
                pass
        text = str(err.value)
        assert where in text and text.endswith(f"delete the lock {lock_path(folder)}") and "\n" not in text
    os.remove(lock_path(folder))


class FullDisk:
    """A file whose writes fail with ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_a_full_disk_at_the_lock_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch):
    folder = str(tmp_path / "run")

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_folder.os, "write", no_space)
    with pytest.raises(UserError) as err:
        with claimed(folder, None, resume=None, overwrite=False):
            pass
    monkeypatch.undo()
    assert str(err.value) == (f"cannot write the lock {lock_path(folder)}: no space left on the device; free "
                              "some space or fix the folder's permissions, then start the run again")
    assert os.listdir(tmp_path) == ["run"] and os.listdir(folder) == []  # no empty lock, no temporary file


def test_a_full_disk_at_train_log_is_one_line(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "run" / LOG_FILE)
    real_open = open
    monkeypatch.setattr(logging_utils, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    stdout = sys.stdout

    @exit_on_user_error
    def run():
        with tee_to(path):
            print("epoch 1")

    with pytest.raises(SystemExit) as err:
        run()
    assert err.value.code == 2 and sys.stdout is stdout
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: cannot write the log {path}: No space left on device; free some space and "
                     "continue the run with --resume"]


def test_every_output_path_is_checked_before_the_run(tmp_path):
    folder = str(tmp_path / "run")
    tb_file = tmp_path / "tb"
    tb_file.write_text("not a folder")
    with pytest.raises(UserError, match=f"the TensorBoard folder {tb_file} is a file, not a folder"):
        with claimed(folder, str(tb_file), resume=None, overwrite=False):
            pass
    os.makedirs(os.path.join(folder, LOG_FILE))
    with pytest.raises(UserError, match=r"the log .*train.log is a directory, not a file"):
        check_outputs(folder, None)
    os.rmdir(os.path.join(folder, LOG_FILE))
    os.mkfifo(os.path.join(folder, LOG_FILE))
    with pytest.raises(UserError, match="is a FIFO"):
        check_outputs(folder, None)
    os.remove(os.path.join(folder, LOG_FILE))
    os.makedirs(lock_path(folder))
    with pytest.raises(UserError, match="is a directory, not a lock file"):
        check_outputs(folder, None)
    assert not os.path.exists(os.path.join(folder, LOG_FILE))
