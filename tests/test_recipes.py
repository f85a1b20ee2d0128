"""Each method's published recipe is its default, ``--print_config`` shows the resolved
configuration, DKD's hyper-parameters have flags, and the scripts spell their weights out."""
from __future__ import annotations

import json
import os
import re
import shlex

import pytest

import train_student
import train_teacher
from distiller_zoo import get_method, method_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = "save/models/resnet110_vanilla/ckpt_epoch_240.pth"  # need not exist: arch from the folder

#: The published rows (RepDistiller's scripts; KDrefine's README; DKD, SRRL and SemCKD as the
#: README documents them): -r, -a, -b.
PUBLISHED = {
    "kd": (0.1, 0.9, 0.0), "hint": (1, 0, 100), "attention": (1, 0, 1000), "similarity": (1, 0, 3000),
    "correlation": (1, 0, 0.02), "vid": (1, 0, 1), "rkd": (1, 0, 1), "pkt": (1, 0, 30000),
    "abound": (1, 0, 1), "factor": (1, 0, 200), "fsp": (1, 0, 50), "nst": (1, 0, 50),
    "crd": (1, 0, 0.8), "kdsvd": (1, 0, 1), "kdrefine": (0.1, 0.9, 0.0), "dkd": (1, 0, 1),
    "srrl": (1, 1, 1), "semckd": (1, 1, 400), "ctkd": (0.1, 0.9, 0.0),
    "reviewkd": (1, 0, 5), "ofd": (1, 0, 0.001),
}


def config(capsys, *flags: str, script=train_student) -> dict:
    argv = list(flags) if script is train_teacher else ["--path_t", TEACHER, *flags]
    assert script.main([*argv, "--print_config"]) == {}
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


def test_the_published_rows_are_registered_methods():
    assert set(PUBLISHED) <= set(method_names())


@pytest.mark.parametrize("method", method_names())
def test_weights_default_to_the_methods_recipe(capsys, method):
    """Every registered method's flags default to its recipe, which names its source; the
    built-in methods' recipes are the published numbers (PUBLISHED, pinned here)."""
    cfg = config(capsys, "--distill", method)
    recipe = get_method(method).recipe
    assert recipe.source.strip()
    assert (cfg["gamma"], cfg["alpha"], cfg["beta"]) == pytest.approx((recipe.gamma, recipe.alpha, recipe.beta))
    if method in PUBLISHED:
        assert (recipe.gamma, recipe.alpha, recipe.beta) == pytest.approx(PUBLISHED[method])


@pytest.mark.parametrize("method, student, lr", [
    ("kdrefine", "represnet20", 0.01), ("kdrefine", "repmobilenetv2", 0.01),
    ("kdrefine", "resnet8x4", 0.01),
    ("kd", "represnet20", 0.05), ("crd", "resnet8x4", 0.05), ("kd", "repmobilenetv2", 0.01),
    ("hint", "MobileNetV2", 0.01), ("dkd", "ShuffleV2", 0.01), ("pkt", "repshufflev1", 0.01),
])
def test_learning_rate_defaults(capsys, method, student, lr):
    assert config(capsys, "--distill", method, "--model_s", student)["learning_rate"] == lr


def test_flags_given_win_over_the_recipe(capsys):
    cfg = config(capsys, "--distill", "crd", "-r", "0.5", "-a", "0.25", "-b", "2",
                 "--learning_rate", "0.2")
    assert (cfg["gamma"], cfg["alpha"], cfg["beta"], cfg["learning_rate"]) == (0.5, 0.25, 2.0, 0.2)
    assert config(capsys, "--distill", "kdrefine", "-b", "0.5")["gamma"] == 0.1  # the others stay


def test_print_config_is_the_resolved_configuration(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(capsys, "--distill", "dkd", "--dkd_beta", "2", "-t", "ACB", "--epochs", "3")
    assert cfg["model_t"] == "resnet110" and cfg["model_s"] == "represnet20"
    assert (cfg["dkd_alpha"], cfg["dkd_beta"], cfg["dkd_T"], cfg["dkd_warmup"]) == (1.0, 2.0, 4.0, 20)
    assert cfg["epochs"] == 3 and cfg["lr_decay_epochs"] == [150, 180, 210]
    assert cfg["blocktype"] == "ACB" and cfg["weight_decay"] == 5e-4
    assert cfg["save_folder"].endswith("S_represnet20_T_resnet110_cifar100_dkd_t_ACB_r_1.0_a_0.0_b_1.0_1")
    assert not os.listdir(tmp_path)  # nothing trained, nothing written


def test_teacher_print_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(capsys, "--model", "MobileNetV2", "--epochs", "5", script=train_teacher)
    assert (cfg["model"], cfg["learning_rate"], cfg["epochs"], cfg["batch_size"]) == ("MobileNetV2", 0.01, 5, 64)
    assert not os.listdir(tmp_path)


def test_dkd_flags_reach_the_loss():
    config = train_student.parse_option(["--path_t", TEACHER, "--distill", "dkd", "--dkd_alpha", "0.5",
                                         "--dkd_beta", "6", "--dkd_T", "2", "--dkd_warmup", "5"])
    from tests.test_methods import TinyNet, frozen

    import torch

    student, teacher = TinyNet((8, 8, 16, 32)), frozen(TinyNet((8, 8, 16, 32)))
    method = train_student.build_method_for(config, student, teacher, torch.randn(2, 3, 8, 8), 10)
    loss = method.criterion_kd
    assert (loss.alpha, loss.beta, loss.temperature, loss.warmup) == (0.5, 6.0, 2.0, 5)


def script_runs(name: str) -> list[list[str]]:
    """The ``train_student.py`` / ``run`` lines of a shell script, as argument lists."""
    runs, in_function = [], False
    text = open(os.path.join(ROOT, "scripts", name)).read().replace("\\\n", " ")
    for line in text.splitlines():
        if re.match(r"^\w+\(\) *\{", line):  # a shell function's body is not a run
            in_function = not line.rstrip().endswith("}")
            continue
        if in_function:
            in_function = line.strip() != "}"
            continue
        words = shlex.split(line, comments=True)
        if words and (words[0] == "run" or "train_student.py" in words):
            runs.append(words)
    return runs


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


@pytest.mark.parametrize("script", ["run_cifar_distill.sh", "run_kdrefine.sh", "run_dkd.sh"])
def test_scripts_pass_their_weights_explicitly(script):
    """Every line spells out -r/-a/-b, and they are its method's recipe (with --logit_stand the
    method's recipe for it, where it has one); run_cifar_distill.sh has one line per method."""
    runs = script_runs(script)
    assert runs
    for words in runs:
        cls = get_method(flag(words, "--distill"))
        recipe = cls.logit_stand_recipe if "--logit_stand" in words and cls.logit_stand_recipe else cls.recipe
        weights = tuple(float(flag(words, f)) for f in ("-r", "-a", "-b"))
        assert weights == pytest.approx((recipe.gamma, recipe.alpha, recipe.beta)), words
    if script == "run_cifar_distill.sh":
        assert sorted(flag(w, "--distill") for w in runs) == method_names()


def test_readme_methods_table_shows_each_recipe():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for method, (r, a, b) in PUBLISHED.items():
        row = re.search(rf"^`{method}`[^|]*\|.*$", readme, re.M)
        assert row, method
        assert re.search(rf"`-r {r:g} -a {a:g} -b {b:g}`", row.group(0)), row.group(0)
