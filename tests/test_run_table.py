"""scripts/run_table.py: experiment files expand to train_student.py commands; the local
executor (submitit, real subprocess jobs, a stand-in training program) runs, reruns only what
is unfinished and reports status; the SLURM path against stand-in sbatch/sacct commands."""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import sys

import pytest
import submitit

import train_student
from distiller_zoo import get_method
from scripts import run_table

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

# The stand-in training program: finds its resolved configuration in $FAKE_MAP (what the test
# computed with run_table.plan), writes a finished metrics file, records its arguments.
FAKE = """
import json, os, sys
args = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
entry = json.load(open(os.environ["FAKE_MAP"]))[json.dumps(args)]
if "--resume" in sys.argv and not os.path.isfile(entry["last"]):
    sys.exit("resume without a checkpoint")
if entry["folder"].endswith(os.environ.get("FAKE_FAIL", "-")):
    print("epoch 1 loss nan: stopping")
    sys.exit(3)
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


@pytest.mark.parametrize("name", ["kdrefine_table", "dkd_table", "ls_table"])
def test_columns_spell_out_the_method_recipes(name):
    """-r/-a/-b written in a column are the registry's recipe (plain methods, no --logit_stand)."""
    table = run_table.load_table(os.path.join(EXPERIMENTS, name + ".yaml"))
    for column in table.columns.values():
        flags = shlex.split(column.get("flags", ""))
        if "--logit_stand" in flags or "-r" not in flags:
            continue
        recipe = get_method(column["distill"]).recipe
        given = {k: float(flags[flags.index(f) + 1]) for k, f in
                 (("gamma", "-r"), ("alpha", "-a"), ("beta", "-b"))}
        assert given == {"gamma": recipe.gamma, "alpha": recipe.alpha, "beta": recipe.beta}


def test_dkd_table_has_the_readme_values():
    """Every DKD cell's --dkd_* values are the README table's (and its '—' cells are skipped)."""
    table = run_table.load_table(os.path.join(EXPERIMENTS, "dkd_table.yaml"))
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    section = readme.split("### DKD's per-pair values")[1].split("\n### ")[0]
    rows = re.findall(r"^\| (\S+) → (\S+) \| (.+?) \| (.+?) \|$", section, re.M)[1:]  # [0]: the header
    assert len(rows) == len(table.rows) == 16
    for teacher, student, plain, ls in rows:
        for column, text in (("DKD", plain), ("DKD+LS", ls)):
            value = table.cells[(f"{teacher} -> {student}", column)]
            numbers = re.match(r"([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)", text)
            if numbers is None:
                assert value == "skip"
            else:
                flags = shlex.split(value)
                assert [flags[flags.index(f"--dkd_{k}") + 1] for k in
                        ("alpha", "beta", "T", "warmup")] == list(numbers.groups())


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
