"""Summarize a benchmark: mean ± std over trials of every student run under a save folder.

    python scripts/summarize.py save/student_model [--metric test_acc] [--csv FILE] [--png FILE]
        [--published] [--include_unfinished]

Collects every ``test_last_metrics.json`` below the folder, reads student, teacher, data set,
method, block type, loss weights and trial from its run folder's name
(``S_<student>_T_<teacher>_<dataset>_<method>[_t_<blocktype>]_r_<r>_a_<a>_b_<b>_<trial>``, model
names parsed against the registered ones) and prints a Markdown table: one row per method (with
its block type when not AMBB and its weights when a method was run with several), one column
per ``teacher → student`` pair (prefixed by the data set when there are several), cells
``mean ± std (n)`` with 2 decimals, where std is the sample standard deviation (ddof=1) over the
n trials and is shown as ``—`` for a single trial (it is undefined there).

A cell pools only runs made the same way: the configuration recorded in the metrics file
(``config``, the run's ``--print_config``; the teacher by the sha256 of its file) must agree in
everything but the trial, the seed and :data:`helper.provenance.BOOKKEEPING_KEYS`. Runs that
differ get rows of their own, labelled with the differing settings (``kdrefine (epochs=2)``,
``kd (teacher sha 1a2b3c)``). Files without that record (the original code's, older versions')
are pooled by folder name alone and marked ``†``. Unfinished runs (``reached_epoch`` below
``planned_epochs``) are listed after the table and left out unless ``--include_unfinished``
(then their cells are marked ``‡``). Values that are not finite numbers (``NaN``, ``true``) or
accuracies outside [0, 100] are skipped with a warning naming the file.

``--csv`` writes one row per cell (numeric columns); ``--png`` a bar chart, one panel per data
set (needs matplotlib); ``--published`` prints the published accuracy beside each cell with our
difference to it, from ``scripts/published_results.json`` (KDrefine README; CRD Tables 1-2).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.errors import UserError, exit_on_user_error  # noqa: E402
from helper.naming import DEFAULT_BLOCKTYPE, METRICS_FILE, parse_student_run_name  # noqa: E402
from models import known_model_names  # noqa: E402
from helper.provenance import (ABSENT, TEACHER_KEY, TRIAL_KEYS, config_differences,  # noqa: E402
                               epochs, format_setting, load_metrics, metric_value, run_config,
                               result_settings, setting_order, teacher_sha256)

METRICS = ("test_acc", "test_acc_top5", "test_loss")
METRIC_LABELS = {"test_acc": "top-1 accuracy (%)", "test_acc_top5": "top-5 accuracy (%)",
                 "test_loss": "test loss"}
# Row order of the CRD / KDrefine benchmark tables; other methods follow alphabetically.
METHOD_ORDER = ("kd", "hint", "attention", "similarity", "correlation", "vid", "rkd", "pkt",
                "abound", "factor", "fsp", "nst", "crd", "kdrefine")
PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published_results.json")
UNCHECKED_MARK, UNFINISHED_MARK, PLAIN_MARK = "†", "‡", "*"
CSV_COLUMNS = ("dataset", "teacher", "student", "method", "blocktype", "gamma", "alpha", "beta",
               "setting", "mean", "std", "n", "published", "diff", "checked", "unfinished")


@dataclass
class Run:
    """One metrics file: its folder, what the folder name says and what the file records."""

    folder: str
    name: dict[str, Any]            # parse_student_run_name of the folder
    value: float
    settings: dict[str, Any] | None  # result-relevant settings; None without provenance
    reached: int | None = None
    planned: int | None = None

    @property
    def checked(self) -> bool:
        return self.settings is not None

    @property
    def finished(self) -> bool:
        """False only when the file says the run stopped before its planned epochs."""
        return self.reached is None or self.planned is None or self.reached >= self.planned

    @property
    def identity(self) -> tuple:
        """What the folder name says, but the trial: data set, pair, method, weights, blocks."""
        n = self.name
        return (n["dataset"], n["model_t"], n["model_s"], n["distill"], n["gamma"], n["alpha"],
                n["beta"], n["blocktype"])


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
    """Rows (methods and settings), columns (teacher → student pairs) and the cells between."""

    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell]
    col_info: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # dataset, t, s
    unfinished: list[Run] = field(default_factory=list)  # left out (or, if counted, marked)
    unfinished_included: bool = False

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


# ---- reading ------------------------------------------------------------------------------

def warn(path: str, why: str) -> None:
    print(f"warning: skipping {path}: {why}", file=sys.stderr)


#: Folders that ``--overwrite`` moved aside (helper.run_folder.move_aside).
MOVED_ASIDE = re.compile(r"\.old-\d{8}-\d{6}(-\d+)?(/|$)")


def collect_runs(folder: str, metric: str) -> list[Run]:
    """Every metrics file under ``folder`` with a student run name and a valid ``metric``;
    the others are skipped with a warning line naming the file."""
    if not os.path.isdir(folder):
        raise UserError(f"folder {folder} not found; give the save folder of the students, "
                        "e.g. save/student_model")
    known = known_model_names()
    runs, moved_aside = [], 0
    for root, _dirs, files in sorted(os.walk(folder)):
        if METRICS_FILE not in files:
            continue
        if MOVED_ASIDE.search(root):  # replaced by a later --overwrite run
            moved_aside += 1
            continue
        path = os.path.join(root, METRICS_FILE)
        try:
            name = parse_student_run_name(os.path.basename(root), known)
        except UserError as err:
            warn(path, str(err))
            continue
        try:
            metrics = load_metrics(path)
            value = metric_value(metrics, metric)
        except OSError as err:
            warn(path, f"cannot read it ({err.strerror or err})")
            continue
        except ValueError as err:
            warn(path, str(err))
            continue
        config = run_config(metrics)
        settings = None
        if config is not None:
            settings = result_settings(config, teacher_sha256(metrics), ignore=TRIAL_KEYS)
        reached, planned = epochs(metrics)
        runs.append(Run(root, name, value, settings, reached, planned))
    if moved_aside:
        print(f"note: left out {moved_aside} run(s) that --overwrite moved aside (<folder>.old-<time>)",
              file=sys.stderr)
    if not runs:
        raise UserError(f"no {METRICS_FILE} with a student run name under {folder}; "
                        "nothing to summarize")
    return runs


# ---- published numbers --------------------------------------------------------------------

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

    def lookup(self, dataset: str, teacher: str, student: str, method: str,
               blocktype: str, metric: str = "test_acc") -> Published | None:
        """The published number of a cell, if any.

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
        if method == "kdrefine":
            if plain is None or blocktype != DEFAULT_BLOCKTYPE:
                return None
            value = self.values["kdrefine"].get((teacher, plain, method))
            return None if value is None else Published(value, "kdrefine")
        for table_id in ("crd_table1", "crd_table2", "kdrefine"):
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


def _split_by_settings(runs: list[Run]) -> list[list[Run]]:
    """The checked runs of one folder-name identity, in groups of agreeing settings."""
    groups: list[list[Run]] = []
    for run in runs:
        for group in groups:
            if not config_differences(group[0].settings, run.settings):
                group.append(run)
                break
        else:
            groups.append([run])
    return groups


def _group_runs(runs: list[Run]) -> dict[tuple, list[tuple[bool, list[Run]]]]:
    """Folder-name identity -> sub-groups ``(checked, runs)`` of runs made the same way (the
    unchecked runs of an identity: one group, last)."""
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
    """The method of an identity and what its row label adds: the block type when not AMBB,
    the weights when the method was run with several."""
    dataset, model_t, model_s, method, gamma, alpha, beta, blocktype = identity
    parts = [] if blocktype == DEFAULT_BLOCKTYPE else [f"t={blocktype}"]
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


def build_table(runs: list[Run], include_unfinished: bool = False,
                published: PublishedResults | None = None, metric: str = "test_acc") -> Table:
    """Group the runs into (row, pair) cells; see the module docstring."""
    unfinished = [r for r in runs if not r.finished]
    if not include_unfinished:
        runs = [r for r in runs if r.finished]
    several_datasets = len({r.name["dataset"] for r in runs}) > 1
    weights_per_method: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        weights_per_method[run.name["distill"]].add(_weights(run.name))
    subgroups = _group_runs(runs)
    differing, teacher_differs = _differing_settings(subgroups, weights_per_method)

    cells: dict[tuple[str, str], Cell] = {}
    row_keys: dict[str, tuple] = {}
    col_info: dict[str, tuple[str, str, str]] = {}
    col_keys: dict[str, tuple] = {}
    order = (lambda *pair: 0) if published is None else published.pair_rank
    for identity, groups in subgroups.items():
        dataset, model_t, model_s, method, gamma, alpha, beta, blocktype = identity
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
            rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
            row_keys[row] = (rank, method, row)
            col_info[col] = (dataset, model_t, model_s)
            col_keys[col] = (dataset, order(dataset, model_t, model_s), model_t.lower(),
                             model_s.lower())
            info = {"dataset": dataset, "teacher": model_t, "student": model_s,
                    "method": method, "blocktype": blocktype, "gamma": gamma, "alpha": alpha,
                    "beta": beta, "setting": setting}
            pub = None if published is None else published.lookup(
                dataset, model_t, model_s, method, blocktype, metric)
            cells[row, col] = Cell([r.value for r in members], ok,
                                   sum(not r.finished for r in members), info, pub)
    return Table(sorted(row_keys, key=row_keys.get), sorted(col_keys, key=col_keys.get), cells,
                 col_info, unfinished, include_unfinished)


# ---- output -------------------------------------------------------------------------------

def to_markdown(table: Table, published: PublishedResults | None = None) -> str:
    """The table, then its footnotes and the list of unfinished runs."""
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
    notes += unfinished_lines(table)
    return "\n".join(lines + ([""] + notes if notes else []))


def unfinished_lines(table: Table) -> list[str]:
    """Which runs stopped before their planned epochs, and whether they were counted."""
    if not table.unfinished:
        return []
    how = ("counted in their cells" if table.unfinished_included
           else "left out; --include_unfinished counts them")
    return [f"Unfinished runs ({how}):",
            *(f"- {r.folder}: epoch {r.reached} of {r.planned}" for r in table.unfinished)]


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

    return SimpleNamespace(colormaps=matplotlib.colormaps, FigureCanvasAgg=FigureCanvasAgg,
                           Figure=Figure, Line2D=Line2D, Patch=Patch)


def require_matplotlib() -> None:
    try:
        _matplotlib()
    except ImportError:
        raise UserError("--png needs matplotlib, which is not installed: "
                        "pip install matplotlib") from None


@dataclass
class _Legend:
    """What the panels drew, for the legend: rows in order of first use, whether a published
    number and an unchecked (hatched) bar appear."""

    rows: list[str] = field(default_factory=list)
    published: bool = False
    unchecked: bool = False


def _draw_bar(ax, row: str, cell: Cell, x: float, width: float, colour, legend: _Legend
              ) -> tuple[float, float]:
    """One cell's bar at ``x``: error bar (sample std), published diamond, n above; returns the
    lowest and highest value it shows."""
    std = cell.std or 0.0
    ax.bar(x, cell.mean, width * 0.92, color=colour, hatch="//" if not cell.checked else None,
           edgecolor="white", linewidth=0.5, zorder=2)
    if cell.std is not None:
        ax.errorbar(x, cell.mean, yerr=std, color="black", capsize=3, linewidth=1, zorder=3)
    low, top = cell.mean - std, cell.mean + std
    if cell.published is not None:
        ax.plot(x, cell.published.value, marker="D", markersize=5, color="black",
                markerfacecolor="white" if cell.published.plain_student else "black",
                linestyle="none", zorder=5)
        low, top = min(low, cell.published.value), max(top, cell.published.value)
        legend.published = True
    ax.annotate(f"{cell.n}{cell.marks()}", (x, top), xytext=(0, 4), textcoords="offset points",
                ha="center", va="bottom", fontsize=7, zorder=4)
    legend.unchecked |= not cell.checked
    if row not in legend.rows:
        legend.rows.append(row)
    return low, top


def _draw_panel(ax, table: Table, dataset: str, cols: list[str], widest: int, colour: dict,
                metric: str, legend: _Legend) -> None:
    """One data set's panel: a group of bars per pair, centred on its tick."""
    per_pair = [[r for r in table.rows if (r, c) in table.cells] for c in cols]
    width = min(0.3, 0.8 / max(len(p) for p in per_pair))
    lows, highs = [], []
    for j, (col, rows) in enumerate(zip(cols, per_pair)):
        for k, row in enumerate(rows):
            x = j + (k - (len(rows) - 1) / 2) * width
            low, high = _draw_bar(ax, row, table.cells[row, col], x, width, colour[row], legend)
            lows.append(low)
            highs.append(high)
    span = max(highs) - min(lows)
    pad = max(0.5, 0.08 * span)
    ax.set_ylim(max(0.0, min(lows) - pad), max(highs) + 2.5 * pad)
    margin = (widest - len(cols)) / 2  # the same bar width in every panel
    ax.set_xlim(-0.5 - margin, len(cols) - 0.5 + margin)
    labels = [f"{table.col_info[c][1]}→{table.col_info[c][2]}" for c in cols]
    rotate = len(cols) > 4 or max(len(s) for s in labels) > 22
    ax.set_xticks(range(len(cols)), labels, rotation=25 if rotate else 0,
                  ha="right" if rotate else "center", fontsize=8,
                  rotation_mode="anchor" if rotate else "default")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(dataset)
    ax.grid(axis="y", linewidth=0.4, alpha=0.6, zorder=0)
    ax.set_axisbelow(True)


def _legend_handles(mpl: SimpleNamespace, table: Table, colour: dict, legend: _Legend) -> list:
    handles = [mpl.Patch(color=colour[r], label=r) for r in table.rows if r in legend.rows]
    if legend.published:
        handles.append(mpl.Line2D([], [], marker="D", color="black", linestyle="none",
                                  label="published"))
        if any(c.published is not None and c.published.plain_student
               for c in table.cells.values()):
            handles.append(mpl.Line2D([], [], marker="D", color="black",
                                      markerfacecolor="white", linestyle="none",
                                      label="published (plain student)"))
    if legend.unchecked:
        handles.append(mpl.Patch(facecolor="lightgrey", hatch="//", edgecolor="white",
                                 label=f"{UNCHECKED_MARK} settings not recorded"))
    return handles


def make_figure(table: Table, metric: str):
    """Bar chart: one panel per data set, one group of bars per pair (tick label
    teacher→student), one series per table row; error bars = sample std, n above each bar,
    published numbers as black diamonds, hatched bars for unchecked runs (†)."""
    mpl = _matplotlib()
    datasets = sorted({info[0] for info in table.col_info.values()})
    cols_of = {d: [c for c in table.cols if table.col_info[c][0] == d] for d in datasets}
    cmap = mpl.colormaps["tab10" if len(table.rows) <= 10 else "tab20"]
    colour = {row: cmap(k % cmap.N) for k, row in enumerate(table.rows)}
    widest = max(len(c) for c in cols_of.values())
    fig = mpl.Figure(figsize=(max(6.5, 1.2 + 1.5 * widest),
                              3.8 * len(datasets) + 0.8 + 0.18 * -(-(len(table.rows) + 3) // 3)),
                     layout="constrained")
    mpl.FigureCanvasAgg(fig)
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    legend = _Legend()
    for ax, dataset in zip(axes, datasets):
        _draw_panel(ax, table, dataset, cols_of[dataset], widest, colour, metric, legend)
    handles = _legend_handles(mpl, table, colour, legend)
    fig.suptitle(f"Students' {METRIC_LABELS.get(metric, metric)}: mean ± sample std over "
                 "trials (number of trials above the bars)", fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)),
               fontsize=8, frameon=False)
    return fig


def write_png(table: Table, path: str, metric: str):
    """Draw :func:`make_figure` to ``path``; returns the figure."""
    fig = make_figure(table, metric)
    try:
        fig.savefig(path, dpi=150)
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
                        help="count runs that stopped before their planned epochs")
    args = parser.parse_args(argv)
    for flag, path in (("--csv", args.csv), ("--png", args.png)):
        if path:
            check_output_path(path, flag)
    if args.png:
        require_matplotlib()
    published = PublishedResults() if args.published else None
    runs = collect_runs(args.folder, args.metric)
    table = build_table(runs, args.include_unfinished,
                        PublishedResults() if published is None else published, args.metric)
    if not table.cells:
        print("\n".join(unfinished_lines(table)))
        raise UserError(f"all {len(runs)} runs under {args.folder} are unfinished; "
                        "--include_unfinished counts them")
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
