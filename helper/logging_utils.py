"""Where progress goes: stdout (a tqdm bar on terminals, printed lines otherwise), a ``train.log``
copy of it in the run folder, and errors on stderr.

* :func:`is_terminal` says whether stdout is a terminal. The loops take it as a parameter
  (``terminal=None`` asks this function), so tests can choose either behaviour.
* :func:`progress_line` formats the per-``--print_freq`` line of piped output (nohup, slurm) in
  RepDistiller's style: ``Epoch: [3][100/782]\\tTime 0.123 (0.130)\\tLoss 2.3456 (2.5678)\\t...``,
  the value of the last interval, then the epoch's running mean in parentheses.
* :func:`tee_to` copies everything printed to stdout into one or more log files (appending, so
  a resumed run continues its log), and the error line when the block fails. The tqdm bar is
  written to :func:`console`, the real stdout, so that its redraws stay out of the log.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
import time
import traceback
from typing import IO, Iterator, Mapping

from helper.errors import UserError


def console() -> IO[str]:
    """The stream stdout writes to, without the log files of :func:`tee_to` (for the tqdm bar)."""
    return getattr(sys.stdout, "console", sys.stdout)


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is a terminal: then progress is a tqdm bar, else
    printed lines."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class StepTimer:
    """Host seconds per step: over the last interval and since the epoch started. Read it after
    a host sync (the meters' read), so that the device's queued work is counted."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.last_step = 0

    def lap(self, step: int) -> tuple[float, float]:
        """``(seconds per step since the previous lap, seconds per step since the start)``."""
        now = time.perf_counter()
        recent = (now - self.last) / max(step - self.last_step, 1)
        mean = (now - self.start) / max(step, 1)
        self.last, self.last_step = now, step
        return recent, mean


def progress_line(epoch: int, step: int, total: int | None, seconds: tuple[float, float],
                  recent: Mapping[str, float], overall: Mapping[str, float], label: str = "") -> str:
    """One RepDistiller-style progress line: ``recent`` is the last interval's loss and
    accuracies, ``overall`` the epoch's so far (accuracies in percent)."""
    of = "?" if total is None else str(total)
    return (f"{label}Epoch: [{epoch}][{step}/{of}]\t"
            f"Time {seconds[0]:.3f} ({seconds[1]:.3f})\t"
            f"Loss {recent['loss']:.4f} ({overall['loss']:.4f})\t"
            f"Acc@1 {recent['acc']:.2f} ({overall['acc']:.2f})\t"
            f"Acc@5 {recent['acc_top5']:.2f} ({overall['acc_top5']:.2f})")


class Tee:
    """A text stream writing to ``console`` and to ``files`` (what :func:`tee_to` puts in
    ``sys.stdout``). Once its files are closed it writes to the console alone."""

    def __init__(self, console: IO[str], files: list[IO[str]]) -> None:
        self.console = console
        self.files = files

    def write(self, text: str) -> int:
        written = self.console.write(text)
        for f in self.files:
            try:
                f.write(text)
            except OSError as err:  # a full disk: one line, and the log is left alone from now
                self.files = [g for g in self.files if g is not f]
                raise UserError(f"cannot write the log {f.name}: {err.strerror or err}; free some space "
                                "and continue the run with --resume") from None
        return written

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.console.flush()
        for f in self.files:
            with contextlib.suppress(OSError):  # reported by the next write
                f.flush()

    def isatty(self) -> bool:
        return is_terminal(self.console)

    def __getattr__(self, name: str):  # encoding, fileno, errors, ...: those of the console
        return getattr(self.console, name)


def error_text(err: BaseException) -> str | None:
    """What the log records of an exception leaving the teed block: the ``error: ...`` line of
    :func:`helper.errors.exit_on_user_error` for user errors, ``interrupted`` for Ctrl-C, the
    traceback otherwise; None for a clean ``SystemExit(0)``."""
    if isinstance(err, UserError):
        return f"error: {err}\n"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted\n"
    if isinstance(err, SystemExit):
        return None if err.code in (None, 0) else f"exit {err.code}\n"
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


@contextlib.contextmanager
def tee_to(*paths: str) -> Iterator[Tee]:
    """Inside the block, stdout is also appended to every file of ``paths`` (their folders are
    created); an exception leaving the block is recorded there too (:func:`error_text`) and
    raised on. Call it on the process that prints (rank 0)."""
    files = []
    for path in paths:
        folder = os.path.dirname(path)
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
            files.append(open(path, "a", encoding="utf-8", buffering=1))
        except OSError as err:
            for f in files:
                f.close()
            raise UserError(f"cannot open the log {path}: {err.strerror or err}; check the folder, "
                            "its permissions and free space") from None
    original = sys.stdout
    tee = Tee(original, files)
    sys.stdout = tee
    try:
        yield tee
    except BaseException as err:
        text = error_text(err)
        if text:
            for f in files:
                with contextlib.suppress(OSError):  # a full disk: the error line goes to stderr alone
                    f.write(text)
        raise
    finally:
        if sys.stdout is tee:
            sys.stdout = original
        tee.files = []
        for f in files:
            with contextlib.suppress(OSError):
                f.close()


LOG_FILE = "train.log"  # in the run folder: what the run printed (rank 0), appended on resume


def add_config_text(writer, config: Mapping | None) -> None:
    """The resolved configuration as the TensorBoard text ``config`` (JSON, indented four spaces
    so that TensorBoard's markdown shows it verbatim); nothing without a writer or config."""
    if writer is None or config is None:
        return
    text = json.dumps(dict(config), indent=2, sort_keys=True, default=str)
    writer.add_text("config", textwrap.indent(text, "    "))
