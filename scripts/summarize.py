"""Summarize a benchmark: mean ± std over trials of every student run under a save folder.

    python scripts/summarize.py save/student_model [--metric test_acc] [--csv FILE] [--png FILE]
        [--published] [--include_unfinished]

Collects every ``test_last_metrics.json`` below the folder and prints a Markdown table: one row
per method (with its block type when not AMBB, ``ls`` with logit standardization, ``dot``
with DOT, and its weights when a method was run with several), one column per ``teacher → student`` pair
(prefixed by the data set when there are several), cells ``mean ± std (n)`` with 2 decimals,
where std is the sample standard deviation (ddof=1) over the n trials and is shown as ``—``
for a single trial (it is undefined there).

What a run is comes from its record, not from its folder's name: the configuration the metrics
file records (``config``, the run's ``--print_config``; the teacher by the sha256 of its file).
A folder whose name (``S_<student>_T_<teacher>_<dataset>_<method>[_ls][_dot][_t_<blocktype>]_r_<r>_a_
<a>_b_<b>_<trial>``) is not the name its record gives is left out with a warning line. Files
without that record (the original code's, older versions') are read by their folder's name
alone and their cells marked ``†``.

A cell pools only runs made the same way: their recorded settings must agree in everything but
the trial, the seed, :data:`helper.provenance.BOOKKEEPING_KEYS` and the flags the method never
reads (other methods' hyper-parameters, ``--init_epochs`` for a method without an init stage:
:func:`distiller_zoo.methods.unread_flags`). Runs that differ get rows of their own, labelled
with the differing settings (``kdrefine (epochs=2)``, ``kd (teacher sha 1a2b3c)``).

Each run counts once. Copies of a run (the same file content, or the same settings, trial and
seed: ``..._1.bak``, ``backup/..._1``) are counted once and listed below the table; the copy
kept is the one whose folder name agrees with its record. Two trials of one cell with the same
seed are not independent: the later trial is left out with a warning and listed. Symlinked
folders are followed when they lead to a folder not read yet, else named in a note; a folder
loop is never walked twice. Only regular files are opened (a FIFO or device named
``test_last_metrics.json`` is skipped with a warning, without blocking), and a malformed file
(not JSON, nested too deep, too big, values that are not finite numbers or accuracies outside
[0, 100]) is skipped with one warning line naming it.

Unfinished runs are listed after the table with the epoch they reached: those whose metrics
file says so (``reached_epoch`` below ``planned_epochs``; left out unless
``--include_unfinished``, which counts them and marks their cells ``‡``) and run folders with
no metrics file, stopped by Ctrl-C, a kill or a NaN loss (their epoch read from
``<student>_last.pth``; nothing to count).

``--csv`` writes one row per cell (numeric columns); ``--png`` a bar chart at paper width, one
panel per pair (needs matplotlib); ``--published`` prints the published accuracy beside each
cell with our difference to it, from ``scripts/published_results.json`` (KDrefine README;
CRD Tables 1-2; the DKD, DOT, CTKD and logit-standardization READMEs), each run beside the
numbers published with (or without) its ``--logit_stand`` and ``--dot``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import functools
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distiller_zoo.methods import unread_flags  # noqa: E402
from helper.checkpoint import load_checkpoint  # noqa: E402
from helper.errors import UserError, exit_on_user_error  # noqa: E402
from helper.naming import (DEFAULT_BLOCKTYPE, METRICS_FILE, parse_student_run_name,  # noqa: E402
                           student_run_name)
from helper.provenance import (ABSENT, MAX_METRICS_BYTES, PERCENT_METRICS, TEACHER_KEY,  # noqa: E402
                               TRIAL_KEYS, config_differences, epochs, format_setting,
                               metric_value, parse_metrics, read_regular_file, result_settings,
                               run_config, setting_order, teacher_sha256)
from models import known_model_names  # noqa: E402

METRICS = ("test_acc", "test_acc_top5", "test_loss")
METRIC_LABELS = {"test_acc": "top-1 accuracy (%)", "test_acc_top5": "top-5 accuracy (%)",
                 "test_loss": "test loss"}
PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published_results.json")
UNCHECKED_MARK, UNFINISHED_MARK, PLAIN_MARK = "†", "‡", "*"
CSV_COLUMNS = ("dataset", "teacher", "student", "method", "blocktype", "gamma", "alpha", "beta",
               "setting", "mean", "std", "n", "published", "diff", "checked", "unfinished")
#: The settings of a run's folder name that are names (the trial too, as text).
NAME_TEXT_KEYS = ("model_s", "model_t", "dataset", "distill", "blocktype", "trial")
#: The file a run folder is given first (:mod:`engine.trainer`): a folder holding only it ran
#: no epoch to its end.
LOG_FILE = "train.log"


@dataclass
class Run:
    """One metrics file: where it lies, what identifies the run (its record's naming settings;
    its folder's name for a file without a record) and what it records."""

    folder: str
    name: dict[str, Any]            # model_s, model_t, dataset, distill, blocktype, gamma, ...
    value: float
    settings: dict[str, Any] | None  # result-relevant settings; None without provenance
    reached: int | None = None
    planned: int | None = None
    seed: Any = None                 # the recorded seed (None: unseeded or not recorded)
    digest: str = ""                 # sha256 of the file's bytes
    name_agrees: bool = True         # whether the folder's name is the one its record gives

    @property
    def path(self) -> str:
        return os.path.join(self.folder, METRICS_FILE)

    @property
    def checked(self) -> bool:
        return self.settings is not None

    @property
    def finished(self) -> bool:
        """False only when the file says the run stopped before its planned epochs."""
        return self.reached is None or self.planned is None or self.reached >= self.planned

    @property
    def trial(self) -> str:
        return self.name["trial"]

    @property
    def identity(self) -> tuple:
        """What names the run, but the trial: data set, pair, method, weights, blocks, ls, dot."""
        n = self.name
        return (n["dataset"], n["model_t"], n["model_s"], n["distill"], n["gamma"], n["alpha"],
                n["beta"], n["blocktype"], bool(n.get("logit_stand", False)), bool(n.get("dot", False)))


@dataclass
class Stopped:
    """A run folder without metrics: a run stopped (Ctrl-C, kill, NaN loss) or still going,
    with the epoch its last checkpoint reached."""

    folder: str
    reached: int | None
    planned: int | None
    note: str

    def line(self) -> str:
        if self.reached is None:
            return f"- {self.folder}: {self.note}"
        planned = "?" if self.planned is None else self.planned
        return f"- {self.folder}: epoch {self.reached} of {planned}, {self.note}"


@dataclass
class CountedOnce:
    """A run left out because another one stands for it: ``why`` it is the same."""

    run: Run
    kept: Run
    why: str


@dataclass
class Collection:
    """What :func:`collect_runs` found: the runs to tabulate, the stopped run folders and the
    copies it left out."""

    runs: list[Run]
    stopped: list[Stopped] = field(default_factory=list)
    copies: list[CountedOnce] = field(default_factory=list)


@dataclass
class Published:
    """A published number for a cell: value, the table it comes from and, when it was
    published for the plain form of our re-parameterizable student, that plain student."""

    value: float
    table: str
    plain_student: str | None = None


@dataclass
class Cell:
    """Statistics of one (row, pair) cell over its trials."""

    values: list[float]
    checked: bool = True
    unfinished: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # dataset, teacher, ..., setting
    published: Published | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for a single trial."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def diff(self) -> float | None:
        return None if self.published is None else self.mean - self.published.value

    def marks(self) -> str:
        return (UNCHECKED_MARK if not self.checked else "") + \
            (UNFINISHED_MARK if self.unfinished else "")

    def text(self, published: bool = False) -> str:
        std = "—" if self.std is None else f"{self.std:.2f}"
        out = f"{self.mean:.2f} ± {std} ({self.n})"
        if self.marks():
            out += f" {self.marks()}"
        if published and self.published is not None:
            star = PLAIN_MARK if self.published.plain_student else ""
            out += f" [{self.published.value:.2f}{star}, {self.diff:+.2f}]"
        return out

    def __str__(self) -> str:
        return self.text()


@dataclass
class Table:
    """Rows (methods and settings), columns (teacher → student pairs) and the cells between,
    and what was left out: unfinished and stopped runs, copies, repeated seeds."""

    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell]
    col_info: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # dataset, t, s
    unfinished: list[Run] = field(default_factory=list)  # left out (or, if counted, marked)
    unfinished_included: bool = False
    stopped: list[Stopped] = field(default_factory=list)
    copies: list[CountedOnce] = field(default_factory=list)
    repeated_seeds: list[CountedOnce] = field(default_factory=list)

    def grid(self, published: bool = False) -> list[list[str]]:
        """Header row then one row per method, cells as text ('' where nothing ran)."""
        out = [["method", *self.cols]]
        for row in self.rows:
            out.append([row, *(self.cells[row, c].text(published) if (row, c) in self.cells
                               else "" for c in self.cols)])
        return out

    def ordered_cells(self) -> list[Cell]:
        """The cells pair by pair (columns' order), then in the rows' order."""
        return [self.cells[r, c] for c in self.cols for r in self.rows if (r, c) in self.cells]


# ---- finding the files --------------------------------------------------------------------

def warn(path: str, why: str) -> None:
    print(f"warning: skipping {path}: {why}", file=sys.stderr)


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


#: Folders that ``--overwrite`` moved aside (helper.run_folder.move_aside).
MOVED_ASIDE = re.compile(r"\.old-\d{8}-\d{6}(-\d+)?(/|$)")


def _walk_real(top: str, seen: set[str], links: list[str]) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` under ``top`` without following symlinks, each real folder
    once (``seen``: their real paths); symlinked folders met are appended to ``links``."""
    def unreadable(err: OSError) -> None:
        warn(err.filename or top, f"cannot list the folder ({err.strerror or err})")

    for root, dirs, files in os.walk(top, onerror=unreadable):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        links += [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]
        yield root, sorted(files)


def walk_folders(folder: str) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` of every folder under ``folder``, each real folder once: the
    real folders first, then each symlinked folder that leads to a folder not read yet (and
    what lies below it); a link that leads to one read already (a copy, a loop) is named in
    a note, never walked twice."""
    seen: set[str] = set()
    links: list[str] = []
    yield from _walk_real(folder, seen, links)
    while links:
        link = links.pop(0)
        target = os.path.realpath(link)
        if target in seen:
            note(f"not following the symlink {link}: it leads to {target}, which is read already")
            continue
        yield from _walk_real(link, seen, links)


# ---- reading one run ----------------------------------------------------------------------

def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None for anything else (booleans, text, inf, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _bad_setting(key: str, value: Any, kind: str) -> ValueError:
    if value is ABSENT:
        return ValueError(f"its recorded config has no {key}")
    shown = json.dumps(value, default=repr)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ValueError(f"its recorded config's {key} is {shown}, not {kind}")


def recorded_name(config: dict[str, Any]) -> dict[str, Any]:
    """The naming settings of a recorded configuration (:data:`NAME_TEXT_KEYS`, the weights,
    ``logit_stand``, ``dot``); ``ValueError`` when one is missing or not of its kind."""
    name: dict[str, Any] = {"blocktype": DEFAULT_BLOCKTYPE}
    for key in NAME_TEXT_KEYS:
        value = config.get(key, name.get(key, ABSENT))
        if key == "trial" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise _bad_setting(key, value, "a name")
        name[key] = value
    for key in ("gamma", "alpha", "beta"):
        value = config.get(key, ABSENT)
        name[key] = _finite(value)
        if name[key] is None:
            raise _bad_setting(key, value, "a finite number")
    for key in ("logit_stand", "dot"):  # dot: absent from records older than --dot
        flag = config.get(key, False)
        if not isinstance(flag, bool):
            raise _bad_setting(key, flag, "true or false")
        name[key] = flag
    return name


def _unread(distill: str) -> frozenset[str]:
    """The flags ``distill`` never reads (none known for a method not registered here)."""
    try:
        return unread_flags(distill)
    except UserError:
        return frozenset()


def read_run(folder: str, metric: str, known: list[str]) -> Run:
    """The run of ``folder``'s metrics file; ``ValueError``/``OSError``/``UserError`` saying
    why it cannot count (not a regular file, malformed, no valid ``metric``, no run name)."""
    data = read_regular_file(os.path.join(folder, METRICS_FILE), MAX_METRICS_BYTES)
    metrics = parse_metrics(data)
    value = metric_value(metrics, metric)
    config = run_config(metrics)
    reached, planned = epochs(metrics)
    digest = hashlib.sha256(data).hexdigest()
    if config is None:  # no record: the folder's name is all there is
        name = parse_student_run_name(os.path.basename(folder), known)
        return Run(folder, name, value, None, reached, planned, digest=digest)
    name = recorded_name(config)
    ignore = TRIAL_KEYS | _unread(name["distill"])
    settings = result_settings(config, teacher_sha256(metrics), ignore=ignore)
    agrees = os.path.basename(folder) == student_run_name(**name)
    return Run(folder, name, value, settings, reached, planned, config.get("seed"), digest,
               agrees)


def stopped_run(folder: str, files: list[str], known: list[str]) -> Stopped | None:
    """A student run folder without a metrics file that holds its ``<student>_last.pth`` or
    its ``train.log``: the epoch it reached (from the checkpoint); None for other folders."""
    try:
        name = parse_student_run_name(os.path.basename(folder), known)
    except UserError:
        return None
    last = f"{name['model_s']}_last.pth"
    if last not in files:
        if LOG_FILE not in files:
            return None
        return Stopped(folder, None, None, f"no epoch finished (no {last}, no {METRICS_FILE})")
    try:
        ckpt = load_checkpoint(os.path.join(folder, last))
        config = ckpt.get("config")
        values = (ckpt.get("epoch"), config.get("epochs") if isinstance(config, dict) else None)
    except Exception as err:  # any unreadable file: this is only a listing
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        return Stopped(folder, None, None, f"no {METRICS_FILE}; {last} is unreadable ({why})")
    reached, planned = (v if isinstance(v, int) and not isinstance(v, bool) else None
                        for v in values)
    return Stopped(folder, reached, planned, f"no {METRICS_FILE}: stopped (Ctrl-C, kill, NaN "
                                             "loss) or still running; nothing to count")


# ---- each run once ------------------------------------------------------------------------

def _keep_first(runs: list[Run]) -> Run:
    """The copy that stands for a group of copies: one whose folder name agrees with its
    record, then the shallowest, then the first by path."""
    return min(runs, key=lambda r: (not r.name_agrees, r.folder.count(os.sep), r.folder))


def _same_run_key(run: Run) -> str:
    """Runs with equal keys are the same run if their settings agree too: the same identity,
    trial and seed (a file without a record: the same folder name)."""
    return json.dumps([list(run.identity), run.trial, run.checked, run.seed], default=repr)


def _split_by_settings(runs: list[Run]) -> list[list[Run]]:
    """``runs`` in groups of agreeing settings (one group for runs without a record)."""
    groups: list[list[Run]] = []
    for run in runs:
        for group in groups:
            if not config_differences(group[0].settings or {}, run.settings or {}):
                group.append(run)
                break
        else:
            groups.append([run])
    return groups


def _one_of_each(runs: list[Run], key, why) -> tuple[list[Run], list[CountedOnce]]:
    """One run per group of ``key`` (and agreeing settings); the others as
    :class:`CountedOnce` with ``why(left_out, kept)``."""
    by_key: dict[Any, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[key(run)].append(run)
    kept, left = [], []
    for members in by_key.values():
        for group in _split_by_settings(members):
            first = _keep_first(group)
            kept.append(first)
            left += [CountedOnce(r, first, why(r, first)) for r in group if r is not first]
    return sorted(kept, key=lambda r: r.folder), left


def drop_copies(runs: list[Run]) -> tuple[list[Run], list[CountedOnce]]:
    """Each run once: copies with the same bytes, then runs with the same identity, trial,
    seed and settings (a file without a record: the same folder name), are counted once."""
    kept, same_file = _one_of_each(runs, lambda r: r.digest,
                                   lambda r, k: f"a copy of {k.path} (the same file content)")
    kept, same_run = _one_of_each(
        kept, _same_run_key,
        lambda r, k: f"the same run as {k.path} (trial {r.trial}, seed {_show_seed(r.seed)}, "
                     "the same settings)" if r.checked else f"the same run as {k.path}")
    return kept, same_file + same_run


def _show_seed(seed: Any) -> str:
    return "none" if seed is None else json.dumps(seed)


def _trial_order(run: Run) -> tuple:
    """Trials in numeric order (``2`` before ``10``), then by text and path."""
    return (not run.trial.isdigit(), int(run.trial) if run.trial.isdigit() else 0, run.trial,
            run.folder)


def one_per_seed(runs: list[Run]) -> tuple[list[Run], list[CountedOnce]]:
    """The runs of one cell, each seed once: of the trials that share a seed (not independent
    runs) the first trial stays, the others are returned as left out. Unseeded runs differ
    by their trial's data seed and all stay."""
    kept, left = [], []
    by_seed: dict[str, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=_trial_order):
        if run.seed is None:
            kept.append(run)
        else:
            by_seed[json.dumps(run.seed, default=repr)].append(run)
    for members in by_seed.values():
        kept.append(members[0])
        left += [CountedOnce(r, members[0], f"seed {_show_seed(r.seed)} again (trial {r.trial}; "
                                            f"trial {members[0].trial} in {members[0].path}): "
                                            "not an independent trial") for r in members[1:]]
    return kept, left


def collect_runs(folder: str, metric: str) -> Collection:
    """Every metrics file under ``folder`` that can count, each run once (:func:`drop_copies`),
    and the stopped run folders; the files that cannot count are skipped with a warning line
    naming them."""
    if not os.path.isdir(folder):
        raise UserError(f"folder {folder} not found; give the save folder of the students, "
                        "e.g. save/student_model")
    known = known_model_names()
    runs, stopped, moved_aside = [], [], 0
    for root, files in walk_folders(folder):
        if MOVED_ASIDE.search(root):  # replaced by a later --overwrite run
            moved_aside += METRICS_FILE in files
            continue
        if METRICS_FILE not in files:
            stop = stopped_run(root, files, known)
            stopped += [stop] if stop is not None else []
            continue
        try:
            runs.append(read_run(root, metric, known))
        except OSError as err:
            warn(os.path.join(root, METRICS_FILE), f"cannot read it ({err.strerror or err})")
        except (ValueError, UserError) as err:
            warn(os.path.join(root, METRICS_FILE), str(err))
    if moved_aside:
        note(f"left out {moved_aside} run(s) that --overwrite moved aside (<folder>.old-<time>)")
    kept, copies = drop_copies(runs)
    for run in kept:
        if not run.name_agrees:
            warn(run.path, "the folder's name disagrees with its recorded configuration, which "
                           f"names the run {student_run_name(**run.name)}; left out (rename or "
                           "move the folder)")
    runs = [r for r in kept if r.name_agrees]
    if not runs and not stopped:
        raise UserError(f"no {METRICS_FILE} with a student run name under {folder}; "
                        "nothing to summarize")
    return Collection(runs, stopped, copies)


# ---- published numbers --------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def method_order(path: str = PUBLISHED_FILE) -> tuple[str, ...]:
    """The rows of the CRD / KDrefine benchmark tables, in their order (the published file's
    ``method_names``); the table's other methods follow them alphabetically."""
    try:
        with open(path, encoding="utf-8") as fh:
            return tuple(json.load(fh)["method_names"].values())
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise UserError(f"cannot read the method order of {path}: {err}") from None


class PublishedResults:
    """``scripts/published_results.json``: published CIFAR-100 top-1 accuracies."""

    def __init__(self, path: str = PUBLISHED_FILE):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the published numbers {path}: {err}") from None
        self.dataset = data["dataset"]
        self.metric = data["metric"]
        self.rep_students: dict[str, str] = data["rep_students"]
        #: method -> the table whose row for it holds numbers of the re-parameterizable students only
        self.rep_rows: dict[str, str] = data["rep_rows"]
        self.tables = {t["id"]: t for t in data["tables"]}
        self.values: dict[str, dict[tuple[str, str, str], float]] = {}
        for table_id, table in self.tables.items():
            out = self.values[table_id] = {}
            for method, row in table["rows"].items():
                for col, value in zip(table["columns"], row):
                    if value is not None:
                        out[col["teacher"], col["student"], method] = float(value)

    def pair_rank(self, dataset: str, teacher: str, student: str) -> int:
        """Position of a pair in the published tables (KDrefine's, then CRD's), so that our
        columns come in their order; pairs they lack come after."""
        plain = self.rep_students.get(student, student)
        k = 0
        for table in self.tables.values():
            for col in table["columns"]:
                if dataset == self.dataset and (col["teacher"], col["student"]) == (teacher, plain):
                    return k
                k += 1
        return k

    def fits(self, table_id: str, logit_stand: bool, dot: bool) -> bool:
        """Whether table ``table_id`` holds runs made like these: a table with
        ``"logit_stand": true`` (``"dot": true``) holds runs with ``--logit_stand`` (``--dot``)
        only, the others runs without."""
        table = self.tables[table_id]
        return bool(table.get("logit_stand", False)) == logit_stand and bool(table.get("dot", False)) == dot

    def lookup(self, dataset: str, teacher: str, student: str, method: str,
               blocktype: str, metric: str = "test_acc", logit_stand: bool = False,
               dot: bool = False) -> Published | None:
        """The published number of a cell, if any, from the tables that :meth:`fits` its
        ``logit_stand`` and ``dot``.

        KDrefine's own row was measured with the re-parameterizable (AMBB) students: a
        ``kdrefine`` run matches it only with a rep student in AMBB form. The other methods were
        published (CRD Tables 1-2, repeated in KDrefine's README) for plain students: a run
        with a plain student matches its number, and so does a run with the re-parameterizable
        form of that student (any block type), marked as compared with the plain student
        (it deploys to that same architecture).
        """
        if dataset != self.dataset or metric != self.metric:
            return None
        plain = self.rep_students.get(student)
        rep_table = self.rep_rows.get(method)
        if rep_table is not None:
            if plain is None or blocktype != DEFAULT_BLOCKTYPE or not self.fits(rep_table, logit_stand, dot):
                return None
            value = self.values[rep_table].get((teacher, plain, method))
            return None if value is None else Published(value, rep_table)
        # the tables of plain students first: a table with a rep-only row repeats their numbers
        for table_id in sorted(self.tables, key=lambda t: t in self.rep_rows.values()):
            if not self.fits(table_id, logit_stand, dot):
                continue
            value = self.values.get(table_id, {}).get((teacher, plain or student, method))
            if value is not None:
                return Published(value, table_id, plain)
        return None


# ---- grouping -----------------------------------------------------------------------------

def _weights(name: dict) -> str:
    return f"r={name['gamma']}, a={name['alpha']}, b={name['beta']}"


def _row_label(method: str, identity_parts: list[str], setting: str) -> str:
    if identity_parts:
        return f"{method} ({', '.join(identity_parts)}{'; ' + setting if setting else ''})"
    return f"{method} ({setting})" if setting else method


def _group_runs(runs: list[Run]) -> dict[tuple, list[tuple[bool, list[Run]]]]:
    """Identity -> sub-groups ``(checked, runs)`` of runs made the same way (the unchecked
    runs of an identity: one group, last)."""
    by_identity: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        by_identity[run.identity].append(run)
    subgroups: dict[tuple, list[tuple[bool, list[Run]]]] = {}
    for identity, members in by_identity.items():
        checked = [r for r in members if r.checked]
        unchecked = [r for r in members if not r.checked]
        subgroups[identity] = [(True, g) for g in _split_by_settings(checked)]
        if unchecked:
            subgroups[identity].append((False, unchecked))
    return subgroups


def _row_identity(identity: tuple, weights_per_method: dict[str, set[str]]) -> tuple[str, list[str]]:
    """The method of an identity and what its row label adds: ``ls`` with logit
    standardization, ``dot`` with DOT, the block type when not AMBB, the weights when the
    method was run with several."""
    dataset, model_t, model_s, method, gamma, alpha, beta, blocktype, stand, dot = identity
    parts = (["ls"] if stand else []) + (["dot"] if dot else [])
    parts += [] if blocktype == DEFAULT_BLOCKTYPE else [f"t={blocktype}"]
    if len(weights_per_method[method]) > 1:
        parts.append(_weights({"gamma": gamma, "alpha": alpha, "beta": beta}))
    return method, parts


def _differing_settings(subgroups: dict[tuple, list[tuple[bool, list[Run]]]],
                        weights_per_method: dict[str, set[str]]
                        ) -> tuple[dict[tuple, set[str]], set[tuple]]:
    """Settings that differ within some cell of a row (keyed by ``(method, parts)``): shown on
    every cell of that row, so that cells of equal settings line up; and the identities within
    which the teacher differs (shown only there)."""
    differing: dict[tuple, set[str]] = defaultdict(set)
    teacher_differs: set[tuple] = set()
    for identity, groups in subgroups.items():
        checked = [g[0].settings for ok, g in groups if ok]
        keys: set[str] = set()
        for i, a in enumerate(checked):
            for b in checked[i + 1:]:
                keys |= set(config_differences(a, b))
        if TEACHER_KEY in keys:
            teacher_differs.add(identity)
        method, parts = _row_identity(identity, weights_per_method)
        differing[method, tuple(parts)] |= keys - {TEACHER_KEY}
    return differing, teacher_differs


def _setting_label(keys: set[str], settings: dict[str, Any]) -> str:
    """``epochs=2, teacher sha 1a2b3c``: the given keys of a group's settings, in order."""
    return ", ".join(format_setting(k, settings.get(k, ABSENT))
                     for k in sorted(keys, key=setting_order))


def _each_seed_once(subgroups: dict[tuple, list[tuple[bool, list[Run]]]]
                    ) -> tuple[dict[tuple, list[tuple[bool, list[Run]]]], list[CountedOnce]]:
    """The sub-groups with each seed once in every checked one (:func:`one_per_seed`), and
    the runs left out for a repeated seed."""
    repeated: list[CountedOnce] = []
    out: dict[tuple, list[tuple[bool, list[Run]]]] = {}
    for identity, groups in subgroups.items():
        out[identity] = []
        for ok, members in groups:
            if ok:
                members, left = one_per_seed(members)
                repeated += left
            out[identity].append((ok, members))
    return out, repeated


def build_table(collection: Collection, include_unfinished: bool = False,
                published: PublishedResults | None = None, metric: str = "test_acc") -> Table:
    """Group the runs into (row, pair) cells, each seed once per cell; see the module
    docstring."""
    runs = collection.runs
    unfinished = [r for r in runs if not r.finished]
    if not include_unfinished:
        runs = [r for r in runs if r.finished]
    several_datasets = len({r.name["dataset"] for r in runs}) > 1
    weights_per_method: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        weights_per_method[run.name["distill"]].add(_weights(run.name))
    subgroups, repeated = _each_seed_once(_group_runs(runs))
    differing, teacher_differs = _differing_settings(subgroups, weights_per_method)

    methods = method_order()
    cells: dict[tuple[str, str], Cell] = {}
    row_keys: dict[str, tuple] = {}
    col_info: dict[str, tuple[str, str, str]] = {}
    col_keys: dict[str, tuple] = {}
    order = (lambda *pair: 0) if published is None else published.pair_rank
    for identity, groups in subgroups.items():
        dataset, model_t, model_s, method, gamma, alpha, beta, blocktype, stand, dot = identity
        _, parts = _row_identity(identity, weights_per_method)
        has_checked = any(ok for ok, _ in groups)
        for ok, members in groups:
            if ok:
                keys = set(differing[method, tuple(parts)])
                if identity in teacher_differs:
                    keys.add(TEACHER_KEY)
                setting = _setting_label(keys, members[0].settings)
            else:
                setting = "settings unknown" if has_checked else ""
            row = _row_label(method, parts, setting)
            col = f"{model_t} → {model_s}"
            if several_datasets:
                col = f"{dataset}: {col}"
            base_row, k = row, 2
            while (row, col) in cells:  # settings that print alike: keep the cells apart
                row, k = f"{base_row} #{k}", k + 1
            rank = methods.index(method) if method in methods else len(methods)
            row_keys[row] = (rank, method, row)
            col_info[col] = (dataset, model_t, model_s)
            col_keys[col] = (dataset, order(dataset, model_t, model_s), model_t.lower(),
                             model_s.lower())
            info = {"dataset": dataset, "teacher": model_t, "student": model_s,
                    "method": method, "blocktype": blocktype, "gamma": gamma, "alpha": alpha,
                    "beta": beta, "setting": setting}
            pub = None if published is None else published.lookup(
                dataset, model_t, model_s, method, blocktype, metric, stand, dot)
            cells[row, col] = Cell([r.value for r in members], ok,
                                   sum(not r.finished for r in members), info, pub)
    return Table(sorted(row_keys, key=row_keys.get), sorted(col_keys, key=col_keys.get), cells,
                 col_info, unfinished, include_unfinished, collection.stopped, collection.copies,
                 repeated)


# ---- output -------------------------------------------------------------------------------
# ---- output -------------------------------------------------------------------------------

def to_markdown(table: Table, published: PublishedResults | None = None) -> str:
    """The table, then its footnotes and the lists of unfinished runs and of runs counted
    once."""
    grid = table.grid(published is not None)
    lines = ["| " + " | ".join(grid[0]) + " |",
             "|" + "|".join([":---"] + [":---:"] * len(table.cols)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    notes = []
    cells = table.cells.values()
    if any(not c.checked for c in cells):
        notes.append(f"{UNCHECKED_MARK} these metrics files record no settings (older format): "
                     "their runs are pooled by folder name alone; their settings could not be "
                     "checked.")
    if any(c.unfinished for c in cells):
        notes.append(f"{UNFINISHED_MARK} includes unfinished runs (--include_unfinished), "
                     "listed below.")
    if published is not None:
        notes += published_notes(table, published)
    notes += unfinished_lines(table) + counted_once_lines(table)
    return "\n".join(lines + ([""] + notes if notes else []))


def unfinished_lines(table: Table) -> list[str]:
    """Which runs stopped before their planned epochs, whether they were counted, and the run
    folders without metrics (stopped or still running), with the epoch each reached."""
    out = []
    if table.unfinished:
        how = ("counted in their cells" if table.unfinished_included
               else "left out; --include_unfinished counts them")
        out += [f"Unfinished runs ({how}):",
                *(f"- {r.folder}: epoch {r.reached} of {r.planned}" for r in table.unfinished)]
    if table.stopped:
        out += [f"Unfinished runs without {METRICS_FILE} (nothing to count):",
                *(s.line() for s in table.stopped)]
    return out


def counted_once_lines(table: Table) -> list[str]:
    """The copies of runs and the repeated seeds that were left out, each with why."""
    left = table.copies + table.repeated_seeds
    if not left:
        return []
    return ["Counted once (copies of a run, trials with a seed used already):",
            *(f"- {c.run.path}: {c.why}" for c in left)]


def published_notes(table: Table, published: PublishedResults) -> list[str]:
    cells = [c for c in table.cells.values() if c.published is not None]
    if not cells:
        return [f"No published number matches these cells (published: {published.metric} on "
                f"{published.dataset}, KDrefine's row with AMBB rep students only)."]
    notes = []
    if any(c.published.plain_student for c in cells):
        notes.append(f"{PLAIN_MARK} published for the plain student (CRD trains plain students): "
                     "our run used its re-parameterizable form, which deploys to that same "
                     "architecture, so it is compared with the plain student's number.")
    notes.append("Published numbers, [published, ours - published], from:")
    for table_id in sorted({c.published.table for c in cells}):
        notes.append(f"- {published.tables[table_id]['title']}: "
                     f"{published.tables[table_id]['source']}")
    return notes


def _num(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


def write_csv(table: Table, path: str) -> None:
    """One row per cell: :data:`CSV_COLUMNS`."""
    try:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for cell in table.ordered_cells():
                i = cell.info
                pub = None if cell.published is None else cell.published.value
                writer.writerow([i["dataset"], i["teacher"], i["student"], i["method"],
                                 i["blocktype"], i["gamma"], i["alpha"], i["beta"], i["setting"],
                                 _num(cell.mean), _num(cell.std), cell.n, _num(pub),
                                 _num(cell.diff), int(cell.checked), cell.unfinished])
    except OSError as err:
        raise UserError(f"cannot write --csv {path}: {err.strerror or err}") from None


def check_output_path(path: str, flag: str) -> None:
    """Stop early when an output path is a folder or lies in a missing one."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: folder {parent} does not exist")


def _matplotlib() -> SimpleNamespace:
    """The parts of matplotlib that the chart uses, imported here and only here, on first use:
    a heavy third-party import that only ``--png`` needs (ImportError when it is missing)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    return SimpleNamespace(colormaps=matplotlib.colormaps, FigureCanvasAgg=FigureCanvasAgg,
                           Figure=Figure, Line2D=Line2D, Patch=Patch, MaxNLocator=MaxNLocator)


def require_matplotlib() -> None:
    try:
        _matplotlib()
    except ImportError:
        raise UserError("--png needs matplotlib, which is not installed: "
                        "pip install matplotlib") from None


#: The chart's size for a paper page: the width of both text columns (inches), the font size
#: (points), the height of one bar's line and what a line of panels adds (title, axis; inches).
PAPER_WIDTH, FONT_SIZE, BAR_LINE, PANEL_EXTRA = 7.0, 7, 0.17, 0.6
#: Panels side by side; more pairs continue on further lines.
PANELS_PER_LINE = 3
#: Space between a value label and what it must not touch (points).
LABEL_GAP = 3


def row_colours(n: int) -> list[tuple]:
    """``n`` distinct colours from qualitative colour maps: tab10 up to 10 rows, tab20 up to
    20, tab20 + tab20b + tab20c up to 60; beyond, evenly spaced hues."""
    mpl = _matplotlib()
    names = ["tab10"] if n <= 10 else ["tab20"] if n <= 20 else ["tab20", "tab20b", "tab20c"]
    colours = [mpl.colormaps[m](k) for m in names for k in range(mpl.colormaps[m].N)]
    if n > len(colours):
        colours = [mpl.colormaps["hsv"](k / n) for k in range(n)]
    return colours[:n]


def _ink(colour) -> str:
    """Black or white, whichever reads better on ``colour``."""
    r, g, b = colour[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


@dataclass
class _Label:
    """A bar's value label: drawn inside the bar from 0 while it fits before ``inside_end``
    (the bar's end, the error bar's left whisker or the published diamond), else after
    ``end`` (the rightmost of bar, error bar and diamond)."""

    text: Any
    ax: Any
    inside_end: float
    end: float
    inside: bool = True

    def move_outside(self) -> None:
        self.text.xy = (self.end, self.text.xy[1])
        self.text.set_color("black")
        self.text.set_bbox(None)
        self.inside = False


@dataclass
class _Legend:
    """What the panels drew besides the bars: published numbers (for our student, for the
    plain one), hatched bars of unchecked runs; and the value labels."""

    published: bool = False
    plain: bool = False
    unchecked: bool = False
    labels: list[_Label] = field(default_factory=list)


def _draw_cell(ax, y: float, cell: Cell, colour, legend: _Legend) -> None:
    """One cell's horizontal bar on line ``y``: error bar (sample std), published diamond and
    its value as the table prints it (inside the bar where it fits)."""
    std = cell.std or 0.0
    ax.barh(y, cell.mean, height=0.72, color=colour, hatch="////" if not cell.checked else None,
            edgecolor="white", linewidth=0.4, zorder=2)
    inside_end, end = cell.mean - std, cell.mean + std
    if cell.std is not None:
        ax.errorbar(cell.mean, y, xerr=std, color="black", capsize=2, linewidth=0.8, zorder=3)
    if cell.published is not None:
        plain = bool(cell.published.plain_student)
        ax.plot(cell.published.value, y, marker="D", markersize=4, linestyle="none",
                markerfacecolor="white" if plain else "black",
                markeredgecolor="black" if plain else "white", markeredgewidth=0.6, zorder=5)
        inside_end = min(inside_end, cell.published.value)
        end = max(end, cell.published.value)
        legend.plain |= plain
        legend.published |= not plain
    legend.unchecked |= not cell.checked
    text = ax.annotate(cell.text(), (0, y), xytext=(LABEL_GAP, 0), textcoords="offset points",
                       ha="left", va="center", fontsize=FONT_SIZE - 1, color=_ink(colour),
                       zorder=4, bbox=dict(boxstyle="square,pad=0.1", facecolor=colour,
                                           edgecolor="none") if not cell.checked else None)
    legend.labels.append(_Label(text, ax, inside_end, end))


def _legend_handles(mpl: SimpleNamespace, legend: _Legend) -> list:
    handles = []
    if legend.published:
        handles.append(mpl.Line2D([], [], marker="D", markersize=4.5, color="black",
                                  linestyle="none", label="published"))
    if legend.plain:
        handles.append(mpl.Line2D([], [], marker="D", markersize=4.5, color="black",
                                  markerfacecolor="white", linestyle="none",
                                  label="published for the plain student"))
    if legend.unchecked:
        handles.append(mpl.Patch(facecolor="grey", hatch="////", edgecolor="white",
                                 label=f"{UNCHECKED_MARK} settings not recorded"))
    return handles


def _x_pixels(ax, value: float) -> float:
    return ax.transData.transform((value, 0))[0] - ax.transData.transform((0, 0))[0]


def _fit_value_axis(fig, axes: list, legend: _Legend, tick_cap: float | None = None) -> None:
    """The shared value axis from 0 to where every value label ends inside its panel: a label
    that does not fit inside its bar moves after it, and the axis widens (a few layout
    passes) until the widest label after a bar fits; its ticks cover the values (up to
    ``tick_cap``: 100 for a percentage)."""
    ends = [label.end for label in legend.labels]
    top = max(ends) * 1.06 if ends and max(ends) > 0 else 1.0
    gap = LABEL_GAP / 72 * fig.dpi
    for _ in range(5):
        axes[0].set_xlim(0, top)
        fig.draw_without_rendering()  # lays it out, rasterizes nothing
        need, moved = top, False
        for label in legend.labels:
            width = label.text.get_window_extent().width + 2 * gap
            if label.inside and width > _x_pixels(label.ax, label.inside_end):
                label.move_outside()
                moved = True
            if not label.inside:
                panel = label.ax.get_window_extent().width
                need = max(need, label.end * panel / max(panel - width, 0.25 * panel))
        if need <= top and not moved:
            break
        top = max(top, need * 1.01)
    reach = max(ends) if ends and max(ends) > 0 else top  # ticks over the values, not beyond
    reach = reach if tick_cap is None else min(reach, tick_cap)
    axes[0].set_xticks([t for t in _matplotlib().MaxNLocator(nbins=5).tick_values(0, reach)
                        if 0 <= t <= top])


def make_figure(table: Table, metric: str):
    """Bar chart at paper width: one panel per teacher → student pair (three side by side),
    one horizontal bar per table row, labelled with the row on the left and with the cell's
    ``mean ± std (n)`` on the right, in a distinct colour per row; the value axis starts at 0;
    error bars = sample std, published numbers as diamonds, hatched bars for unchecked runs
    (†). Nothing is drawn outside the figure (constrained layout, the legend below)."""
    mpl = _matplotlib()
    per_line = min(PANELS_PER_LINE, len(table.cols))
    lines = -(-len(table.cols) // per_line)
    height = 0.75 + lines * (PANEL_EXTRA + BAR_LINE * len(table.rows))
    fig = mpl.Figure(figsize=(PAPER_WIDTH, height), layout="constrained")
    mpl.FigureCanvasAgg(fig)
    grid = fig.subplots(lines, per_line, sharex=True, sharey=True, squeeze=False)
    axes = list(grid.flat)
    colour = dict(zip(table.rows, row_colours(len(table.rows))))
    legend = _Legend()
    for k, (ax, col) in enumerate(zip(axes, table.cols)):
        for y, row in enumerate(table.rows):
            if (row, col) in table.cells:
                _draw_cell(ax, y, table.cells[row, col], colour[row], legend)
        ax.set_title(col, fontsize=FONT_SIZE + 1)
        ax.grid(axis="x", linewidth=0.4, alpha=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=FONT_SIZE, labelbottom=True)
        if k + per_line >= len(table.cols):  # the last panel of its column
            ax.set_xlabel(METRIC_LABELS.get(metric, metric), fontsize=FONT_SIZE)
    for ax in axes[len(table.cols):]:
        ax.set_visible(False)
    axes[0].set_yticks(range(len(table.rows)), table.rows)
    axes[0].set_ylim(len(table.rows) - 0.4, -0.6)  # the first row on top
    fig.suptitle(f"Students' {METRIC_LABELS.get(metric, metric)}: mean ± sample std "
                 "(number of trials)", fontsize=FONT_SIZE + 2)
    handles = _legend_handles(mpl, legend)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   fontsize=FONT_SIZE, frameon=False)
    _fit_value_axis(fig, axes[:len(table.cols)], legend, 100.0 if metric in PERCENT_METRICS else None)
    return fig


def write_png(table: Table, path: str, metric: str):
    """Draw :func:`make_figure` to ``path`` at 300 dpi, :data:`PAPER_WIDTH` wide (its layout
    keeps everything inside); returns the figure."""
    fig = make_figure(table, metric)
    try:
        fig.savefig(path, dpi=300)
    except OSError as err:
        raise UserError(f"cannot write --png {path}: {err.strerror or err}") from None
    return fig


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Markdown table of mean ± sample std (n) over trials of every student run; "
                    "a single trial shows std as —. Only runs with the same settings share a "
                    "cell.")
    parser.add_argument("folder", help="save folder of the students, e.g. save/student_model")
    parser.add_argument("--metric", default="test_acc", choices=METRICS,
                        help="entry of test_last_metrics.json to tabulate (default test_acc)")
    parser.add_argument("--csv", metavar="FILE", help="also write the cells as CSV rows")
    parser.add_argument("--png", metavar="FILE", help="also draw a bar chart (needs matplotlib)")
    parser.add_argument("--published", action="store_true",
                        help="print the published accuracy beside each cell, with the difference")
    parser.add_argument("--include_unfinished", action="store_true",
                        help="count runs whose metrics say they stopped before their planned "
                             "epochs (run folders without metrics are always listed)")
    args = parser.parse_args(argv)
    for flag, path in (("--csv", args.csv), ("--png", args.png)):
        if path:
            check_output_path(path, flag)
    if args.png:
        require_matplotlib()
    published = PublishedResults() if args.published else None
    collection = collect_runs(args.folder, args.metric)
    table = build_table(collection, args.include_unfinished,
                        PublishedResults() if published is None else published, args.metric)
    for repeated in table.repeated_seeds:
        print(f"warning: {repeated.run.path} repeats seed {_show_seed(repeated.run.seed)} of "
              f"trial {repeated.kept.trial} in its cell: not an independent trial, counted "
              "once", file=sys.stderr)
    if not table.cells:
        print("\n".join(unfinished_lines(table)))
        total = len(collection.runs) + len(collection.stopped)
        raise UserError(f"all {total} runs under {args.folder} are unfinished; "
                        + ("--include_unfinished counts those with metrics" if collection.runs
                           else "none has metrics to count"))
    header = f"{args.metric}: mean ± sample std (number of trials)"
    if published is not None:
        header += " [published, ours - published]"
    print(f"{header}\n")
    print(to_markdown(table, published))
    if args.csv:
        write_csv(table, args.csv)
    if args.png:
        write_png(table, args.png, args.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
