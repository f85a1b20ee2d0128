"""Who may write into a run folder: no silent overwrite, one run at a time.

A fresh run whose folder already holds a run's files (checkpoints, metrics) stops before it
trains, with one line naming the folder and what differs from the recorded configuration,
unless ``--resume`` (continue it) or ``--overwrite`` (start again: the old folder, and its
TensorBoard folder, are moved aside to ``<folder>.old-<time>``, never deleted).

Every output of the run is checked before anything is written (:func:`check_outputs`): the run
folder, its TensorBoard folder, the lock and ``train.log``; a file where a folder should be, a
directory or FIFO where a file should be, a read-only place: one line each.

The lock, ``<folder>.lock`` *beside* the folder (:func:`lock_path`), holds the writer's pid,
host and process start time; it is created complete (written to a temporary file, then
hard-linked into place) or not at all, so a full disk leaves no empty lock. It is held from
before ``--overwrite`` moves the folder aside until the run ends, so no second run can slip
in. A lock whose process has ended, or whose pid now belongs to another program (the start
time differs), is stale and taken over with a note; one that cannot be judged (another host,
no start time to compare) stops the run with one line naming the file to delete if no run
holds it. Stale temporary files of the atomic writer (a crash mid-write) are removed when the
run starts or resumes.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from helper.checkpoint import load_checkpoint, remove_stale_temp_files
from helper.errors import UserError
from helper.logging_utils import LOG_FILE
from helper.provenance import config_differences, describe_differences, load_metrics

#: The lock's suffix: the lock of ``<folder>`` is ``<folder>.lock``, beside it.
LOCK_SUFFIX = ".lock"
#: Files that make a folder "hold a run" (what a fresh run would overwrite).
RUN_FILE_PATTERNS = ("*_last.pth", "*_best.pth", "ckpt_epoch_*.pth", "test_last_metrics.json")


def run_files(folder: str) -> list[str]:
    """The names in ``folder`` that belong to a run (sorted; empty when it has none)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder)
                  if any(fnmatch.fnmatch(n, p) for p in RUN_FILE_PATTERNS))


def check_writable_folder(folder: str, what: str = "save folder") -> None:
    """Create ``folder`` (with its parents) or stop with one line: a path under a file, a
    read-only place, a file where a folder is meant."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"the {what} {folder} is a file, not a folder; move it away or choose "
                        "another path")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the {what} {folder} ({err.strerror}); check the path "
                        "and its permissions") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into the {what} {folder} (permission denied); make it "
                        "writable or run from another directory")


def check_output_file(path: str, flag: str) -> None:
    """Stop with one line, before any work, when the file ``path`` (given as ``flag``) cannot
    be written: a directory, a path under a file, a read-only folder. Missing folders are
    created."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a directory; give a file name, e.g. {os.path.join(path, 'out')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        check_writable_folder(folder, what="folder")
    except UserError as err:
        raise UserError(f"cannot write {flag} {path}: {err}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} exists and is not writable; choose another file")


def recorded_config(folder: str, files: list[str]) -> dict[str, Any] | None:
    """The configuration of the run in ``folder``: its metrics file's, else its checkpoint's."""
    if "test_last_metrics.json" in files:
        try:
            config = load_metrics(os.path.join(folder, "test_last_metrics.json")).get("config")
            if isinstance(config, dict):
                return config
        except (OSError, ValueError):
            pass
    for name in files:
        if name.endswith("_last.pth"):
            try:
                ckpt = load_checkpoint(os.path.join(folder, name))
            except UserError:
                return None
            config = ckpt.get("config") if isinstance(ckpt, dict) else None
            if isinstance(config, dict):
                if "base_learning_rate" in config:
                    config = {**config, "learning_rate": config["base_learning_rate"]}
                return config
    return None


def what_is_there(folder: str, files: list[str], config: Mapping[str, Any] | None) -> str:
    """A short description of the run found in ``folder`` against this command's ``config``."""
    recorded = recorded_config(folder, files)
    shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
    if recorded is None or config is None:
        return f"it holds {shown}"
    keys = set(recorded) & set(config)  # settings added since that run are not differences
    diffs = config_differences({k: recorded[k] for k in keys}, {k: config[k] for k in keys})
    if not diffs:
        return f"it holds {shown} of a run with the same settings"
    return f"it holds {shown} of a run with other settings: " + describe_differences(diffs)


def move_aside(path: str) -> str | None:
    """Rename ``path`` to ``<path>.old-<time>`` (a free name); returns the new name."""
    if not os.path.lexists(path):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = f"{path}.old-{stamp}", 1
    while os.path.lexists(target):
        target, n = f"{path}.old-{stamp}-{n}", n + 1
    os.rename(path, target)
    return target


def _os_reason(err: OSError) -> str:
    """An ``OSError`` in words: a full disk and a quota named as such."""
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno == getattr(errno, "EDQUOT", -1):
        return "disk quota exceeded"
    return err.strerror or str(err) or type(err).__name__


def _kind(path: str) -> str | None:
    """What is at ``path`` (not following a last symlink): None when nothing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "FIFO")):
        if test(mode):
            return kind
    return "special file"


# ---------------------------------------------------------------------------- output paths

def lock_path(folder: str) -> str:
    """``<folder>.lock``: the lock of the run folder ``folder``, beside it, so that it stays
    where it is while ``--overwrite`` moves the folder aside."""
    return os.path.normpath(folder) + LOCK_SUFFIX


def check_outputs(folder: str, tb_folder: str | None) -> None:
    """Every output of a run, before anything is written, or one line: the run folder and the
    TensorBoard folder (created; a file there, a path under a file or a read-only place
    refused), the lock (:func:`lock_path`) and ``train.log`` (something other than a file
    there, or a log that cannot be appended to, refused)."""
    check_writable_folder(folder)
    if tb_folder:
        check_writable_folder(tb_folder, what="TensorBoard folder")
    lock = lock_path(folder)
    kind = _kind(lock)
    if kind not in (None, "file"):
        raise UserError(f"the lock path {lock} is a {kind}, not a lock file; move it away")
    log = os.path.join(folder, LOG_FILE)
    kind = _kind(log)
    if kind not in (None, "file"):
        raise UserError(f"the log {log} is a {kind}, not a file; move it away or choose another "
                        "--trial")
    if kind == "file" and not os.access(log, os.W_OK):
        raise UserError(f"cannot append to the log {log} (permission denied); make it writable")


# ---------------------------------------------------------------------------------- the lock

def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, field 22 of ``/proc/<pid>/stat``),
    as text; None when it cannot be read (the process is gone, or there is no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (OSError, ValueError):
        return None
    after_name = data[data.rfind(b")") + 1:].split()  # the name may hold spaces and ')'
    return after_name[19].decode("ascii", "replace") if len(after_name) > 19 else None


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says: the writer's pid, host and process start time (None: not
    recorded, as in locks of older versions)."""

    pid: int
    host: str
    start: str | None = None

    def line(self) -> str:
        return f"{self.pid} {self.host} {self.start or '-'}\n"


def this_process() -> LockHolder:
    pid = os.getpid()
    return LockHolder(pid, socket.gethostname(), process_start(pid))


def read_lock(path: str) -> LockHolder | None:
    """The holder a lock file names; None when it is unreadable or not a lock of this code."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            text = os.read(fd, 4096).decode("utf-8")
        finally:
            os.close(fd)
        pid_text, host, *start = text.split()
        return LockHolder(int(pid_text), host, start[0] if start and start[0] != "-" else None)
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` may be running here (one that cannot be asked counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def stale_reason(holder: LockHolder | None) -> str | None:
    """Why a lock of ``holder`` is stale, or None while its run may still be writing (and it
    must be respected): a process of this host that has ended, a pid now held by another
    program (another start time), an unreadable lock."""
    if holder is None:
        return "it is unreadable or empty"
    if holder.host != socket.gethostname():
        return None  # another machine's process: cannot tell
    if holder.pid <= 0 or not process_alive(holder.pid):
        return f"its process (pid {holder.pid}) has ended"
    started = process_start(holder.pid)
    if holder.start is not None and started is not None and started != holder.start:
        return f"its pid {holder.pid} now belongs to another program"
    return None


def busy_message(folder: str, path: str, holder: LockHolder) -> str:
    """The line for a lock that is respected: who holds it and what to do, naming the file to
    delete when no run holds it any more."""
    here = holder.host == socket.gethostname()
    line = (f"another run (pid {holder.pid} on {'this machine' if here else holder.host}) is writing "
            f"into {folder}; wait for it to end, or stop it, before starting this one")
    if not here:
        return f"{line}; if no run on {holder.host} writes there any more, delete the lock {path}"
    if holder.start is None or process_start(holder.pid) is None:
        return (f"{line}; if process {holder.pid} is no run of this project (its pid was reused), "
                f"delete the lock {path}")
    return line


def _create_lock(path: str, content: str) -> bool:
    """Create the lock ``path`` holding ``content`` whole, or not at all (a temporary file,
    hard-linked into place; where hard links are not supported, created exclusively and
    removed again when it cannot be written). False when it exists."""
    data = content.encode("utf-8")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o666)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        return _create_exclusive(path, data)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
    except OSError:
        os.close(fd)
        os.remove(path)
        raise
    os.close(fd)
    return True


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def acquire_lock(folder: str) -> str:
    """Take the lock of ``folder`` (:func:`lock_path`) for this process and return its path: a
    stale lock (:func:`stale_reason`) is taken over with a note, a lock held by a run that may
    be writing stops with one line (:func:`busy_message`), and so does a lock that cannot be
    written (a full disk: nothing is left behind)."""
    path = lock_path(folder)
    me = this_process()
    for _ in range(3):
        try:
            if _create_lock(path, me.line()):
                return path
        except OSError as err:
            raise UserError(f"cannot write the lock {path}: {_os_reason(err)}; free some space or fix "
                            "the folder's permissions, then start the run again") from None
        holder = read_lock(path)
        reason = stale_reason(holder)
        if reason is None:
            raise UserError(busy_message(folder, path, holder))
        print(f"note: taking over the stale lock {path}: {reason}")
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    raise UserError(f"cannot take the lock {path}; another run keeps creating it")


def release_lock(path: str) -> None:
    """Remove the lock ``path`` if it is still this process's."""
    if read_lock(path) == this_process():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _refuse_a_second_run(folder: str, files: list[str], config: Mapping[str, Any] | None) -> None:
    raise UserError(f"{folder} already holds a run ({what_is_there(folder, files, config)}); "
                    "pass --resume to continue it, or --overwrite to start again (the old "
                    "files are moved aside, not deleted)")


@contextlib.contextmanager
def claimed(folder: str, tb_folder: str | None, resume: Any, overwrite: bool,
            config: Mapping[str, Any] | None = None, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder`` for one run (see the module doc); ``enabled`` False (ranks other than 0)
    does nothing."""
    if not enabled:
        yield
        return
    if run_files(folder) and not resume and not overwrite:
        _refuse_a_second_run(folder, run_files(folder), config)
    check_outputs(folder, tb_folder)
    lock = acquire_lock(folder)
    try:
        files = run_files(folder)  # again, under the lock
        if files and not resume and not overwrite:
            _refuse_a_second_run(folder, files, config)
        if overwrite and not resume and files:
            moved = move_aside(folder)
            for extra in [tb_folder] if tb_folder else []:
                move_aside(extra)
            print(f"--overwrite: moved the earlier run to {moved}")
            check_outputs(folder, tb_folder)
        remove_stale_temp_files(folder)
        yield
    finally:
        release_lock(lock)
