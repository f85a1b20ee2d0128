"""Summarize a benchmark: mean ± std over trials of every student run under a save folder.

    python scripts/summarize.py save/student_model [--metric test_acc] [--csv FILE] [--png FILE]

Collects every ``test_last_metrics.json`` below the folder, reads student, teacher, data set,
method, loss weights and trial from its run folder's name
(``S_<student>_T_<teacher>_<dataset>_<method>_r_<r>_a_<a>_b_<b>_<trial>``, model names parsed
against the registered ones) and prints a Markdown table: one row per method (with its weights
when a method was run with several), one column per ``teacher → student`` pair (prefixed by the
data set when there are several), cells ``mean ± std (n)`` with 2 decimals, where std is the
sample standard deviation (ddof=1) over the n trials and is shown as ``—`` for a single trial
(it is undefined there). ``--csv`` writes the same table as CSV; ``--png`` a bar chart with
standard-deviation error bars (needs matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.errors import UserError, exit_on_user_error  # noqa: E402
from helper.naming import METRICS_FILE, known_model_names, parse_student_run_name  # noqa: E402

METRICS = ("test_acc", "test_acc_top5", "test_loss")
# Row order of the CRD / KDrefine benchmark tables; other methods follow alphabetically.
METHOD_ORDER = ("kd", "hint", "attention", "similarity", "correlation", "vid", "rkd", "pkt",
                "abound", "factor", "fsp", "nst", "crd", "kdrefine")


@dataclass
class Cell:
    """Statistics of one (method, pair) cell over its trials."""

    values: list[float]

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

    def __str__(self) -> str:
        std = "—" if self.std is None else f"{self.std:.2f}"
        return f"{self.mean:.2f} ± {std} ({self.n})"


@dataclass
class Table:
    """Rows (methods), columns (teacher → student pairs) and the cells between them."""

    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell]

    def grid(self) -> list[list[str]]:
        """Header row then one row per method, cells as text ('' where nothing ran)."""
        out = [["method", *self.cols]]
        for row in self.rows:
            out.append([row, *(str(self.cells[row, c]) if (row, c) in self.cells else ""
                               for c in self.cols)])
        return out


def collect_runs(folder: str, metric: str) -> list[dict]:
    """Parsed run names plus ``value`` (the metric) of every metrics file under ``folder``."""
    if not os.path.isdir(folder):
        raise UserError(f"folder {folder} not found; give the save folder of the students, "
                        "e.g. save/student_model")
    known = known_model_names()
    runs = []
    for root, _dirs, files in sorted(os.walk(folder)):
        if METRICS_FILE not in files:
            continue
        path = os.path.join(root, METRICS_FILE)
        try:
            run = parse_student_run_name(os.path.basename(root), known)
            with open(path) as fh:
                run["value"] = float(json.load(fh)[metric])
        except UserError as err:
            print(f"warning: skipping {path}: {err}", file=sys.stderr)
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"warning: skipping {path}: no readable {metric} ({err!r})", file=sys.stderr)
            continue
        runs.append(run)
    if not runs:
        raise UserError(f"no {METRICS_FILE} with a student run name under {folder}; "
                        "nothing to summarize")
    return runs


def _weights(run: dict) -> str:
    return f"r={run['gamma']}, a={run['alpha']}, b={run['beta']}"


def build_table(runs: list[dict]) -> Table:
    """Group the runs into (method, pair) cells."""
    several_datasets = len({r["dataset"] for r in runs}) > 1
    weights_per_method: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        weights_per_method[run["distill"]].add(_weights(run))

    cells: dict[tuple[str, str], Cell] = {}
    row_keys: dict[str, tuple] = {}
    col_keys: dict[str, tuple] = {}
    for run in runs:
        method = run["distill"]
        row = method if len(weights_per_method[method]) == 1 else f"{method} ({_weights(run)})"
        col = f"{run['model_t']} → {run['model_s']}"
        if several_datasets:
            col = f"{run['dataset']}: {col}"
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        row_keys[row] = (rank, row)
        col_keys[col] = (run["dataset"], run["model_t"], run["model_s"])
        cells.setdefault((row, col), Cell([])).values.append(run["value"])
    return Table(sorted(row_keys, key=row_keys.get), sorted(col_keys, key=col_keys.get), cells)


def to_markdown(table: Table) -> str:
    grid = table.grid()
    lines = ["| " + " | ".join(grid[0]) + " |",
             "|" + "|".join([":---"] + [":---:"] * len(table.cols)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    return "\n".join(lines)


def write_csv(table: Table, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(table.grid())


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--png needs matplotlib, which is not installed: "
                        "pip install matplotlib") from None


def write_png(table: Table, path: str, metric: str) -> None:
    """Grouped bar chart: one group per pair, one bar per method, std error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 0.8 / max(1, len(table.rows))
    fig = Figure(figsize=(max(6.0, 1.2 * len(table.cols) * max(1, len(table.rows)) ** 0.5), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, row in enumerate(table.rows):
        xs, means, stds = [], [], []
        for j, col in enumerate(table.cols):
            cell = table.cells.get((row, col))
            if cell is not None:
                xs.append(j + (k - (len(table.rows) - 1) / 2) * width)
                means.append(cell.mean)
                stds.append(cell.std or 0.0)
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=row)
    ax.set_xlim(-0.5, len(table.cols) - 0.5)
    ax.set_xticks(range(len(table.cols)), table.cols, rotation=30, ha="right")
    ax.set_ylabel(metric)
    values = [v for c in table.cells.values() for v in c.values]
    span = max(values) - min(values)
    ax.set_ylim(min(values) - max(1.0, span), max(values) + max(1.0, 0.5 * span))
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=150)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Markdown table of mean ± sample std (n) over trials of every student run; "
                    "a single trial shows std as —.")
    parser.add_argument("folder", help="save folder of the students, e.g. save/student_model")
    parser.add_argument("--metric", default="test_acc", choices=METRICS,
                        help="entry of test_last_metrics.json to tabulate (default test_acc)")
    parser.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--png", metavar="FILE", help="also draw a bar chart (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.png:
        require_matplotlib()
    table = build_table(collect_runs(args.folder, args.metric))
    print(f"{args.metric}: mean ± sample std (number of trials)\n")
    print(to_markdown(table))
    if args.csv:
        write_csv(table, args.csv)
    if args.png:
        write_png(table, args.png, args.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
