"""The table scripts and the README's tables of per-pair values are generated from the experiment
files and the method registry (scripts/table_scripts.py): they are current, a changed value in
an experiment file makes them stale until --write, and each script line is the command
scripts/run_table.py runs for trial 1 of its cell."""
from __future__ import annotations

import os
import shutil

import pytest

from scripts import run_table, table_scripts
from tests.test_scripts_run_all import run_script

ROOT = table_scripts.ROOT


def test_scripts_and_readme_are_generated_from_the_experiment_files():
    assert table_scripts.stale() == [], "run python scripts/table_scripts.py --write"
    assert table_scripts.main(["--check"]) == 0


def test_a_changed_value_makes_the_script_and_the_readme_stale(tmp_path, capsys):
    """A copy of the tree's inputs: one DKD value changed, the README and run_dkd.sh (only they)
    are stale; written again, they hold the new value and nothing is stale."""
    for folder in ("experiments", "scripts"):
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder,
                        ignore=shutil.ignore_patterns("*.py", "*.json", "__pycache__"))
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    path = tmp_path / "experiments" / "dkd_table.yaml"
    text = path.read_text()
    old = "flags: --dkd_alpha 1 --dkd_beta 2 --dkd_T 4 --dkd_warmup 20\n      source: res56_res20.yaml"
    assert text.count(old) == 1
    path.write_text(text.replace(old, old.replace("--dkd_beta 2 ", "--dkd_beta 3 ")))
    assert sorted(table_scripts.stale(str(tmp_path))) == ["README.md", "scripts/run_dkd.sh"]
    for name, content in table_scripts.outputs(str(tmp_path)).items():
        (tmp_path / name).write_text(content)
    assert table_scripts.stale(str(tmp_path)) == []
    assert "`--dkd_alpha 1 --dkd_beta 3 --dkd_T 4 --dkd_warmup 20` (`res56_res20.yaml`)" in \
        (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("script, file", [("run_kdrefine.sh", "kdrefine_table.yaml"),
                                          ("run_dkd.sh", "dkd_table.yaml")])
def test_each_line_is_the_first_trial_of_its_cell(tmp_path, script, file):
    """Run with a stand-in python and the table's teachers: the lines are the commands
    run_table.py --dry_run prints for trial 1 of the script's columns, less '--trial 1'."""
    table = run_table.load_table(os.path.join(ROOT, "experiments", file))
    columns = table_scripts.rep_columns(table) if script == "run_kdrefine.sh" else list(table.columns)
    expected = [["train_student.py", *cell.args[:-2]] for cell in run_table.expand(table)
                if cell.trial == 1 and cell.column in columns]
    assert all(cell.args[-2:] == ("--trial", "1") for cell in run_table.expand(table) if cell.trial == 1)
    out, calls = run_script(tmp_path, script, TEACHERS=table.teachers)
    assert out.returncode == 0, out.stderr
    assert [call.split() for call in calls] == expected


def test_the_readme_tables_show_each_cell_and_why_a_cell_is_empty():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    for file, block in (("dkd_table.yaml", "DKD values"), ("ls_table.yaml", "LS values")):
        table = run_table.load_table(os.path.join(ROOT, "experiments", file))
        text = readme.split(table_scripts.begin(block))[1].split(table_scripts.end(block))[0]
        for (row, column), flags in table.cells.items():
            line = next(t for t in text.splitlines() if t.startswith(f"| {table_scripts.pair(row)} |"))
            shown = f"— ({table.sources[(row, column)]})" if table.skipped(row, column) else f"`{flags}`"
            assert shown in line, (row, column, line)
