"""Who may write into a run folder: no silent overwrite, one run at a time.

A fresh run whose folder already holds a run's files (checkpoints, metrics) stops before it
trains, with one line naming the folder and what differs from the recorded configuration,
unless ``--resume`` (continue it) or ``--overwrite`` (start again: the old folder, and its
TensorBoard folder, are moved aside to ``<folder>.old-<time>``, never deleted). A lock file
(``.lock``, holding the writer's pid and host) stops a second concurrent run into the same
folder; a stale lock, whose process is gone, is taken over. Stale temporary files of the atomic
writer (a crash mid-write) are removed when the run starts or resumes.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
import time
from typing import Any, Iterator, Mapping

from helper.checkpoint import load_checkpoint, remove_stale_temp_files
from helper.errors import UserError
from helper.provenance import config_differences, describe_differences

LOCK_FILE = ".lock"
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
            with open(os.path.join(folder, "test_last_metrics.json"), encoding="utf-8") as fh:
                config = json.load(fh).get("config")
            if isinstance(config, dict):
                return config
        except (OSError, ValueError, AttributeError):
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
    if not os.path.exists(path):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = f"{path}.old-{stamp}", 1
    while os.path.exists(target):
        target, n = f"{path}.old-{stamp}-{n}", n + 1
    os.rename(path, target)
    return target


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(folder: str) -> str:
    """Create ``folder/.lock`` for this process, taking over a stale one; one line when a live
    process holds it."""
    path = os.path.join(folder, LOCK_FILE)
    me = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                pid, host = holder
                raise UserError(f"another run (pid {pid} on {host}) is writing into {folder}; "
                                "wait for it to end, or stop it, before starting this one")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        return path
    raise UserError(f"cannot take the lock {path}; another run keeps creating it")


def _lock_holder(path: str) -> tuple[int, str] | None:
    """``(pid, host)`` of a live lock holder, None when the lock is stale or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            pid_text, _, host = fh.read().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host and host != socket.gethostname():
        return pid, host  # another machine's process: cannot tell, so respect it
    return (pid, host or "this machine") if _process_alive(pid) and pid != os.getpid() else None


@contextlib.contextmanager
def claimed(folder: str, tb_folder: str | None, resume: Any, overwrite: bool,
            config: Mapping[str, Any] | None = None, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder`` for one run (see the module doc); ``enabled`` False (ranks other than 0)
    does nothing."""
    if not enabled:
        yield
        return
    files = run_files(folder)
    if files and not resume and not overwrite:
        raise UserError(f"{folder} already holds a run ({what_is_there(folder, files, config)}); "
                        "pass --resume to continue it, or --overwrite to start again (the old "
                        "files are moved aside, not deleted)")
    check_writable_folder(folder)
    lock = acquire_lock(folder)
    try:
        if overwrite and not resume and files:
            os.remove(lock)
            moved = move_aside(folder)
            for extra in [tb_folder] if tb_folder else []:
                move_aside(extra)
            print(f"--overwrite: moved the earlier run to {moved}")
            check_writable_folder(folder)
            lock = acquire_lock(folder)
        remove_stale_temp_files(folder)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)
