"""scripts/summarize.py counts each run once and reads only what it can trust: the recorded
configuration over the folder name, copies and repeated seeds counted once, symlinks followed
once, only regular files opened, malformed files one warning each, rows split only on settings
the method reads, stopped runs listed, and a figure fit for a paper."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distiller_zoo.methods import method_flags, unread_flags
from helper.provenance import MAX_METRICS_DEPTH, load_metrics
from tests.guards import deadline
from tests.test_summarize import add_run, cell, config, load_summarize, table_rows

FUZZ = settings(max_examples=int(os.environ.get("KD_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
RUN = "S_represnet20_T_resnet110_cifar100_kd_r_0.1_a_0.9_b_0.0_{}"
SUMMARIZE = load_summarize()


@pytest.fixture
def run(capsys):
    """(exit status, stdout, stderr) of summarize.main, within a deadline."""
    def call(*args):
        with deadline(60):
            try:
                status = load_summarize().main(list(args))
            except SystemExit as exc:
                status = exc.code
        out, err = capsys.readouterr()
        return status, out, err
    return call


def kd_run(root, trial, acc, **kw):
    return add_run(root, "represnet20", "resnet110", "kd", trial, acc, **kw)


def edit_metrics(folder, **changes):
    """Rewrite a run's metrics file with ``changes`` (``config`` entries under ``config``)."""
    path = folder / "test_last_metrics.json"
    metrics = json.loads(path.read_text())
    metrics["config"].update(changes.pop("config", {}))
    metrics.update(changes)
    path.write_text(json.dumps(metrics))


# ---- 1. the record, not the folder name; each run once --------------------------------------

def test_a_folder_whose_name_disagrees_with_its_record_is_left_out(tmp_path, run):
    root = tmp_path / "runs"
    kd_run(root, 1, 70.0)
    digits = add_run(root, "represnet8", "resnet20", "kd", 1, 15.0, dataset="digits")
    wrong = root / "S_represnet20_T_resnet110_cifar100_crd_r_0.1_a_0.9_b_0.0_1"
    digits.rename(wrong)  # kd/digits metrics in a cifar100 crd folder
    status, out, err = run(str(root))
    assert status == 0
    assert "crd" not in table_rows(out) and "15.00" not in out
    assert err.splitlines() == [
        f"warning: skipping {wrong / 'test_last_metrics.json'}: the folder's name disagrees "
        "with its recorded configuration, which names the run "
        "S_represnet8_T_resnet20_digits_kd_r_0.1_a_0.9_b_0.0_1; left out (rename or move the "
        "folder)"]


def test_copies_of_a_run_count_once_and_are_listed(tmp_path, run):
    root = tmp_path / "runs"
    one = kd_run(root, 1, 15.0)
    for name in (RUN.format("1.bak"), RUN.format("2 (copy)"), f"backup/{RUN.format(1)}"):
        shutil.copytree(one, root / name)
    rerun = root / "old" / RUN.format(1)  # the same run, its file written again (other bytes)
    shutil.copytree(one, rerun)
    edit_metrics(rerun, wall_time_s=99.0)
    kd_run(root, 2, 16.0)
    status, out, err = run(str(root))
    assert status == 0 and err == ""
    assert table_rows(out)["kd"]["resnet110 → represnet20"] == cell([15.0, 16.0])
    listed = out.split("Counted once (copies of a run, trials with a seed used already):\n")[1]
    kept = one / "test_last_metrics.json"
    for name in (RUN.format("1.bak"), RUN.format("2 (copy)"), f"backup/{RUN.format(1)}"):
        assert f"- {root / name / 'test_last_metrics.json'}: a copy of {kept} (the same file " \
               "content)" in listed
    assert f"- {rerun / 'test_last_metrics.json'}: the same run as {kept} (trial 1, seed 1, " \
           "the same settings)" in listed


def test_copies_without_a_record_count_once(tmp_path, run):
    root = tmp_path / "runs"
    one = kd_run(root, 1, 15.0, provenance=False)
    shutil.copytree(one, root / "backup" / one.name)
    kd_run(root, 2, 17.0, provenance=False)
    status, out, _ = run(str(root))
    assert status == 0
    assert table_rows(out)["kd"]["resnet110 → represnet20"] == cell([15.0, 17.0], " †")


def test_symlinked_run_folders_are_followed_once(tmp_path, run):
    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    kd_run(root, 1, 70.0)
    outside = kd_run(elsewhere, 2, 72.0)
    os.symlink(outside, root / outside.name)  # a run kept on another disk: counted
    os.symlink(root / RUN.format(1), root / "alias")  # the same folder again: noted, not twice
    os.symlink(root, root / "loop")  # a loop: noted, never walked twice
    status, out, err = run(str(root))
    assert status == 0
    assert table_rows(out)["kd"]["resnet110 → represnet20"] == cell([70.0, 72.0])
    assert sorted(err.splitlines()) == [
        f"note: not following the symlink {root / 'alias'}: it leads to "
        f"{os.path.realpath(root / RUN.format(1))}, which is read already",
        f"note: not following the symlink {root / 'loop'}: it leads to "
        f"{os.path.realpath(root)}, which is read already"]


# ---- 2. only regular files; 3. malformed files one warning each -----------------------------

def test_a_fifo_or_device_named_like_metrics_is_skipped_without_blocking(tmp_path, run):
    root = tmp_path / "runs"
    kd_run(root, 1, 70.0)
    fifo = root / RUN.format(2) / "test_last_metrics.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    device = root / RUN.format(3) / "test_last_metrics.json"
    device.parent.mkdir()
    os.symlink(os.devnull, device)
    status, out, err = run(str(root))
    assert status == 0 and cell([70.0]) in out
    assert err.splitlines() == [
        f"warning: skipping {fifo}: not a regular file (a FIFO); only regular files are read",
        f"warning: skipping {device}: not a regular file (a character device); only regular "
        "files are read"]
    with deadline(10), pytest.raises(ValueError, match="a FIFO"):
        load_metrics(str(fifo))


@pytest.mark.parametrize("depth", [100_000, MAX_METRICS_DEPTH + 1])
def test_deeply_nested_json_is_one_warning(tmp_path, run, depth):
    root = tmp_path / "runs"
    kd_run(root, 1, 70.0)
    nested = kd_run(root, 2, 0, raw='{"test_acc": 71.0, "config": {"x": ' + "[" * depth
                    + "]" * depth + "}}")
    status, out, err = run(str(root))
    assert status == 0 and cell([70.0]) in out
    path = nested / "test_last_metrics.json"
    assert err.count("\n") == 1 and err.startswith(f"warning: skipping {path}: JSON nested deeper")


def test_an_oversized_metrics_file_is_one_warning(tmp_path, run):
    root = tmp_path / "runs"
    kd_run(root, 1, 70.0)
    big = kd_run(root, 2, 0, raw='{"test_acc": 71.0, "pad": "' + "x" * (2 << 20) + '"}')
    status, _, err = run(str(root))
    assert status == 0
    assert err == (f"warning: skipping {big / 'test_last_metrics.json'}: larger than 1048576 "
                   "bytes, which no metrics file is\n")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats()
                    | st.sampled_from(["", "1", "kd", "represnet20", "AMBB"]),
                    lambda inner: st.lists(inner, max_size=2)
                    | st.dictionaries(st.sampled_from(["a", "seed"]), inner, max_size=2),
                    max_leaves=4)
CONFIG_KEYS = ("model_s", "model_t", "dataset", "distill", "trial", "seed", "gamma", "alpha",
               "beta", "blocktype", "logit_stand", "epochs", "init_epochs")


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON,
                                                         max_size=3)), min_size=1, max_size=3),
       st.lists(JSON | st.floats(0, 100), min_size=1, max_size=3))
def test_malformed_metrics_never_abort_the_summary(tmp_path, capsys, configs, values):
    """Whatever a metrics file holds, the summary ends normally or with one error line: each
    file either counts or is skipped with one warning line."""
    root = tmp_path / "runs"
    files = [root / RUN.format(k) / "test_last_metrics.json" for k in range(4)]
    for path in files:  # the same folders for every example: each rewrites their files
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    files[0].write_text(json.dumps({"test_acc": 70.0}))  # one good file
    written = list(zip(files[1:], configs, values))
    for k, (path, (valid, changes), value) in enumerate(written, 1):
        base = config("represnet20", "resnet110", "kd", "AMBB", 3, k, "cifar100") if valid else {}
        path.write_text(json.dumps({"test_acc": value, "config": {**base, **changes},
                                    "reached_epoch": value, "planned_epochs": 3}))
    table = SUMMARIZE.build_table(SUMMARIZE.collect_runs(str(root), "test_acc"))
    SUMMARIZE.to_markdown(table)
    err = capsys.readouterr().err
    counted = sum(c.n for c in table.cells.values()) + len(table.unfinished) \
        - sum(c.unfinished for c in table.cells.values())
    assert all(line.startswith(("warning: ", "note: ")) for line in err.splitlines())
    assert counted + err.count("warning: skipping") + len(table.copies) \
        + len(table.repeated_seeds) == 1 + len(written)  # each file accounted for, once


# ---- 5. seeds and the settings a method reads ----------------------------------------------

def test_trials_with_one_seed_count_once_with_a_warning(tmp_path, run):
    root = tmp_path / "runs"
    for trial, acc in ((1, 12.22), (2, 12.22), (3, 13.0)):
        folder = kd_run(root, trial, acc)
        edit_metrics(folder, config={"seed": 0})
    kd_run(root, 4, 14.0)  # seed 4
    status, out, err = run(str(root))
    assert status == 0
    assert table_rows(out)["kd"]["resnet110 → represnet20"] == cell([12.22, 14.0])
    path = root / RUN.format("{}") / "test_last_metrics.json"
    assert err.splitlines() == [
        f"warning: {str(path).format(t)} repeats seed 0 of trial 1 in its cell: not an "
        "independent trial, counted once" for t in (2, 3)]
    assert f"- {str(path).format(2)}: seed 0 again (trial 2; trial 1 in {str(path).format(1)}): " \
           "not an independent trial" in out


def test_rows_split_only_on_settings_the_method_reads(tmp_path, run):
    root = tmp_path / "runs"
    for method in ("kd", "fsp"):
        for trial, init_epochs in ((1, 30), (2, 1)):
            folder = add_run(root, "represnet20", "resnet110", method, trial, 70.0 + trial)
            edit_metrics(folder, config={"init_epochs": init_epochs, "nce_k": 100 * trial})
    status, out, _ = run(str(root))
    assert status == 0
    rows = table_rows(out)
    assert rows["kd"]["resnet110 → represnet20"] == cell([71.0, 72.0])  # reads neither
    assert rows["fsp (init_epochs=1)"]["resnet110 → represnet20"] == cell([72.0])
    assert rows["fsp (init_epochs=30)"]["resnet110 → represnet20"] == cell([71.0])


def test_methods_declare_the_flags_they_read():
    for name in ("kd", "hint", "crd", "pkt", "nst", "dkd"):
        assert "init_epochs" in unread_flags(name)
    for name in ("abound", "factor", "fsp"):
        assert "init_epochs" in method_flags(name) and "init_epochs" not in unread_flags(name)
    assert {"nce_k", "feat_dim", "mode"} <= method_flags("crd")
    assert {"dkd_beta", "nce_k", "hint_layer"} <= unread_flags("kd")
    assert "hint_layer" in method_flags("hint") and "dkd_T" in method_flags("dkd")
    assert not method_flags("crd") & unread_flags("crd")


# ---- 6. stopped runs ------------------------------------------------------------------------

def test_stopped_runs_are_listed_with_their_epoch(tmp_path, run):
    root = tmp_path / "runs"
    kd_run(root, 1, 70.0)
    stopped = root / RUN.format(2)  # Ctrl-C at epoch 4 of 30: a checkpoint, no metrics
    stopped.mkdir()
    torch.save({"epoch": 4, "config": {"epochs": 30}}, stopped / "represnet20_last.pth")
    (stopped / "train.log").write_text("...")
    early = root / RUN.format(3)  # NaN in the first epoch: only the log
    early.mkdir()
    (early / "train.log").write_text("...")
    broken = root / RUN.format(4)
    broken.mkdir()
    (broken / "represnet20_last.pth").write_text("not a checkpoint")
    for flags in ((), ("--include_unfinished",)):
        status, out, _ = run(str(root), *flags)
        assert status == 0 and table_rows(out)["kd"]["resnet110 → represnet20"] == cell([70.0])
        listed = out.split("Unfinished runs without test_last_metrics.json (nothing to count):\n")[1]
        assert f"- {stopped}: epoch 4 of 30, no test_last_metrics.json: stopped (Ctrl-C, kill, " \
               "NaN loss) or still running; nothing to count" in listed
        assert f"- {early}: no epoch finished (no represnet20_last.pth, no " \
               "test_last_metrics.json)" in listed
        assert f"- {broken}: no test_last_metrics.json; represnet20_last.pth is unreadable (" in listed


def test_only_stopped_runs(tmp_path, run):
    root = tmp_path / "runs"
    stopped = root / RUN.format(1)
    stopped.mkdir(parents=True)
    torch.save({"epoch": 4, "config": {"epochs": 30}}, stopped / "represnet20_last.pth")
    status, out, err = run(str(root), "--include_unfinished")
    assert status == 2 and f"- {stopped}: epoch 4 of 30" in out
    assert err == f"error: all 1 runs under {root} are unfinished; none has metrics to count\n"


# ---- 7. a figure fit for a paper ------------------------------------------------------------

def tree_of(root, rows: int, pairs: list[tuple[str, str]]):
    """``rows`` table rows (methods and epochs) over ``pairs``, 3 trials each, with published
    numbers where the CRD/KDrefine tables have them."""
    methods = ["kd", "hint", "attention", "similarity", "correlation", "vid", "rkd", "pkt",
               "abound", "factor", "fsp", "nst", "crd", "kdrefine", "dkd", "kdsvd"]
    for k in range(rows):
        method, epochs = methods[k % len(methods)], 3 + k // len(methods)
        for teacher, student in pairs:
            for trial in (1, 2, 3):
                add_run(root, student, teacher, method, trial + 10 * epochs,
                        60.0 + (7 * k + 3 * trial) % 15, epochs=epochs)
    return root


def check_figure(summarize, root, rows: int):
    table = summarize.build_table(summarize.collect_runs(str(root), "test_acc"),
                                  published=summarize.PublishedResults())
    assert len(table.rows) == rows
    fig = summarize.make_figure(table, "test_acc")
    assert fig.get_size_inches()[0] == summarize.PAPER_WIDTH
    fig.draw_without_rendering()  # lays it out as saving does
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    inside = lambda box, frame: (box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1  # noqa: E731
                                 and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1)
    texts = [fig._suptitle, *fig.legends, *(t for ax in fig.axes if ax.get_visible()
                                            for t in (ax.title, *ax.get_yticklabels(),
                                                      *ax.get_xticklabels(), ax.xaxis.label))]
    for artist in texts:
        if artist.get_visible() and getattr(artist, "get_text", lambda: "x")():
            assert inside(artist.get_window_extent(renderer), page), artist
    colours = {}
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        assert ax.get_xlim()[0] == 0
        for text in ax.texts:  # each value label inside its own panel
            assert inside(text.get_window_extent(renderer), ax.get_window_extent(renderer))
        for bar in ax.patches:
            row = table.rows[round(bar.get_y() + bar.get_height() / 2)]
            assert colours.setdefault(row, bar.get_facecolor()) == bar.get_facecolor()
    assert len(set(colours.values())) == rows  # a distinct colour per row


@pytest.mark.parametrize("rows, pairs", [
    (29, [("resnet32x4", "represnet8x4")]),
    (8, [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
         ("vgg13", "vgg8")]),
])
def test_the_figure_fits_its_page(tmp_path, rows, pairs):
    summarize = load_summarize()
    check_figure(summarize, tree_of(tmp_path / "runs", rows, pairs), rows)


def test_row_colours_are_distinct():
    summarize = load_summarize()
    for n in (1, 8, 10, 11, 20, 29, 60, 75):
        assert len(set(summarize.row_colours(n))) == n
