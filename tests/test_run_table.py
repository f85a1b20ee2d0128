"""scripts/run_table.py: experiment files expand to train_student.py commands (a column's method
may come from a plugin the file names); the local executor (submitit, real subprocess jobs, a
stand-in training program, and a digits table of real train_student.py runs) runs, reruns only
what is unfinished and reports status; the SLURM path against stand-in sbatch/sacct commands."""
from __future__ import annotations

import builtins
import csv
import json
import os
import shlex
import signal
import stat
import sys
import threading
import time

import pytest
import submitit

import train_student
from dataset import DEFAULT_DATASET, num_classes
from distiller_zoo import get_method
from distiller_zoo.methods import METHODS
from helper.checkpoint import save_checkpoint
from models import model_dict
from scripts import run_table
from tests.cli_helpers import exit_message
from tests.test_extending import examples
from tests.test_plugins import plugin_dir  # noqa: F401  (a fixture: noop_plugin, broken_plugin)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")

MINI = """
name: mini
dataset: cifar100
trials: 2
teachers: save/models/{t}_vanilla/ckpt_epoch_240.pth
flags: --epochs 1
rows:
  - {teacher: resnet56, student: resnet20, rep: represnet20}
  - {teacher: resnet32x4, student: resnet8x4}
columns:
  KD: {distill: kd, flags: -r 0.1 -a 0.9 -b 0}
  KDrefine: {distill: kdrefine, student: rep}
cells:
  resnet32x4 -> resnet8x4: {KDrefine: skip, KD: --kd_T 3}
"""

# The stand-in training program: finds the resolved configuration of each run it trains (one,
# or --trials N from --trial t) in $FAKE_MAP (what the test computed with run_table.plan), writes
# finished metrics files, records its arguments.
FAKE = """
import json, os, sys
args = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
n = 1
for flag in ("--trials", "--trials_mode"):
    if flag in args:
        k = args.index(flag)
        n = int(args[k + 1]) if flag == "--trials" else n
        args = args[:k] + args[k + 2:]
first = args.index("--trial") + 1
runs = json.load(open(os.environ["FAKE_MAP"]))
entries = [runs[json.dumps(args[:first] + [str(int(args[first]) + k)] + args[first + 1:])]
           for k in range(n)]
if "--resume" in sys.argv and not all(os.path.isfile(e["last"]) for e in entries):
    sys.exit("resume without a checkpoint")
if any(e["folder"].endswith(os.environ.get("FAKE_FAIL", "-")) for e in entries):
    print("epoch 1 loss nan: stopping")
    sys.exit(3)
for entry in entries:
    os.makedirs(entry["folder"], exist_ok=True)
    metrics = {"test_acc": 50.0, "test_acc_top5": 80.0, "test_loss": 1.0, "epoch": 1,
               "planned_epochs": 1, "reached_epoch": 1, "config": entry["config"]}
    json.dump(metrics, open(os.path.join(entry["folder"], "test_last_metrics.json"), "w"))
print("done")
"""


def test_kdrefine_table_is_610_commands_that_train_student_parses():
    table = run_table.load_table(os.path.join(EXPERIMENTS, "kdrefine_table.yaml"))
    cells = run_table.expand(table)
    assert len(cells) == 9 * 14 * 5 - 4 * 5 == 610
    assert sum(c.column == "FSP" for c in cells) == 5 * 5
    teachers: dict = {}
    folders = {run_table.resolved(cell, teachers)["save_folder"] for cell in cells}
    assert len(folders) == 610  # every run its own folder
    kdrefine = [c for c in cells if c.column == "KDrefine"]
    assert {c.args[c.args.index("--model_s") + 1] for c in kdrefine} == {
        "repwrn_16_2", "repwrn_40_1", "represnet20", "represnet32", "repvgg8", "repmobilenetv2"}


@pytest.mark.parametrize("name", sorted(os.listdir(EXPERIMENTS)))
def test_columns_spell_out_the_method_recipes(name):
    """-r/-a/-b written in a column are the registry's recipe (plain methods, no --logit_stand);
    a weight left to the cells (ReviewKD's per-pair -b) is not a column's."""
    table = run_table.load_table(os.path.join(EXPERIMENTS, name))
    for column in table.columns.values():
        flags = shlex.split(column.get("flags", ""))
        if "--logit_stand" in flags or "-r" not in flags:
            continue
        recipe = get_method(column["distill"]).recipe
        given = {k: float(flags[flags.index(f) + 1]) for k, f in
                 (("gamma", "-r"), ("alpha", "-a"), ("beta", "-b")) if f in flags}
        assert given and given == {k: getattr(recipe, k) for k in given}


def published_tables(*ids: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(ROOT, "scripts", "published_results.json"), encoding="utf-8") as fh:
        published = json.load(fh)
    return published, [t for t in published["tables"] if t["id"] in ids]


@pytest.mark.parametrize("name, ids", [("rd_table", ("crd_table1", "crd_table2")),
                                       ("kdrefine_table", ("kdrefine",))])
def test_tables_are_the_published_ones(name, ids):
    """Rows, columns and skipped cells of a shipped table are those of the published table(s)
    it reproduces (scripts/published_results.json): a pair × method with a number is a cell, a
    method without one (null, or no row in that table) is skipped."""
    table = run_table.load_table(os.path.join(EXPERIMENTS, name + ".yaml"))
    published, tables = published_tables(*ids)
    pairs = [f"{c['teacher']} -> {c['student']}" for t in tables for c in t["columns"]]
    assert list(table.rows) == pairs
    assert {c: table.columns[c]["distill"] for c in table.columns} == \
        {c: d for c, d in published["method_names"].items() if c in table.columns}
    numbered = {(f"{c['teacher']} -> {c['student']}", method) for t in tables
                for k, c in enumerate(t["columns"]) for method, row in t["rows"].items()
                if row[k] is not None}
    cells = {(row, table.columns[column]["distill"]) for row in table.rows for column in table.columns
             if not table.skipped(row, column)}
    assert cells == numbered
    assert all(table.sources[key] for key in table.cells if table.skipped(*key))  # each says why


def test_rd_table_is_810_commands(capsys):
    """RepDistiller's table (the CRD paper's Tables 1 and 2): 13 pairs × 13 methods × 5 trials,
    less the 7 FSP cells the tables leave empty; every line parses."""
    assert run_table.main([os.path.join(EXPERIMENTS, "rd_table.yaml"), "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13 * 13 * 5 - 7 * 5 == 810
    assert sum("--distill fsp" in line for line in lines) == 6 * 5
    for line in lines[::97]:
        train_student.parse_option(shlex.split(line)[2:])


def test_pack_trials_dry_run_is_one_line_per_cell(capsys):
    """--pack_trials: one train_student.py --trials 5 line per cell, which trains the cell's
    five runs, folder for folder (engine.trials.trial_configs)."""
    path = os.path.join(EXPERIMENTS, "kdrefine_table.yaml")
    assert run_table.main([path, "--dry_run", "--pack_trials"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 * 14 - 4 == 122
    assert all(line.endswith("--trial 1 --trials 5") for line in lines)
    cells = run_table.expand(run_table.load_table(path))
    teachers: dict = {}
    for k in (0, 60, 121):
        packed = run_table.trial_configs_of(shlex.split(lines[k])[2:], "packed", teachers)
        separate = [run_table.resolved(c, teachers) for c in cells[5 * k:5 * k + 5]]
        assert [c["save_folder"] for c in packed] == [c["save_folder"] for c in separate]


def cell(trial: int, column: str = "KD", row: str = "a -> b") -> run_table.Cell:
    return run_table.Cell(row, column, trial, ("--distill", "kd", "--trial", str(trial)))


def test_packs_are_consecutive_trials_of_a_cell_with_one_action():
    cells = [cell(1), cell(2), cell(3), cell(5), cell(1, "AT"), cell(2, "AT")]
    actions = ["run", "run", "resume", "resume", "run", "run"]
    assert run_table.packs(cells, actions) == [[0, 1], [2], [3], [4, 5]]
    assert run_table.packed_args([cell(1)]) == ["--distill", "kd", "--trial", "1"]
    assert run_table.packed_args([cell(3), cell(4)], "resume")[-4:] == \
        ["--trials", "2", "--trials_mode", "shared_teacher"]  # resumed at maybe different epochs


def test_a_flag_train_student_refuses_is_one_line(tmp_path, capsys):
    """An argparse error inside a cell: one line naming the cell and the parser's message."""
    path = tmp_path / "t.yaml"
    path.write_text("rows: [{teacher: resnet8, student: resnet8}]\n"
                    "columns: {KD: {distill: kd, flags: --epochs x}}\n")
    with pytest.raises(SystemExit) as err:
        run_table.main([str(path), "--status", "--state_dir", str(tmp_path / "state")])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cell resnet8 -> resnet8 / KD / trial 1: train_student.py "
                               "refuses its flags: argument --epochs: invalid int value: 'x'")


def test_pack_trials_with_several_gpus_per_job_is_refused(capsys):
    with pytest.raises(SystemExit) as err:
        run_table.main([os.path.join(EXPERIMENTS, "rd_table.yaml"), "--executor", "slurm",
                        "--nodes", "2", "--pack_trials", "--dry_run"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --pack_trials trains a cell's trials in one")


def test_dry_run_prints_one_train_student_line_per_run(capsys):
    assert run_table.main([os.path.join(EXPERIMENTS, "kdrefine_table.yaml"), "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 610
    assert lines[0] == ("python train_student.py --path_t save/models/wrn_40_2_vanilla/"
                        "ckpt_epoch_240.pth --model_s wrn_16_2 --distill kd --dataset cifar100 "
                        "-r 0.1 -a 0.9 -b 0 --trial 1")
    assert all(shlex.split(line)[:2] == ["python", "train_student.py"] for line in lines)
    train_student.parse_option(shlex.split(lines[-1])[2:])


@pytest.mark.parametrize("text, fragment", [
    ("rows: []\ncolumns: {KD: {distill: kd}}", "'rows' must be a non-empty list"),
    ("rows: [{teacher: a, student: b}]\ncolumns: {X: {distill: nope}}", "'distill' must be one"),
    ("rows: [{teacher: a, student: b}]\ncolumns: {KD: {distill: kd}}\ncells: {c -> d: {KD: x}}",
     "no row 'c -> d'"),
    ("rows: [{teacher: a, student: b}]\ncolumns: {KD: {distill: kd}}\ntrials: 0", "'trials'"),
    ("colums: {}", "unknown key(s) colums"),
    ("rows: [\n", "not valid YAML"),
])
def test_a_broken_experiment_file_is_one_line(tmp_path, capsys, text, fragment):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as err:
        run_table.main([str(path), "--dry_run"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


@pytest.fixture
def method_plugin(plugin_dir, monkeypatch):  # noqa: F811
    """The current directory (test_plugins' ``plugin_dir``: noop_plugin.py, broken_plugin.py)
    with ``plugins/my_method.py``, the README's plugin method ``--distill emse``
    (tests/test_extending.py runs it as printed); the method registry as it was afterwards, and
    no count of noop_plugin's imports left behind."""
    (plugin_dir / "plugins").mkdir()
    (plugin_dir / "plugins" / "my_method.py").write_text(examples()["my_method.py"])
    monkeypatch.delitem(sys.modules, "my_method", raising=False)
    registered = dict(METHODS)
    yield plugin_dir
    METHODS.clear()
    METHODS.update(registered)
    sys.modules.pop("my_method", None)
    vars(builtins).pop("NOOP_IMPORTS", None)


PLUGIN_TABLE = """
plugins: [../plugins/my_method.py, noop_plugin]
rows: [{teacher: resnet8, student: resnet8}]
columns: {EMSE: {distill: emse, flags: --emse_normalize 0}}
"""


def test_a_plugin_method_is_a_column_and_every_command_carries_the_plugins(method_plugin, capsys):
    """The file's plugins are imported before its columns are checked (a path relative to the
    file, a module name as for --plugin); each command carries them as paths from the current
    directory, train_student.py's parser takes the line, and the configuration a finished run is
    compared with records them."""
    (method_plugin / "tables").mkdir()
    (method_plugin / "tables" / "t.yaml").write_text(PLUGIN_TABLE)
    assert "emse" not in METHODS
    assert run_table.main(["tables/t.yaml", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["python train_student.py --path_t save/models/resnet8_vanilla/ckpt_epoch_240.pth "
                     "--plugin plugins/my_method.py --plugin noop_plugin --model_s resnet8 --distill emse "
                     f"--dataset {DEFAULT_DATASET} --emse_normalize 0 --trial 1"]
    config = train_student.student_config(train_student.parse_option(shlex.split(lines[0])[2:]))
    assert (config["distill"], config["emse_normalize"]) == ("emse", 0)
    assert config["plugin"] == ["plugins/my_method.py", "noop_plugin"]
    [cell] = run_table.expand(run_table.load_table("tables/t.yaml"))
    assert run_table.resolved(cell, {})["plugin"] == config["plugin"]


@pytest.mark.parametrize("plugins, fragment", [
    ("[noop_plugin]", "column X: 'distill' must be one of "),
    ("[../plugins/my_method.py]", ", emse, "),  # the plugin's method is listed among the known
    ("[broken_plugin]", "t.yaml: plugins: --plugin broken_plugin: importing it failed (RuntimeError: "
                        "the plugin is broken)"),
    ("[../nowhere/my_method.py]", "t.yaml: plugins: --plugin nowhere/my_method.py: no such file"),
    ("{noop_plugin: 1}", "'plugins' must be a list of module names or .py paths"),
])
def test_an_unknown_column_method_or_a_broken_plugin_is_one_line(method_plugin, capsys, plugins, fragment):
    (method_plugin / "tables").mkdir()
    (method_plugin / "tables" / "t.yaml").write_text(
        f"plugins: {plugins}\nrows: [{{teacher: a, student: b}}]\ncolumns: {{X: {{distill: nope}}}}\n")
    line = exit_message(capsys, run_table.main, ["tables/t.yaml", "--dry_run"])
    assert fragment in line, line


def test_plugin_on_the_command_line_is_one_line_pointing_to_the_file(capsys):
    line = exit_message(capsys, run_table.main, [os.path.join(EXPERIMENTS, "dkd_table.yaml"), "--dry_run",
                                                 "--plugin", "my_method.py"])
    assert line.startswith("error: --plugin belongs in the experiment file: name the plugins there")
    assert "'plugins: [my_method.py]'" in line


@pytest.fixture
def mini(tmp_path, monkeypatch):
    """A 2 x 2 x 2 table (one cell skipped: 6 runs) in a scratch folder, with the stand-in
    program and its map of resolved configurations."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mini.yaml").write_text(MINI)
    (tmp_path / "fake_train.py").write_text(FAKE)
    cells = run_table.expand(run_table.load_table("mini.yaml"))
    plans = run_table.plan(cells)
    mapping = {json.dumps(list(p.cell.args)): {"config": p.trial.config, "folder": p.trial.run_folder,
                                               "last": p.trial.last_path} for p in plans}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    monkeypatch.setenv("FAKE_MAP", str(tmp_path / "map.json"))
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.txt"))
    return tmp_path, plans


def calls(root) -> list[list[str]]:
    path = root / "calls.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def status(capsys) -> list[str]:
    capsys.readouterr()
    assert run_table.main(["mini.yaml", "--status"]) == 0
    return capsys.readouterr().out.splitlines()


def test_local_table_runs_reruns_only_what_is_missing_and_reports(mini, capsys, monkeypatch):
    root, plans = mini
    program = ["--program", f"{sys.executable} fake_train.py", "--gpus", "", "--max_parallel", "2"]
    monkeypatch.setenv("FAKE_FAIL", plans[1].key)  # KD trial 2 of the first pair fails
    assert run_table.main(["mini.yaml", *program]) == 1
    assert len(calls(root)) == 6
    lines = status(capsys)
    assert lines[-1] == "done 5, running 0, queued 0, failed 1, missing 0, conflict 0 (of 6 runs)"
    assert lines[1].startswith("failed") and lines[1].endswith("epoch 1 loss nan: stopping")

    # interrupt one run after its first checkpoint, lose another, replace a third by another run
    monkeypatch.delenv("FAKE_FAIL")
    os.remove(os.path.join(plans[2].trial.run_folder, "test_last_metrics.json"))
    open(plans[2].trial.last_path, "w").close()
    os.remove(os.path.join(plans[3].trial.run_folder, "test_last_metrics.json"))
    other = os.path.join(plans[4].trial.run_folder, "test_last_metrics.json")
    record = json.load(open(other))
    record["config"]["epochs"] = 7
    json.dump(record, open(other, "w"))
    before = {p.key: os.stat(os.path.join(p.trial.run_folder, "test_last_metrics.json")).st_mtime_ns
              for p in (plans[0], plans[5])}
    lines = status(capsys)
    assert [line.split()[0] for line in lines[:-1]] == ["done", "failed", "missing", "missing",
                                                         "conflict", "done"]
    assert "epochs: 7 in the folder, 1 in the command" in lines[4]

    assert run_table.main(["mini.yaml", *program]) == 1  # the conflict is reported, not rerun
    assert "warning: not run: resnet32x4 -> resnet8x4 / KD / trial 1" in capsys.readouterr().err
    rerun = calls(root)[6:]
    assert sorted(json.dumps(c) for c in rerun) == sorted(json.dumps(c) for c in [
        list(plans[1].cell.args), list(plans[2].cell.args) + ["--resume"], list(plans[3].cell.args)])
    assert json.load(open(other))["config"]["epochs"] == 7  # never overwritten
    assert before == {p.key: os.stat(os.path.join(p.trial.run_folder,
                                                  "test_last_metrics.json")).st_mtime_ns
                      for p in (plans[0], plans[5])}
    assert status(capsys)[-1] == "done 5, running 0, queued 0, failed 0, missing 0, conflict 1 " \
                                 "(of 6 runs)"


STAND_INS = {
    "sbatch": 'echo "$@" >> "$REC/sbatch.args"; cp "$1" "$REC/sbatch_$(wc -l < "$REC/sbatch.args")'
              '.sh"; echo "Submitted batch job $((4241 + $(wc -l < "$REC/sbatch.args")))"',
    "sacct": 'echo "$@" >> "$REC/sacct.args"; cat "$REC/sacct.out" 2>/dev/null; true',
    "squeue": 'echo "$@" >> "$REC/squeue.args"',
    "scancel": 'echo "$@" >> "$REC/scancel.args"',
    "scontrol": 'echo "$@" >> "$REC/scontrol.args"',
    "srun": 'echo "$@" >> "$REC/srun.args"',
}


@pytest.fixture
def slurm(mini, monkeypatch):
    root, plans = mini
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("REC", str(root))
    return root, plans


def test_slurm_array_resources_requeue_status_and_preemption(slurm, capsys):
    root, plans = slurm
    args = ["mini.yaml", "--executor", "slurm", "--program", f"{sys.executable} fake_train.py",
            "--partition", "gpu", "--gpus_per_job", "1", "--time", "90", "--account", "proj",
            "--array_parallelism", "4"]
    assert run_table.main(args) == 0
    script = (root / "sbatch_1.sh").read_text()
    for line in ("#SBATCH --array=0-5%4", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --time=90", "#SBATCH --nodes=1",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --job-name=table_mini"):
        assert line in script.splitlines(), (line, script)
    jobs = json.load(open(root / "save/tables/mini/jobs.json"))
    assert sorted(e["job_id"] for e in jobs.values()) == [f"4242_{i}" for i in range(6)]

    log = root / "save/tables/mini/logs" / (plans[2].key + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("Epoch: [3][10/782]\nRuntimeError: CUDA out of memory\n")
    (root / "sacct.out").write_text("JobID|State|NodeList\n4242_0|RUNNING|n1\n4242_1|PENDING|\n"
                                    "4242_2|FAILED|n2\n4242_3|RUNNING|n1\n4242_4|RUNNING|n1\n"
                                    "4242_5|PENDING|\n")
    lines = status(capsys)
    assert [line.split()[0] for line in lines[:3]] == ["running", "queued", "failed"]
    assert lines[2].endswith("RuntimeError: CUDA out of memory")

    assert run_table.main(args) == 0  # only the failed run is submitted again
    assert (root / "sbatch.args").read_text().count("\n") == 2
    assert "#SBATCH --array" not in (root / "sbatch_2.sh").read_text()  # one job, no array
    assert json.load(open(root / "save/tables/mini/jobs.json"))[plans[2].key]["job_id"] == "4243"

    # preemption of 4242_0 after its first epoch: submitit calls checkpoint(), which requeues the
    # same cell; the requeued job continues with --resume
    submitted = submitit.SlurmJob(root / "save/tables/mini/submitit", "4242_0").paths.submitted_pickle
    job = submitit.helpers.DelayedSubmission.load(submitted)
    os.makedirs(plans[0].trial.run_folder)
    open(plans[0].trial.last_path, "w").close()
    requeued = job.function.checkpoint(*job.args, **job.kwargs)
    assert requeued.function.action == "resume" and requeued.function.command == job.function.command
    requeued.result()
    assert calls(root)[-1] == list(plans[0].cell.args) + ["--resume"]
    assert status(capsys)[0].startswith("done")


def test_local_pack_trials_trains_a_cells_trials_in_one_job(mini, capsys, monkeypatch):
    """--pack_trials: one job per cell (train_student.py --trials 2); a rerun packs the trials
    of a cell that share an action and runs the others alone (new, resumed)."""
    root, plans = mini
    program = ["--program", f"{sys.executable} fake_train.py", "--gpus", "", "--max_parallel", "2",
               "--pack_trials"]
    monkeypatch.setenv("FAKE_FAIL", plans[1].key)  # the first pair's KD job (trials 1-2) fails
    assert run_table.main(["mini.yaml", *program]) == 1
    assert "6 of 6 runs to start in 3 jobs" in capsys.readouterr().out
    jobs = calls(root)
    assert sorted(json.dumps(c) for c in jobs) == sorted(
        json.dumps(list(plans[k].cell.args) + ["--trials", "2"]) for k in (0, 2, 4))
    book = json.load(open(root / "save/tables/mini/jobs.json"))
    assert book[plans[0].key] == book[plans[1].key]  # one job, one log for both runs
    assert [line.split()[0] for line in status(capsys)[:-1]] == ["failed", "failed"] + ["done"] * 4

    monkeypatch.delenv("FAKE_FAIL")
    os.remove(os.path.join(plans[2].trial.run_folder, "test_last_metrics.json"))
    open(plans[2].trial.last_path, "w").close()  # interrupted after its first checkpoint
    os.remove(os.path.join(plans[3].trial.run_folder, "test_last_metrics.json"))
    assert run_table.main(["mini.yaml", *program]) == 0
    rerun = calls(root)[3:]
    assert sorted(json.dumps(c) for c in rerun) == sorted(json.dumps(c) for c in [
        list(plans[0].cell.args) + ["--trials", "2"], list(plans[2].cell.args) + ["--resume"],
        list(plans[3].cell.args)])
    assert status(capsys)[-1] == "done 6, running 0, queued 0, failed 0, missing 0, conflict 0 " \
                                 "(of 6 runs)"


def test_slurm_multi_node_jobs_run_torchrun_on_each_node(slurm, monkeypatch):
    """--nodes 2 --gpus_per_job 4: one task per node, each starting torchrun with its node's rank
    and the master address and port of submitit's TorchDistributedEnvironment (the same on
    every node); node 1 logs to its own file."""
    root, plans = slurm
    assert run_table.main(["mini.yaml", "--executor", "slurm", "--program",
                           f"{sys.executable} fake_train.py", "--nodes", "2", "--gpus_per_job", "4",
                           "--cpus_per_job", "8", "--time", "600"]) == 0
    script = (root / "sbatch_1.sh").read_text().splitlines()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --array=0-5%6", "#SBATCH --requeue"):
        assert line in script, (line, script)
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in script)

    submitted = submitit.SlurmJob(root / "save/tables/mini/submitit", "4242_0").paths.submitted_pickle
    job = submitit.helpers.DelayedSubmission.load(submitted).function
    assert (job.nodes, job.gpus) == (2, 4)
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242",
           "SLURM_ARRAY_TASK_ID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_LOCALID": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    commands = {}
    for node in (0, 1):
        monkeypatch.setenv("SLURM_NODEID", str(node))
        monkeypatch.setenv("SLURM_PROCID", str(node))
        commands[node] = job.final_command()
        assert commands[node][:11] == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                       "--nproc_per_node", "4", "--node_rank", str(node),
                                       "--master_addr", "gpu07"]
        assert commands[node][11] == "--master_port" and 20000 <= int(commands[node][12]) <= 60000
        assert commands[node][13:] == ["fake_train.py", *plans[0].cell.args]
    assert commands[0][12] == commands[1][12]
    assert job.node_log() == job.log_path + ".node1"
    monkeypatch.setenv("SLURM_NODEID", "0")
    assert job.node_log() == job.log_path


REAL = """
name: real
dataset: digits
trials: 2
teachers: teachers/{t}.pth
plugins: [plugins/my_method.py]
flags: --epochs 1 --batch_size 256 --num_workers 0 --device cpu --print_freq 100
rows:
  - {teacher: resnet8, student: resnet8}
  - {teacher: resnet14, student: resnet8}
columns:
  KD: {distill: kd}
  EMSE: {distill: emse}
"""


@pytest.fixture
def real_table(method_plugin):
    """A 2 × 2 × 2 table of real train_student.py runs in a scratch folder, on the offline digits
    set (one epoch of batches of 256), its second column the README's plugin method, with two
    untrained teachers of the set's class count that record their architecture."""
    (method_plugin / "real.yaml").write_text(REAL)
    table = run_table.load_table("real.yaml")
    (method_plugin / "teachers").mkdir()
    for name in ("resnet8", "resnet14"):
        model = model_dict[name](num_classes=num_classes(table.dataset))
        save_checkpoint({"model": model.state_dict(), "arch": name},
                        str(method_plugin / "teachers" / f"{name}.pth"))
    return run_table.plan(run_table.expand(table))


def finished(plan: run_table.Plan) -> tuple[int, bytes]:
    path = os.path.join(plan.trial.run_folder, "test_last_metrics.json")
    with open(path, "rb") as fh:
        return os.stat(path).st_mtime_ns, fh.read()


@pytest.mark.slow
def test_real_table_runs_is_interrupted_reruns_the_rest_and_summarizes(real_table, capsys):
    """End to end through submitit's local executor, real train_student.py processes, one job per
    cell (--pack_trials): Ctrl-C once the first cell is done stops the table (the running job is
    cancelled); --status shows 2 done, 6 missing; the same command then trains only the missing
    runs (the finished ones untouched, byte for byte); --summarize writes the results table. The
    plugin column's runs record the plugin, and count as done when the table is read again."""
    plans = real_table
    book_path = os.path.join("save", "tables", "real", "jobs.json")
    first = {plans[0].key, plans[1].key}
    running = threading.Event()

    def interrupt_after_the_first_cell() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and running.is_set():
            try:
                with open(book_path, encoding="utf-8") as fh:
                    jobs = json.load(fh)
            except (OSError, ValueError):
                jobs = {}
            if all(jobs.get(key, {}).get("outcome") == "done" for key in first):
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C
                return
            time.sleep(0.2)

    def ctrl_c(signum, frame):
        if running.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, ctrl_c)
    running.set()
    watcher = threading.Thread(target=interrupt_after_the_first_cell, daemon=True)
    watcher.start()
    try:
        with pytest.raises(SystemExit) as stop:
            run_table.main(["real.yaml", "--gpus", "", "--max_parallel", "1", "--pack_trials"])
    finally:
        running.clear()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    assert stop.value.code == 130
    lines = capsys.readouterr()
    assert "4 jobs" in lines.out and "interrupted" in lines.err
    assert run_table.main(["real.yaml", "--status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["done", "done"] + ["missing"] * 6, out
    before = {p.key: finished(p) for p in plans[:2]}
    job_ids = {key: entry["job_id"] for key, entry in json.load(open(book_path)).items() if key in first}

    assert run_table.main(["real.yaml", "--gpus", "", "--max_parallel", "3", "--pack_trials"]) == 0
    assert "6 of 8 runs to start in 3 jobs (0 queued or running, 2 done)" in capsys.readouterr().out
    assert run_table.main(["real.yaml", "--status"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "done 8, running 0, queued 0, failed 0, missing 0, conflict 0 (of 8 runs)"
    assert {p.key: finished(p) for p in plans[:2]} == before  # untouched
    jobs = json.load(open(book_path))
    assert {key: jobs[key]["job_id"] for key in first} == job_ids
    recorded = json.loads(finished(plans[2])[1])["config"]  # the first pair's EMSE, trial 1
    assert (recorded["distill"], recorded["plugin"]) == ("emse", ["plugins/my_method.py"])

    assert run_table.main(["real.yaml", "--summarize"]) == 0
    out = capsys.readouterr().out
    assert "partial table" not in out
    with open(os.path.join("save", "tables", "real", "results.csv"), encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and os.path.isfile(os.path.join("save", "tables", "real", "results.png"))
    assert all(row["n"] == "2" for row in rows), rows
