"""Run a whole results table, described by one experiment file, on this machine or on SLURM.

    python scripts/run_table.py experiments/kdrefine_table.yaml --executor local --dry_run
    python scripts/run_table.py experiments/kdrefine_table.yaml --executor local --max_parallel 2
    python scripts/run_table.py experiments/kdrefine_table.yaml --executor slurm \\
        --partition gpu --gpus_per_job 1 --time 1440 --account myproj --array_parallelism 32
    python scripts/run_table.py experiments/kdrefine_table.yaml --status
    python scripts/run_table.py experiments/kdrefine_table.yaml --summarize

An experiment file (YAML, README "Whole tables") names the rows (teacher -> student pairs), the
columns (methods and their flags), the trials, the data set and per-cell flags or ``skip``.
Every cell and trial expands to one ``train_student.py`` command (``--dry_run`` prints them);
its resolved configuration is what that command's ``--print_config`` prints, computed here in
this process (:func:`train_student.parse_option`), so the run folder of every command is known
before anything runs.

A table whose method, model, block type or data set comes from a plugin (:mod:`helper.plugins`)
names it in the file, ``plugins: [my_method.py]``: a ``.py`` path relative to the experiment
file, or a module name importable from the current directory or ``PYTHONPATH``. The plugins
belong to the table, not to one invocation of this script: they are imported before its columns
are checked, and every command carries them (``--plugin <path from the current directory>``),
so each run records them in its configuration and a rerun finds its finished runs done.
``--plugin`` on this script's own command line is refused with a line saying so.

Jobs go through submitit: ``--executor local`` runs them as local jobs, one per GPU
(``CUDA_VISIBLE_DEVICES``) or ``--max_parallel`` at a time on the CPU; ``--executor slurm``
submits one job array, a job of several nodes or GPUs running ``torchrun`` on each node with
the address and port of submitit's distributed environment. A job that is preempted or reaches
its time limit is requeued by submitit (``checkpoint()``) and continues with ``--resume`` from
the run's ``_last.pth``. A job is one run, or with ``--pack_trials`` the unfinished trials of a
cell trained together (``train_student.py --trials N``: one teacher forward for all).

Re-running the same command submits only what is unfinished (what :mod:`scripts.run_trials`
decides for a trial: a ``test_last_metrics.json`` whose recorded configuration matches is
done, an interrupted run is resumed, a folder holding another configuration is reported and
left alone) and never a cell whose job is still queued or running. Jobs are recorded in
``save/tables/<name>/jobs.json``, each cell's output in ``save/tables/<name>/logs/``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import cloudpickle
import submitit
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_student  # noqa: E402
from dataset import DEFAULT_DATASET  # noqa: E402
from distiller_zoo import method_names  # noqa: E402
from engine.trials import trial_configs  # noqa: E402
from helper.checkpoint import load_checkpoint  # noqa: E402
from helper.errors import UserError, exit_on_user_error  # noqa: E402
from helper.plugins import FLAG as PLUGIN_FLAG, import_plugin, relative_to  # noqa: E402
from helper.run_folder import process_alive  # noqa: E402
from scripts.run_trials import (RESUME, SKIP, TeacherHashes, Trial, base_seed,  # noqa: E402
                                decide, with_trial)
from scripts.summarize import main as summarize_runs  # noqa: E402

PROGRAM = ("python", "train_student.py")  # what --dry_run prints: the line a user types
#: what a job runs (the folder the table was started in need not be the repository's)
TRAIN_STUDENT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "train_student.py")
TABLE_KEYS = {"name", "title", "dataset", "trials", "teachers", "flags", "rows", "columns", "cells",
              "plugins"}
COLUMN_KEYS = {"distill", "flags", "student", "source"}
ROW_KEYS = {"teacher", "student", "rep"}
CELL_KEYS = {"flags", "source", "skip"}
SKIPPED = "skip"
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING",
          "SUSPENDED", "UNKNOWN", "READY"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
FOREVER_MIN = 60 * 24 * 365  # local jobs have no time limit


# ----------------------------------------------------------------------------- the file

@dataclass(frozen=True)
class Table:
    """An experiment file, checked: rows ``"T -> S"`` with their teacher, plain and rep student;
    columns with their ``--distill``, flags, which student and where their values come from;
    per-cell flags or ``skip`` (``cells``) and where each comes from, or why it is skipped
    (``sources``); the ``--plugin`` values of every run (``plugins``, paths from the current
    directory)."""

    path: str
    name: str
    title: str
    dataset: str
    trials: int
    teachers: str
    flags: tuple[str, ...]
    rows: dict[str, dict]
    columns: dict[str, dict]
    cells: dict[tuple[str, str], str]
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()

    def skipped(self, row: str, column: str) -> bool:
        return self.cells.get((row, column), "").strip() == SKIPPED

    def student(self, row: str, column: str) -> str:
        """The student a cell trains: the row's plain one, or its ``rep`` for a rep column."""
        name = self.rows[row].get("rep") if self.columns[column].get("student") == "rep" \
            else self.rows[row]["student"]
        if not name:
            raise UserError(f"{self.path}: column {column} trains the rep student, but row {row} "
                            "names no 'rep'")
        return name

    def cell_flags(self, row: str, column: str) -> tuple[str, ...] | None:
        """The ``train_student.py`` flags of a cell, less ``--path_t`` and ``--trial`` (None for
        a skipped cell): the plugins, student, method, data set, then the column's, the cell's
        and the table's flags."""
        if self.skipped(row, column):
            return None
        column_def = self.columns[column]
        plugins = tuple(flag for name in self.plugins for flag in (PLUGIN_FLAG, name))
        return (*plugins, "--model_s", self.student(row, column), "--distill", column_def["distill"],
                "--dataset", self.dataset, *_split(column_def.get("flags"), column),
                *_split(self.cells.get((row, column), ""), row), *self.flags)

    def teacher_path(self, row: str) -> str:
        return self.teachers.replace("{t}", self.rows[row]["teacher"])


@dataclass(frozen=True)
class Cell:
    """One run of the table: its row, column, trial and ``train_student.py`` flags."""

    row: str
    column: str
    trial: int
    args: tuple[str, ...]

    def command(self, program: tuple[str, ...] = PROGRAM) -> list[str]:
        return [*program, *self.args]

    @property
    def label(self) -> str:
        return f"{self.row} / {self.column} / trial {self.trial}"


def _split(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (str, int, float)):
        raise UserError(f"{where} must be a string of flags, got {value!r}")
    try:
        return tuple(shlex.split(str(value)))
    except ValueError as err:
        raise UserError(f"{where}: {err}") from None


def _mapping(value: object, where: str, keys: set[str] | None = None) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(map(str, value)) - keys) if keys else []
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                        f"{', '.join(sorted(keys))})")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise UserError(f"{where} must be text, got {value!r}")
    return str(value)


def _rows(raw: object, path: str) -> dict[str, dict]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{path}: 'rows' must be a non-empty list of {{teacher: T, student: S}}")
    rows = {}
    for k, row in enumerate(raw, 1):
        row = _mapping(row, f"{path}: row {k}", ROW_KEYS)
        if not all(isinstance(row.get(key), str) for key in ("teacher", "student")):
            raise UserError(f"{path}: row {k} needs 'teacher' and 'student' names")
        name = f"{row['teacher']} -> {row['student']}"
        if name in rows:
            raise UserError(f"{path}: row {k} repeats the row {name}")
        rows[name] = row
    return rows


def _columns(raw: object, path: str) -> dict[str, dict]:
    columns = _mapping(raw, f"{path}: 'columns'")
    if not columns:
        raise UserError(f"{path}: 'columns' is empty")
    for name, column in columns.items():
        column = _mapping(column, f"{path}: column {name}", COLUMN_KEYS)
        if column.get("distill") not in method_names():
            raise UserError(f"{path}: column {name}: 'distill' must be one of "
                            f"{', '.join(method_names())}, got {column.get('distill')!r}")
        if column.get("student", "plain") not in ("plain", "rep"):
            raise UserError(f"{path}: column {name}: 'student' is plain or rep")
        _split(column.get("flags"), f"{path}: column {name} flags")
        if "source" in column:
            _text(column["source"], f"{path}: column {name} source")
    return {str(name): column for name, column in columns.items()}


def _cell(value: object, where: str) -> tuple[str, str]:
    """A cell's flags (or ``skip``) and its source (or why it is skipped): a string of flags,
    ``skip``, ``{flags: ..., source: ...}`` or ``{skip: why}``."""
    if not isinstance(value, dict):
        _split(value, where)
        return str(value), ""
    value = _mapping(value, where, CELL_KEYS)
    if "skip" in value:
        if set(value) != {"skip"}:
            raise UserError(f"{where}: a skipped cell has only 'skip: <why>'")
        return SKIPPED, _text(value["skip"], f"{where} skip")
    if "flags" not in value:
        raise UserError(f"{where}: give 'flags' (and 'source'), or 'skip: <why>'")
    _split(value["flags"], where)
    return str(value["flags"]), _text(value.get("source", ""), f"{where} source")


def _cells(raw: object, path: str, rows: dict, columns: dict
           ) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    cells, sources = {}, {}
    for row, by_column in _mapping(raw or {}, f"{path}: 'cells'").items():
        if row not in rows:
            raise UserError(f"{path}: cells: no row {row!r} (rows: {', '.join(rows)})")
        for column, value in _mapping(by_column, f"{path}: cells: {row}").items():
            if column not in columns:
                raise UserError(f"{path}: cells: {row}: no column {column!r} (columns: "
                                f"{', '.join(columns)})")
            flags, source = _cell(value, f"{path}: cells: {row}: {column}")
            cells[(row, str(column))] = flags
            if source:
                sources[(row, str(column))] = source
    return cells, sources


def load_plugins(raw: object, path: str) -> tuple[str, ...]:
    """Import the file's ``plugins`` (before its columns are checked: a method they register is
    a column's choice); their ``--plugin`` values, a path taken relative to the file."""
    names = [raw] if isinstance(raw, str) else raw if raw is not None else []
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise UserError(f"{path}: 'plugins' must be a list of module names or .py paths "
                        f"(relative to the file), got {raw!r}")
    plugins = tuple(relative_to(name, os.path.dirname(path)) for name in names)
    for name in plugins:
        try:
            import_plugin(name)
        except UserError as err:
            raise UserError(f"{path}: plugins: {err}") from None
    return plugins


def read_yaml(path: str) -> dict:
    """The experiment file as a mapping (PyYAML's safe_load), or one line saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as err:
        raise UserError(f"cannot read the experiment file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML{where}: "
                        f"{getattr(err, 'problem', None) or err}") from None
    return _mapping(raw, path, TABLE_KEYS)


def load_table(path: str, teachers: str | None = None) -> Table:
    """The checked table of ``path``; ``teachers`` replaces the file's teacher pattern."""
    raw = read_yaml(path)
    trials = raw.get("trials", 1)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"{path}: 'trials' must be a positive integer, got {trials!r}")
    pattern = teachers or raw.get("teachers", "save/models/{t}_vanilla/ckpt_epoch_240.pth")
    if not isinstance(pattern, str) or "{t}" not in pattern:
        raise UserError(f"{path}: the teacher pattern {pattern!r} must contain {{t}}, the "
                        "teacher's name")
    plugins = load_plugins(raw.get("plugins"), path)
    rows, columns = _rows(raw.get("rows"), path), _columns(raw.get("columns"), path)
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    cells, sources = _cells(raw.get("cells"), path, rows, columns)
    return Table(path, str(name), _text(raw.get("title", name), f"{path}: title"),
                 str(raw.get("dataset", DEFAULT_DATASET)), trials, pattern,
                 _split(raw.get("flags"), f"{path}: flags"), rows, columns, cells, sources, plugins)


def expand(table: Table) -> list[Cell]:
    """Every run of the table, row by row, column by column, trial by trial. Trial ``i`` gets
    ``--trial i`` and, when the cell's flags give ``--seed S``, ``--seed S+i-1``: the trials,
    seeds and folders of ``scripts/run_trials.py`` and of ``train_student.py --trials``."""
    out = []
    for row in table.rows:
        for column in table.columns:
            flags = table.cell_flags(row, column)
            if flags is None:
                continue
            base = ["--path_t", table.teacher_path(row), *flags]
            seed = base_seed(base)
            out += [Cell(row, column, t, tuple(with_trial(base, t, None if seed is None
                                                          else seed + t - 1)))
                    for t in range(1, table.trials + 1)]
    return out


# ----------------------------------------------------------------------------- plans

@dataclass
class Plan:
    """A cell with its resolved configuration and run folder (a run_trials ``Trial``), what
    to do with it, and its state for ``--status``."""

    cell: Cell
    trial: Trial
    conflict: str | None = None
    state: str = "missing"
    detail: str = ""
    record: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return os.path.basename(os.path.normpath(self.trial.run_folder))


def trial_configs_of(args: list[str], label: str, teachers: dict[str, object]) -> list[dict]:
    """What ``train_student.py ARGS --print_config`` resolves, computed in this process, for
    each trial the command trains (one, or N with ``--trials N``); the teacher file, when
    there, read once for its recorded architecture. A flag the parser refuses is one line
    naming the cell (``label``) and what the parser said."""
    refused = io.StringIO()
    try:
        try:
            with contextlib.redirect_stderr(refused):
                config = train_student.parse_option(list(args))
        finally:  # warnings of a parse that went through reach the terminal
            if not isinstance(sys.exc_info()[1], SystemExit):
                sys.stderr.write(refused.getvalue())
        path = config.model.path_t
        if path not in teachers:
            teachers[path] = load_checkpoint(path) if os.path.isfile(path) else None
        config = train_student.with_teacher(config, teachers[path])
        return [train_student.student_config(c) for c in trial_configs(config)]
    except UserError as err:
        raise UserError(f"cell {label}: {err}") from None
    except SystemExit:
        said = " ".join(refused.getvalue().split()).removeprefix("error: ") or "no message"
        raise UserError(f"cell {label}: train_student.py refuses its flags: {said} (flags: "
                        f"{shlex.join(args)})") from None


def resolved(cell: Cell, teachers: dict[str, object]) -> dict:
    """What ``train_student.py <cell> --print_config`` prints (:func:`trial_configs_of`)."""
    return trial_configs_of(list(cell.args), cell.label, teachers)[0]


def plan(cells: list[Cell]) -> list[Plan]:
    """Each cell's configuration, folder and action (:func:`scripts.run_trials.decide`)."""
    teachers: dict[str, object] = {}
    hashes = TeacherHashes()
    plans, seen = [], {}
    for cell in cells:
        config = resolved(cell, teachers)
        folder = config["save_folder"]
        if folder in seen:
            raise UserError(f"cells {seen[folder]} and {cell.label} would both save to {folder}; "
                            "make their flags differ")
        seen[folder] = cell.label
        trial = Trial(cell.trial, cell.command(), config, folder)
        plans.append(Plan(cell, trial, decide(trial, hashes)))
    return plans


# ----------------------------------------------------------------------------- packing

def packs(cells: list[Cell], actions: list[str]) -> list[list[int]]:
    """``cells`` (by index) in packs: consecutive trials of one cell that share an action."""
    out: list[list[int]] = []
    for k, (cell, action) in enumerate(zip(cells, actions)):
        if out:
            last = out[-1][-1]
            prev = cells[last]
            if ((prev.row, prev.column, prev.trial + 1, actions[last])
                    == (cell.row, cell.column, cell.trial, action)):
                out[-1].append(k)
                continue
        out.append([k])
    return out


def packed_args(cells: list[Cell], action: str = "run") -> list[str]:
    """The flags of one job that trains ``cells`` (consecutive trials of one cell): the first
    trial's, with ``--trials N`` for several (:mod:`engine.trials`: trial ``t+k`` is the run
    of ``--trial t+k``, seed ``S+k``). Resumed together, they step one by one
    (``--trials_mode shared_teacher``), as their checkpoints may be of different epochs,
    which stacked trials cannot continue."""
    args = list(cells[0].args)
    if len(cells) == 1:
        return args
    args += ["--trials", str(len(cells))]
    given = any(a == "--trials_mode" or a.startswith("--trials_mode=") for a in args)
    return args + (["--trials_mode", "shared_teacher"] if action == RESUME and not given else [])


@dataclass
class Unit:
    """What one job runs: one run, or with ``--pack_trials`` the consecutive trials of a cell
    that share an action, trained together by ``train_student.py --trials N``."""

    plans: list[Plan]

    @property
    def action(self) -> str:
        return self.plans[0].trial.action

    @property
    def key(self) -> str:
        return self.plans[0].key

    @property
    def label(self) -> str:
        first, last = self.plans[0].cell, self.plans[-1].cell
        if len(self.plans) == 1:
            return first.label
        return f"{first.row} / {first.column} / trials {first.trial}-{last.trial}"

    @property
    def args(self) -> list[str]:
        return packed_args([p.cell for p in self.plans], self.action)


def units(plans: list[Plan], pack: bool) -> list[Unit]:
    """One unit per run, or with ``pack`` per pack of :func:`packs`, each checked: the trials
    ``train_student.py --trials N`` would train are the plans' own, folder for folder
    (engine.trials refuses what it cannot train together: that is one line naming the cell)."""
    if not pack:
        return [Unit([p]) for p in plans]
    out, teachers = [], {}
    for group in packs([p.cell for p in plans], [p.trial.action for p in plans]):
        unit = Unit([plans[k] for k in group])
        if len(group) > 1:
            folders = [c["save_folder"] for c in trial_configs_of(unit.args, unit.label, teachers)]
            if folders != [p.trial.run_folder for p in unit.plans]:
                raise UserError(f"cell {unit.label}: train_student.py --trials would save to "
                                f"{', '.join(folders)}, not to the runs' folders; run without "
                                "--pack_trials")
        out.append(unit)
    return out


# ----------------------------------------------------------------------------- jobs

def last_log_line(path: str) -> str:
    """The last non-empty line of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def die_with_parent() -> None:
    """In a job's training process, before it starts (``preexec_fn``): on Linux, SIGTERM when
    the job's process ends (``prctl(PR_SET_PDEATHSIG)``), so that a job that submitit cancels
    (SIGINT, then SIGKILL) leaves no training behind that would hold its run folders."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


class CellJob(submitit.helpers.Checkpointable):
    """One job's ``train_student.py`` process (one run, or the packed trials of one cell) as a
    submitit job, its output appended to ``log_path``. ``action``: run, resume or overwrite
    (:mod:`scripts.run_trials`); ``last_paths``: the ``_last.pth`` of each run it trains. When
    the job is preempted or times out, submitit calls :meth:`checkpoint`, which requeues the
    same command with ``--resume`` (``--overwrite`` when it stopped before every run had its
    first ``_last.pth``). A job of several nodes or GPUs runs one task per node, each starting
    ``torchrun`` (``python -m torch.distributed.run``) with its node's rank and the master
    address and port of submitit's :class:`~submitit.helpers.TorchDistributedEnvironment`;
    node ``k > 0`` logs to ``<log>.node<k>``. Nothing of the project is imported at run time
    (the job is pickled by value)."""

    def __init__(self, command: list[str], action: str, last_paths: list[str], log_path: str,
                 cwd: str, nodes: int = 1, gpus: int = 1):
        self.command, self.action, self.last_paths = list(command), action, list(last_paths)
        self.log_path, self.cwd, self.nodes, self.gpus = log_path, cwd, nodes, gpus

    @property
    def distributed(self) -> bool:
        return self.nodes * self.gpus > 1

    def final_command(self) -> list[str]:
        """The command as it runs: ``python`` of this interpreter, the action's flag, and under
        torchrun when the job has several GPUs or nodes."""
        command = list(self.command)
        if command[0] == "python":
            command[0] = sys.executable
        if self.action == "resume":
            every = all(os.path.isfile(os.path.join(self.cwd, p)) for p in self.last_paths)
            command.append("--resume" if every else "--overwrite")
        elif self.action == "overwrite":
            command.append("--overwrite")
        if self.distributed and len(command) > 1 and command[1].endswith(".py"):
            env = submitit.JobEnvironment()
            master = submitit.helpers.TorchDistributedEnvironment()
            command[1:1] = ["-m", "torch.distributed.run", "--nnodes", str(self.nodes),
                            "--nproc_per_node", str(self.gpus), "--node_rank", str(env.node),
                            "--master_addr", master.master_addr,
                            "--master_port", str(master.master_port)]
        return command

    def node_log(self) -> str:
        """This task's log: ``log_path``, or ``<log_path>.node<k>`` on node ``k > 0``."""
        node = submitit.JobEnvironment().node if self.distributed else 0
        return self.log_path if node == 0 else f"{self.log_path}.node{node}"

    def __call__(self) -> str:
        command, log_path = self.final_command(), self.node_log()
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"[run_table] {shlex.join(command)}\n")
            log.flush()
            code = subprocess.run(command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                  check=False, preexec_fn=die_with_parent).returncode
        if code != 0:
            raise RuntimeError(f"exit {code}: {last_log_line(log_path)}")
        return log_path

    def resumed(self) -> CellJob:
        return CellJob(self.command, RESUME, self.last_paths, self.log_path, self.cwd,
                       self.nodes, self.gpus)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self.resumed())


if __name__ != "__main__":  # imported (tests): ship CellJob by value, so a job imports no torch
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


class JobBook:
    """``jobs.json`` of a table's state folder: the job of each cell (by run folder name)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, "jobs.json")
        try:
            with open(self.path, encoding="utf-8") as fh:
                self.jobs: dict[str, dict] = json.load(fh)
        except FileNotFoundError:
            self.jobs = {}
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {self.path} ({err}); move it away (the cells' "
                            "job states are then unknown)") from None

    def log_path(self, unit: Unit) -> str:
        """The job's output: ``logs/<run folder name of its first run>.log``."""
        return os.path.join(self.folder, "logs", unit.key + ".log")

    def record(self, units: list[Unit], **entry) -> None:
        """Record ``entry`` (and the log) as the job of every run of ``units``."""
        for unit in units:
            for plan in unit.plans:
                self.jobs[plan.key] = dict(entry, log=self.log_path(unit))
        os.makedirs(self.folder, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.jobs, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _alive(pid: object) -> bool:
    """Whether a job's recorded ``pid`` (anything read from ``jobs.json``) may still run."""
    return isinstance(pid, int) and pid > 0 and process_alive(pid)


def job_state(entry: dict, book: JobBook) -> str:
    """queued, running, completed (exit 0), cancelled (by an interrupt of the local executor)
    or ended (failed, cancelled on SLURM, lost), for a recorded job."""
    if entry.get("executor") == "slurm":
        job = submitit.SlurmJob(os.path.join(book.folder, "submitit"), str(entry.get("job_id")))
        state = job.state.split()[0].upper() if job.state else "UNKNOWN"
        return "queued" if state in QUEUED else "running" if state in RUNNING else \
            "completed" if state == "COMPLETED" else "ended"
    if entry.get("outcome") == "cancelled":
        return "cancelled"
    if entry.get("job_id") is None:
        return "queued" if _alive(entry.get("owner")) else "ended"
    if _alive(entry.get("pid")) and "outcome" not in entry:
        return "running"
    return "completed" if entry.get("outcome") == "done" else "ended"


def assess(plans: list[Plan], book: JobBook) -> None:
    """Set each plan's state: done, conflict, queued, running, failed or missing."""
    for plan in plans:
        entry = book.jobs.get(plan.key)
        if plan.conflict:
            plan.state, plan.detail = "conflict", plan.conflict
        elif plan.trial.action == SKIP:
            plan.state = "done"
        elif entry is None:
            plan.state, plan.detail = "missing", plan.trial.reason
        else:
            state = job_state(entry, book)
            plan.record = entry
            if state == "completed":  # the job ended well, but its metrics are gone
                plan.state, plan.detail = "missing", plan.trial.reason
            elif state == "cancelled":
                plan.state = "missing"
                plan.detail = "interrupted" + (f"; {plan.trial.reason}" if plan.trial.reason else "")
            elif state == "ended":
                line = last_log_line(entry.get("log", ""))
                plan.state, plan.detail = "failed", line or "(no output)"
            else:
                plan.state, plan.detail = state, f"job {entry.get('job_id') or '-'}"


# ----------------------------------------------------------------------------- executors

def cell_job(unit: Unit, book: JobBook, program: tuple[str, ...], nodes: int = 1,
             gpus: int = 1) -> CellJob:
    return CellJob([*program, *unit.args], unit.action, [p.trial.last_path for p in unit.plans],
                   book.log_path(unit), os.getcwd(), nodes, gpus)


def local_slots(gpus: str | None, max_parallel: int) -> list[int | None]:
    """One slot per GPU (``--gpus``, else every visible CUDA device), else ``max_parallel``
    CPU slots."""
    if gpus is None:
        ids = list(range(torch.cuda.device_count()))
    else:
        try:
            ids = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus takes comma-separated GPU ids such as 0,1; got {gpus!r}") \
                from None
    return list(ids) if ids else [None] * max_parallel


def run_local(todo: list[Unit], book: JobBook, slots: list[int | None],
              program: tuple[str, ...], poll_s: float = 0.2) -> list[Unit]:
    """Run the jobs as submitit local jobs, one per slot at a time; return the failed ones."""
    executor = submitit.LocalExecutor(folder=os.path.join(book.folder, "submitit"))
    executor.update_parameters(timeout_min=FOREVER_MIN)
    book.record(todo, executor="local", job_id=None, owner=os.getpid())
    pending, free, running, failed = list(todo), list(slots), {}, []
    try:
        while pending or running:
            while pending and free:
                with interrupts_deferred():  # a job started is a job recorded
                    unit, slot = pending.pop(0), free.pop(0)
                    gpus = {"gpus_per_node": 0} if slot is None else \
                        {"gpus_per_node": 1, "visible_gpus": [slot]}
                    executor.update_parameters(**gpus)
                    job = executor.submit(cell_job(unit, book, program))
                    running[job] = (unit, slot)
                    book.record([unit], executor="local", job_id=job.job_id, pid=int(job.job_id))
                print(f"[run_table] started {unit.label}"
                      f"{'' if slot is None else f' on GPU {slot}'}: {book.log_path(unit)}",
                      flush=True)
            ended = [job for job in running if job.done()]
            for job in ended:
                with interrupts_deferred():
                    unit, slot = running.pop(job)
                    free.append(slot)
                    error = job.exception()
                    book.record([unit], **dict(book.jobs[unit.key],
                                               outcome="failed" if error else "done"))
                print(f"[run_table] {'FAILED' if error else 'done'} {unit.label}"
                      f"{': ' + last_log_line(book.log_path(unit)) if error else ''}", flush=True)
                failed += [unit] if error else []
            if not ended:
                time.sleep(poll_s)
    finally:  # left only on an interrupt or error: stop what is still training
        stop_jobs(running, pending, book)
    return failed


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) during the block takes effect when the block is done, so that the job
    book never misses a job that was started (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)


def stop_jobs(running: dict, pending: list[Unit], book: JobBook, wait_s: float = 15.0) -> None:
    """Cancel the running jobs (submitit sends SIGINT, then SIGKILL, to their processes), wait
    for them to end, and record them and the jobs that never started as cancelled: their runs
    are missing again (an interrupted one continues with ``--resume`` next time)."""
    for job in running:
        job.cancel(check=False)
    deadline = time.monotonic() + wait_s
    while any(not job.done() for job in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for unit in [unit for unit, _ in running.values()] + pending:
        book.record([unit], **dict(book.jobs.get(unit.key, {}), outcome="cancelled"))


def submit_slurm(todo: list[Unit], book: JobBook, args: argparse.Namespace,
                 program: tuple[str, ...], name: str) -> list[str]:
    """Submit the jobs as one SLURM job array (submitit): one task per node, each with
    ``--gpus_per_job`` GPUs (torchrun across them, :class:`CellJob`); returns the job ids."""
    try:
        executor = submitit.SlurmExecutor(folder=os.path.join(book.folder, "submitit"),
                                          max_num_timeout=args.max_requeues)
    except RuntimeError as err:  # no srun: not on a SLURM cluster
        raise UserError(f"--executor slurm: {err}") from None
    params = {"job_name": f"table_{name}", "time": args.time, "nodes": args.nodes,
              "ntasks_per_node": 1, "array_parallelism": args.array_parallelism,
              "signal_delay_s": 120, "additional_parameters": {"requeue": True}}
    if args.gpus_per_job:
        params["gpus_per_node"] = args.gpus_per_job
    if args.cpus_per_job:
        params["cpus_per_task"] = args.cpus_per_job
    params.update({k: v for k in ("partition", "account") if (v := getattr(args, k))})
    executor.update_parameters(**params)
    jobs = []
    try:
        with executor.batch():
            for unit in todo:
                jobs.append(executor.submit(cell_job(unit, book, program, args.nodes,
                                                     max(1, args.gpus_per_job))))
    except (submitit.core.utils.FailedSubmissionError, OSError) as err:
        raise UserError(f"sbatch refused the table's jobs: {str(err).strip().splitlines()[-1]}") \
            from None
    for unit, job in zip(todo, jobs):
        book.record([unit], executor="slurm", job_id=job.job_id)
    return [job.job_id for job in jobs]


# ----------------------------------------------------------------------------- outputs

def print_status(plans: list[Plan]) -> None:
    """One line per run (state, cell, detail), then the count of each state."""
    for plan in plans:
        detail = f"  {plan.detail}" if plan.detail and plan.state != "done" else ""
        print(f"{plan.state:<8} {plan.cell.label}{detail}")
    counts = {s: sum(p.state == s for p in plans)
              for s in ("done", "running", "queued", "failed", "missing", "conflict")}
    print(", ".join(f"{s} {n}" for s, n in counts.items()) + f" (of {len(plans)} runs)")


def published_dataset() -> str | None:
    """The data set of ``scripts/published_results.json`` (the numbers ``--published`` shows)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published_results.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None


def summarize(table: Table, plans: list[Plan], book: JobBook) -> int:
    """scripts/summarize.py (in this process) on the table's save folders (results.csv and results.png in the
    state folder); a partial table is summarized too, and said so."""
    done = sum(p.state == "done" for p in plans)
    if done < len(plans):
        print(f"partial table: {done} of {len(plans)} runs done", flush=True)
    code = 0
    for folder in sorted({os.path.dirname(os.path.normpath(p.trial.run_folder)) for p in plans}):
        extra = ["--published"] if table.dataset == published_dataset() else []
        stem = os.path.join(book.folder, "results")
        try:
            code |= summarize_runs([folder, "--csv", stem + ".csv", "--png", stem + ".png",
                                    *extra]) or 0
        except SystemExit as stop:  # its one-line error is printed
            code |= 1 if stop.code is None else int(stop.code)
    return code


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_table.py", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="experiment file (YAML), e.g. "
                                           "experiments/kdrefine_table.yaml")
    parser.add_argument("--executor", choices=["local", "slurm"], default="local")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                        help="print the train_student.py command of every run, run nothing")
    parser.add_argument("--status", action="store_true",
                        help="print done/running/queued/failed/missing for every run")
    parser.add_argument("--summarize", action="store_true",
                        help="the results table of the table's runs (scripts/summarize.py)")
    parser.add_argument("--teachers", default=None,
                        help="teacher path pattern, {t} the teacher's name (default: the file's)")
    parser.add_argument("--state_dir", default=None,
                        help="jobs.json, logs and submitit files (default save/tables/<name>)")
    parser.add_argument("--pack_trials", action="store_true",
                        help="one job trains a cell's unfinished trials together "
                             "(train_student.py --trials N: one teacher forward for all; "
                             "students stacked where the method allows, on CUDA)")
    parser.add_argument("--program", default=None,
                        help="run this instead of 'python <repository>/train_student.py' (a "
                             "stand-in for tests; --dry_run and the plans use train_student.py's "
                             "flags)")
    parser.add_argument(PLUGIN_FLAG, action="append", default=None,
                        help=argparse.SUPPRESS)  # refused (check_args): the file names them
    group = parser.add_argument_group("local executor")
    group.add_argument("--gpus", default=None,
                       help="GPU ids, one run per GPU (default: every visible GPU; '' for CPU)")
    group.add_argument("--max_parallel", type=int, default=1, help="runs at a time on the CPU")
    group = parser.add_argument_group("slurm executor")
    group.add_argument("--partition", default=None)
    group.add_argument("--account", default=None)
    group.add_argument("--time", type=int, default=24 * 60, help="minutes per job")
    group.add_argument("--gpus_per_job", type=int, default=1,
                       help="GPUs per node of a job (several: torchrun across them)")
    group.add_argument("--cpus_per_job", type=int, default=None)
    group.add_argument("--nodes", type=int, default=1, help="nodes per job (torchrun across them)")
    group.add_argument("--array_parallelism", type=int, default=64,
                       help="array tasks running at a time")
    group.add_argument("--max_requeues", type=int, default=3,
                       help="requeues after a time-out (preemptions do not count)")
    return parser


def run_cells(plans: list[Plan], book: JobBook, args: argparse.Namespace, table: Table) -> int:
    """Run or submit the unfinished cells; 1 when a run failed or a folder holds another run."""
    for plan in plans:
        if plan.state == "conflict":
            print(f"warning: not run: {plan.cell.label}: {plan.conflict}", file=sys.stderr)
    todo = units([p for p in plans if p.state in ("missing", "failed")], args.pack_trials)
    runs = sum(len(u.plans) for u in todo)
    busy = sum(p.state in ("queued", "running") for p in plans)
    jobs = f" in {len(todo)} jobs" if len(todo) != runs else ""
    print(f"[run_table] {runs} of {len(plans)} runs to start{jobs} ({busy} queued or running, "
          f"{sum(p.state == 'done' for p in plans)} done)", flush=True)
    program = tuple(shlex.split(args.program)) if args.program else (PROGRAM[0], TRAIN_STUDENT)
    conflicts = any(p.state == "conflict" for p in plans)
    if not todo:
        return int(conflicts)
    if args.executor == "slurm":
        ids = submit_slurm(todo, book, args, program, table.name)
        print(f"[run_table] submitted {len(ids)} jobs: {ids[0]} .. {ids[-1]}", flush=True)
        return int(conflicts)
    failed = run_local(todo, book, local_slots(args.gpus, args.max_parallel), program)
    return int(bool(failed) or conflicts)


def check_args(args: argparse.Namespace) -> None:
    """One line for flags that cannot go together, or that belong in the experiment file."""
    if args.plugin:
        raise UserError(f"{PLUGIN_FLAG} belongs in the experiment file: name the plugins there "
                        f"({args.experiment}: 'plugins: [{', '.join(args.plugin)}]', a .py path "
                        "relative to the file or a module name), so that every run of the table "
                        "records them")
    if args.max_parallel < 1 or args.nodes < 1 or args.array_parallelism < 1:
        raise UserError("--max_parallel, --nodes and --array_parallelism must be at least 1")
    if args.pack_trials and args.executor == "slurm" and args.nodes * max(1, args.gpus_per_job) > 1:
        raise UserError("--pack_trials trains a cell's trials in one process, and a job of "
                        "several GPUs or nodes runs under torchrun; leave out --pack_trials, or "
                        "give each job one GPU (--nodes 1 --gpus_per_job 1)")


def dry_run(cells: list[Cell], pack: bool) -> None:
    """The ``train_student.py`` command of every job, one a line."""
    groups = packs(cells, ["run"] * len(cells)) if pack else [[k] for k in range(len(cells))]
    for group in groups:
        print(shlex.join([*PROGRAM, *packed_args([cells[k] for k in group])]))


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    table = load_table(args.experiment, args.teachers)
    cells = expand(table)
    if args.dry_run:
        dry_run(cells, args.pack_trials)
        return 0
    plans = plan(cells)
    book = JobBook(os.path.abspath(args.state_dir or os.path.join("save", "tables", table.name)))
    assess(plans, book)
    if args.status:
        print_status(plans)
        return 0
    if args.summarize:
        return summarize(table, plans, book)
    return run_cells(plans, book, args, table)


if __name__ == "__main__":
    sys.exit(main())
