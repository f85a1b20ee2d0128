"""scripts/summarize.py on hand-made save trees with mixed settings, and helper/provenance."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import statistics
import sys

import pytest

from helper.provenance import (ABSENT, BOOKKEEPING_KEYS, TEACHER_KEY, config_differences,
                               describe_differences, is_finished, metric_value, result_settings)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHA_A, SHA_B = "a1" * 32, "b2" * 32


def load_summarize():
    spec = importlib.util.spec_from_file_location(
        "summarize", os.path.join(ROOT, "scripts", "summarize.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["summarize"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def config(model_s, model_t, distill, blocktype, epochs, trial, dataset):
    """A --print_config dict as train_student.py prints it (the keys the tests need)."""
    return {"model_s": model_s, "model_t": model_t, "distill": distill, "dataset": dataset,
            "path_t": f"save/models/{model_t}_vanilla/ckpt_epoch_240.pth", "gamma": 0.1,
            "alpha": 0.9, "beta": 0.0, "kd_T": 4, "blocktype": blocktype, "trial": str(trial),
            "seed": trial, "epochs": epochs, "learning_rate": 0.05,
            "lr_decay_epochs": [150, 180, 210], "lr_decay_rate": 0.1, "weight_decay": 5e-4,
            "momentum": 0.9, "batch_size": 64, "amp": False, "compile": False,
            "loader": "device", "print_freq": 100, "device": "auto", "num_workers": 8,
            "resume": None, "overwrite": False, "print_config": False, "trials": 1,
            "trials_mode": "auto", "data_folder": f"./data{trial}",
            "save_folder": f"save/student_model/run_{trial}"}


def add_run(root, student, teacher, method, trial, acc, *, blocktype="AMBB", epochs=3,
            reached=None, sha=SHA_A, dataset="cifar100", provenance=True, raw=None):
    """Write one run folder with its test_last_metrics.json (``raw``: the file's text)."""
    tail = "" if blocktype == "AMBB" else f"_t_{blocktype}"
    folder = root / f"S_{student}_T_{teacher}_{dataset}_{method}{tail}_r_0.1_a_0.9_b_0.0_{trial}"
    folder.mkdir(parents=True)
    reached = epochs if reached is None else reached
    metrics = {"test_acc": acc, "test_acc_top5": 90.0, "test_loss": 1.0, "epoch": reached}
    if provenance:
        metrics.update(planned_epochs=epochs, reached_epoch=reached,
                       config=config(student, teacher, method, blocktype, epochs, trial, dataset),
                       teacher={"path": "t.pth", "sha256": sha, "test_acc": 74.3},
                       versions={"torch": "2.14.1", "project": "test"}, wall_time_s=1.5)
    (folder / "test_last_metrics.json").write_text(raw if raw is not None else json.dumps(metrics))
    return folder


@pytest.fixture
def tree(tmp_path):
    """Mixed settings: 1-, 2-, 3-epoch runs, two teacher files, ACB and AMBB blocks, files
    without provenance, NaN / true / 150.0 / broken JSON, unfinished runs, two data sets."""
    root = tmp_path / "save" / "student_model"
    for trial, acc in enumerate([74.0, 75.0, 76.5], 1):
        add_run(root, "wrn_16_2", "wrn_40_2", "kd", trial, acc)
    add_run(root, "wrn_16_2", "wrn_40_2", "kd", 4, 60.0, epochs=2)
    add_run(root, "wrn_16_2", "wrn_40_2", "kd", 5, 40.0, epochs=1)
    add_run(root, "wrn_16_2", "wrn_40_2", "kd", 6, 10.0, epochs=3, reached=1)  # unfinished
    add_run(root, "repwrn_16_2", "wrn_40_2", "kdrefine", 1, 75.8)
    add_run(root, "repwrn_16_2", "wrn_40_2", "kdrefine", 2, 76.1)
    add_run(root, "represnet20", "resnet110", "kdrefine", 1, 71.5)
    add_run(root, "represnet20", "resnet110", "kdrefine", 2, 72.1)
    add_run(root, "represnet20", "resnet110", "kdrefine", 3, 70.2, sha=SHA_B)
    add_run(root, "represnet20", "resnet110", "kdrefine", 4, 30.0, reached=1)  # unfinished
    add_run(root, "represnet20", "resnet110", "kdrefine", 5, 71.0, provenance=False)
    add_run(root, "represnet20", "resnet110", "kdrefine", 1, 71.0, blocktype="ACB")
    add_run(root, "represnet20", "resnet110", "kdrefine", 2, 71.3, blocktype="ACB")
    add_run(root, "represnet20", "resnet110", "kd", 1, 70.3)
    add_run(root, "represnet20", "resnet110", "kd", 2, 70.9)
    add_run(root, "represnet20", "resnet56", "kdrefine", 1, 70.0, provenance=False)
    add_run(root, "represnet20", "resnet56", "kdrefine", 2, 70.8, provenance=False)
    add_run(root, "represnet20", "resnet56", "kdrefine", 3, float("nan"), provenance=False)
    add_run(root, "represnet20", "resnet56", "kdrefine", 4, True)
    add_run(root, "represnet20", "resnet56", "kdrefine", 5, 150.0)
    add_run(root, "represnet20", "resnet56", "kdrefine", 6, 0, raw="{not json")
    add_run(root, "represnet20", "resnet56", "kdrefine", 7, 0, raw='{"test_acc": Infinity}')
    add_run(root, "represnet20", "resnet56", "kdrefine", 8, 0, raw='{"test_acc": "71.2"}')
    for trial, acc in enumerate([97.0, 98.1, 97.6], 1):
        add_run(root, "represnet8", "resnet20", "kdrefine", trial, acc, dataset="digits")
    return root


def cell(values, marks=""):
    std = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "—"
    return f"{statistics.fmean(values):.2f} ± {std} ({len(values)}){marks}"


def summarize_main(*args):
    """(exit status, stdout, stderr) of summarize.main."""
    return load_summarize().main(list(args))


@pytest.fixture
def run(capsys):
    def call(*args):
        try:
            status = summarize_main(*args)
        except SystemExit as exc:
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err
    return call


def table_rows(out: str) -> dict[str, list[str]]:
    """The Markdown table as {row label: cells}."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_cells_pool_only_runs_of_the_same_settings(tree, run):
    status, out, err = run(str(tree))
    assert status == 0
    rows = table_rows(out)
    wrn, res110 = "cifar100: wrn_40_2 → wrn_16_2", "cifar100: resnet110 → represnet20"
    res56, rep_wrn = "cifar100: resnet56 → represnet20", "cifar100: wrn_40_2 → repwrn_16_2"
    digits = "digits: resnet20 → represnet8"
    assert list(rows) == ["kd (epochs=1)", "kd (epochs=2)", "kd (epochs=3)", "kdrefine",
                          "kdrefine (settings unknown)", "kdrefine (t=ACB)",
                          "kdrefine (teacher sha a1a1a1)", "kdrefine (teacher sha b2b2b2)"]
    assert rows["kd (epochs=1)"][wrn] == cell([40.0])
    assert rows["kd (epochs=2)"][wrn] == cell([60.0])
    assert rows["kd (epochs=3)"][wrn] == cell([74.0, 75.0, 76.5]) == "75.17 ± 1.26 (3)"
    assert rows["kd (epochs=3)"][res110] == cell([70.3, 70.9])
    assert rows["kdrefine (teacher sha a1a1a1)"][res110] == cell([71.5, 72.1])
    assert rows["kdrefine (teacher sha b2b2b2)"][res110] == cell([70.2])
    assert rows["kdrefine (settings unknown)"][res110] == cell([71.0], " †")
    assert rows["kdrefine (t=ACB)"][res110] == cell([71.0, 71.3])
    assert rows["kdrefine"][res56] == cell([70.0, 70.8], " †")
    assert rows["kdrefine"][rep_wrn] == cell([75.8, 76.1])
    assert rows["kdrefine"][digits] == cell([97.0, 98.1, 97.6])
    assert rows["kdrefine"][res110] == ""
    # pairs: data set, then the published tables' order
    assert list(rows["kdrefine"]) == [rep_wrn, wrn, res56, res110, digits]

    footnotes = out.split("\n\n")[-1]
    assert "† these metrics files record no settings (older format): their runs are pooled " \
           "by folder name alone; their settings could not be checked." in footnotes
    assert "Unfinished runs (left out; --include_unfinished counts them):" in footnotes
    for name, of in (("S_wrn_16_2_T_wrn_40_2_cifar100_kd_r_0.1_a_0.9_b_0.0_6", "1 of 3"),
                     ("S_represnet20_T_resnet110_cifar100_kdrefine_r_0.1_a_0.9_b_0.0_4",
                      "1 of 3")):
        assert f"- {tree / name}: epoch {of}" in footnotes
    assert "‡" not in out


def test_invalid_values_are_skipped_with_a_warning_naming_the_file(tree, run):
    status, _, err = run(str(tree))
    assert status == 0
    stem = str(tree / "S_represnet20_T_resnet56_cifar100_kdrefine_r_0.1_a_0.9_b_0.0_{}"
               / "test_last_metrics.json")
    assert err.splitlines() == [
        f"warning: skipping {stem.format(3)}: test_acc is nan, not a finite number",
        f"warning: skipping {stem.format(4)}: test_acc is true, not a number",
        f"warning: skipping {stem.format(5)}: test_acc is 150.0, outside [0, 100]",
        f"warning: skipping {stem.format(6)}: not valid JSON (Expecting property name "
        "enclosed in double quotes at line 1 column 2)",
        f"warning: skipping {stem.format(7)}: test_acc is inf, not a finite number",
        f'warning: skipping {stem.format(8)}: test_acc is "71.2", not a number',
    ]


def test_include_unfinished_counts_and_marks_them(tree, run):
    status, out, _ = run(str(tree), "--include_unfinished")
    assert status == 0
    rows = table_rows(out)
    assert rows["kd (epochs=3)"]["cifar100: wrn_40_2 → wrn_16_2"] == \
        cell([74.0, 75.0, 76.5, 10.0], " ‡")
    assert rows["kdrefine (teacher sha a1a1a1)"]["cifar100: resnet110 → represnet20"] == \
        cell([71.5, 72.1, 30.0], " ‡")
    assert "‡ includes unfinished runs (--include_unfinished), listed below." in out
    assert "Unfinished runs (counted in their cells):" in out


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_csv_one_row_per_cell(tree, run, tmp_path):
    path = tmp_path / "cells.csv"
    status, _, _ = run(str(tree), "--csv", str(path))
    assert status == 0
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["dataset", "teacher", "student", "method", "blocktype", "gamma", "alpha",
                      "beta", "setting", "mean", "std", "n", "published", "diff", "checked",
                      "unfinished"]
    rows = read_csv(path)
    assert len(rows) == 11  # the cells of the Markdown table
    by = {(r["dataset"], r["teacher"], r["student"], r["method"], r["blocktype"],
           r["setting"]): r for r in rows}
    kd3 = by["cifar100", "wrn_40_2", "wrn_16_2", "kd", "AMBB", "epochs=3"]
    assert float(kd3["mean"]) == pytest.approx(statistics.fmean([74.0, 75.0, 76.5]), abs=1e-6)
    assert float(kd3["std"]) == pytest.approx(statistics.stdev([74.0, 75.0, 76.5]), abs=1e-6)
    assert kd3["n"] == "3" and kd3["checked"] == "1" and kd3["unfinished"] == "0"
    assert (kd3["gamma"], kd3["alpha"], kd3["beta"]) == ("0.1", "0.9", "0.0")
    assert float(kd3["published"]) == 74.92  # CRD Table 1, KD, wrn_40_2 -> wrn_16_2
    assert float(kd3["diff"]) == pytest.approx(statistics.fmean([74.0, 75.0, 76.5]) - 74.92,
                                               abs=1e-6)
    single = by["cifar100", "resnet110", "represnet20", "kdrefine", "AMBB", "teacher sha b2b2b2"]
    assert single["std"] == "" and single["n"] == "1"
    assert float(single["published"]) == 71.99  # KDrefine README, resnet110 -> resnet20
    acb = by["cifar100", "resnet110", "represnet20", "kdrefine", "ACB", ""]
    assert acb["published"] == "" and acb["diff"] == ""  # published for AMBB students only
    old = by["cifar100", "resnet56", "represnet20", "kdrefine", "AMBB", ""]
    assert old["checked"] == "0" and float(old["mean"]) == pytest.approx(70.4)
    digits = by["digits", "resnet20", "represnet8", "kdrefine", "AMBB", ""]
    assert digits["published"] == "" and digits["n"] == "3"
    for row in rows:
        for key in ("gamma", "alpha", "beta", "mean"):
            assert math.isfinite(float(row[key]))


def test_published_numbers_beside_the_cells(tree, run):
    status, out, _ = run(str(tree), "--published")
    assert status == 0
    assert out.startswith("test_acc: mean ± sample std (number of trials) "
                          "[published, ours - published]\n")
    rows = table_rows(out)
    wrn, res110 = "cifar100: wrn_40_2 → wrn_16_2", "cifar100: resnet110 → represnet20"
    assert rows["kd (epochs=3)"][wrn] == "75.17 ± 1.26 (3) [74.92, +0.25]"
    # a rep student under kd: compared with CRD's plain resnet20 (marked *)
    assert rows["kd (epochs=3)"][res110] == "70.60 ± 0.42 (2) [70.67*, -0.07]"
    assert rows["kdrefine (teacher sha a1a1a1)"][res110] == "71.80 ± 0.42 (2) [71.99, -0.19]"
    assert rows["kdrefine"]["cifar100: resnet56 → represnet20"] == \
        "70.40 ± 0.57 (2) † [71.81, -1.41]"
    assert rows["kdrefine"]["cifar100: wrn_40_2 → repwrn_16_2"] == \
        "75.95 ± 0.21 (2) [75.97, -0.02]"
    assert rows["kdrefine (t=ACB)"][res110] == "71.15 ± 0.21 (2)"
    assert rows["kdrefine"]["digits: resnet20 → represnet8"] == cell([97.0, 98.1, 97.6])
    assert "* published for the plain student (CRD trains plain students)" in out
    assert "github.com/HobbitLong/RepDistiller" in out and "ICLR 2020, Table 1" in out
    assert "github.com/YujieZheng99/KDrefine" in out


def test_published_data_file_matches_the_sources():
    with open(os.path.join(ROOT, "scripts", "published_results.json"), encoding="utf-8") as fh:
        data = json.load(fh)
    tables = {t["id"]: t for t in data["tables"]}
    assert set(tables) == {"kdrefine", "crd_table1", "crd_table2", "mdistiller_dkd", "mdistiller_dot",
                           "logit_stand_identical", "logit_stand_identical_ls", "logit_stand_distinct",
                           "logit_stand_distinct_ls", "ctkd"}
    for table in tables.values():
        assert table["source"] and table["columns"]
        for row in table["rows"].values():
            assert len(row) == len(table["columns"])
    kdr = tables["kdrefine"]
    assert [(c["teacher"], c["student"]) for c in kdr["columns"]] == [
        ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
        ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("vgg13", "vgg8"),
        ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8")]
    assert kdr["rows"]["kdrefine"] == [75.97, 74.62, 71.81, 71.99, 74.08, 74.70, 68.90, 69.60,
                                       74.88]
    crd1 = tables["crd_table1"]
    assert crd1["rows"]["crd"] == [75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94]
    assert crd1["rows"]["fsp"][1] is None  # N/A: FSP needs equal channel counts
    assert crd1["columns"][5] == {"teacher": "resnet32x4", "student": "resnet8x4",
                                  "teacher_acc": 79.42, "student_acc": 72.5}
    assert tables["crd_table2"]["rows"]["kd"] == [67.37, 67.35, 73.81, 74.07, 74.45, 74.83]
    # KDrefine's README repeats the CRD numbers for the baselines
    crd = {(c["teacher"], c["student"], m): row[i] for t in ("crd_table1", "crd_table2")
           for m, row in tables[t]["rows"].items() for i, c in enumerate(tables[t]["columns"])}
    for method, row in kdr["rows"].items():
        for col, value in zip(kdr["columns"], row):
            if method != "kdrefine" and (col["teacher"], col["student"], method) in crd:
                assert crd[col["teacher"], col["student"], method] == value


def test_published_numbers_of_the_newer_methods():
    """The DKD, DOT, CTKD and logit-standardization tables (pinned from their READMEs), and
    which runs each one's numbers stand beside: a table with logit standardization (DOT) only
    beside runs with --logit_stand (--dot), the others only beside runs without."""
    pub = load_summarize().PublishedResults()
    tables = pub.tables
    assert tables["logit_stand_identical_ls"]["logit_stand"] and tables["mdistiller_dot"]["dot"]
    assert tables["logit_stand_identical_ls"]["rows"]["mlkd"] == [78.28, 75.22, 75.56, 76.95, 72.33, 74.32, 72.27]
    assert tables["logit_stand_distinct"]["rows"]["ctkd"] == [75.37, 74.57, 77.66, 74.61, 68.34, 68.50, 68.67]
    assert tables["mdistiller_dot"]["rows"]["kd"] == [75.12, 73.77, 75.55]
    assert tables["mdistiller_dkd"]["rows"]["dkd"][-1] == 77.07  # resnet32x4 -> ShuffleV2
    assert tables["ctkd"]["rows"]["ctkd"] == [71.19, 73.52, 70.99, 75.45, 73.93, 73.52]

    def value(teacher, student, method, stand=False, dot=False, blocktype="AMBB"):
        found = pub.lookup("cifar100", teacher, student, method, blocktype, "test_acc", stand, dot)
        return None if found is None else (found.value, found.table)

    assert value("resnet56", "resnet20", "mlkd", stand=True) == (72.33, "logit_stand_identical_ls")
    assert value("resnet56", "represnet20", "mlkd") == (72.19, "logit_stand_identical")
    assert value("resnet32x4", "resnet8x4", "kd", stand=True) == (76.62, "logit_stand_identical_ls")
    assert value("resnet32x4", "resnet8x4", "kd") == (73.33, "crd_table1")  # CRD's tables first
    assert value("resnet32x4", "wrn_40_2", "kd") == (77.70, "logit_stand_distinct")
    assert value("resnet32x4", "resnet8x4", "kd", dot=True) == (75.12, "mdistiller_dot")
    assert value("resnet32x4", "resnet8x4", "kd", stand=True, dot=True) is None
    assert value("resnet56", "resnet20", "dkd") == (71.97, "mdistiller_dkd")
    assert value("resnet56", "resnet20", "ctkd") == (71.19, "logit_stand_identical")
    assert value("resnet110", "represnet20", "kdrefine", stand=True) is None  # KDrefine's row: no LS
    assert value("resnet110", "represnet20", "kdrefine") == (71.99, "kdrefine")


def test_output_paths_that_cannot_be_written(tree, run, tmp_path):
    status, out, err = run(str(tree), "--csv", str(tmp_path))
    assert status == 2 and out == ""
    assert err == f"error: --csv {tmp_path} is a directory; give a file name\n"
    missing = tmp_path / "no" / "such" / "cells.csv"
    status, out, err = run(str(tree), "--csv", str(missing))
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: --csv {missing}: folder")
    status, _, err = run(str(tree), "--png", str(tmp_path))
    assert status == 2 and err == f"error: --png {tmp_path} is a directory; give a file name\n"


def test_all_runs_unfinished(tmp_path, run):
    root = tmp_path / "runs"
    add_run(root, "wrn_16_2", "wrn_40_2", "kd", 1, 10.0, epochs=3, reached=2)
    status, out, err = run(str(root))
    assert status == 2
    assert "Unfinished runs (left out; --include_unfinished counts them):" in out
    assert err == (f"error: all 1 runs under {root} are unfinished; --include_unfinished "
                   "counts those with metrics\n")


def test_row_labels_combine_blocks_weights_and_settings(tmp_path, run):
    root = tmp_path / "runs"
    add_run(root, "represnet20", "resnet110", "kd", 1, 70.0, blocktype="ACB", epochs=2)
    add_run(root, "represnet20", "resnet110", "kd", 2, 71.0, blocktype="ACB", epochs=3)
    other = root / "S_represnet20_T_resnet110_cifar100_kd_t_ACB_r_1.0_a_0.0_b_1.0_1"
    other.mkdir()
    (other / "test_last_metrics.json").write_text(json.dumps({"test_acc": 69.0}))
    status, out, _ = run(str(root))
    assert status == 0
    assert list(table_rows(out)) == ["kd (t=ACB, r=0.1, a=0.9, b=0.0; epochs=2)",
                                     "kd (t=ACB, r=0.1, a=0.9, b=0.0; epochs=3)",
                                     "kd (t=ACB, r=1.0, a=0.0, b=1.0)"]


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_png_panels_axes_and_bars(tree, tmp_path):
    summarize = load_summarize()
    table = summarize.build_table(summarize.collect_runs(str(tree), "test_acc"),
                                  published=summarize.PublishedResults())
    png = tmp_path / "chart.png"
    fig = summarize.write_png(table, str(png), "test_acc")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png.read_bytes()[16:20], "big") == 300 * summarize.PAPER_WIDTH  # px wide
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == table.cols  # one panel per pair
    assert fig.get_suptitle()
    rows = [t.get_text() for t in axes[0].get_yticklabels()]
    assert rows == table.rows  # every row labelled on the left, the first on top
    for ax, col in zip(axes, table.cols):
        assert ax.get_xlim()[0] == 0  # the value axis starts at 0
        cells = {r: table.cells[r, col] for r in table.rows if (r, col) in table.cells}
        bars = {round(p.get_y() + p.get_height() / 2): p for p in ax.patches}
        assert {table.rows[y] for y in bars} == set(cells)
        for y, bar in bars.items():
            assert bar.get_width() == pytest.approx(cells[table.rows[y]].mean)
        # each cell's value as the table prints it; published values as diamonds
        assert sorted(t.get_text() for t in ax.texts) == sorted(c.text() for c in cells.values())
        diamonds = [ln for ln in ax.lines if ln.get_marker() == "D"]
        assert len(diamonds) == sum(c.published is not None for c in cells.values())
    assert {round(float(ln.get_xdata()[0]), 2) for ax in axes for ln in ax.lines
            if ln.get_marker() == "D"} >= {74.92, 71.99, 75.97}


def test_provenance_differences():
    a = {"epochs": 2, "trial": "1", "seed": 1, "lr_decay_epochs": [1, 2], "amp": False,
         **{k: "x" for k in BOOKKEEPING_KEYS}}
    b = {"epochs": 240, "trial": "2", "seed": None, "lr_decay_epochs": (1, 2), "amp": 0,
         "kd_T": 4, **{k: "y" for k in BOOKKEEPING_KEYS}}
    diffs = config_differences(a, b, ignore={"trial", "seed"})
    assert diffs == {"epochs": (2, 240), "kd_T": (ABSENT, 4), "amp": (False, 0)}
    assert describe_differences({"epochs": (2, 240)}) == "epochs: 2 in the folder, 240 in the command"
    assert not config_differences({"lr": 1}, {"lr": 1.0})
    with_teacher = config_differences(result_settings({"epochs": 1}, "ab" * 32),
                                      result_settings({"epochs": 1}, "cd" * 32))
    assert list(with_teacher) == [TEACHER_KEY]
    assert describe_differences(with_teacher) == \
        f"teacher: sha256 {'ab' * 6} in the folder, sha256 {'cd' * 6} in the command"


@pytest.mark.parametrize("value, why", [
    (True, "test_acc is true, not a number"), (float("nan"), "test_acc is nan, not a finite"),
    (-1.0, "test_acc is -1.0, outside [0, 100]"), (None, "test_acc is null, not a number"),
])
def test_metric_value_rejects(value, why):
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        metric_value({"test_acc": value}, "test_acc")
    assert metric_value({"test_acc": 100}, "test_acc") == 100.0


def test_is_finished():
    assert is_finished({"planned_epochs": 3, "reached_epoch": 3}) is True
    assert is_finished({"planned_epochs": 3, "reached_epoch": 1}) is False
    assert is_finished({"epoch": 2, "config": {"epochs": 3}}) is False
    assert is_finished({"epoch": 240}) is None  # no provenance: cannot tell


def test_runs_moved_aside_by_overwrite_are_left_out(tmp_path, run):
    root = tmp_path / "save" / "student_model"
    for trial, acc in enumerate([71.0, 72.0], 1):
        add_run(root, "represnet20", "resnet110", "kdrefine", trial, acc)
    old = add_run(root, "represnet20", "resnet110", "kdrefine", 3, 20.0, epochs=3)
    old.rename(old.with_name(old.name.replace("_3", "_1") + ".old-20261201-101500"))
    status, out, err = run(str(root))
    assert status == 0
    assert cell([71.0, 72.0]) in out and "20.00" not in out
    assert "left out 1 run(s) that --overwrite moved aside" in err
