"""The README's "Extending" section runs as printed: a new distillation method, a new model, a
new block type and a new data set, each registered from a file of its own and used end to end
through the entry scripts' ``--plugin`` (training, ``convert.py`` with ``--onnx``, ``validation.py``).

Every fenced block of the section follows a marker ``<!-- example: NAME -->``: ``NAME.py`` blocks
are written to a folder under that name, ``NAME.sh`` blocks are run there by bash, line by line
as printed (``python`` is this interpreter, with its packages in a venv too; the entry scripts are
linked into the folder, as if it were the repository root). The registries are process-global,
so everything runs in subprocesses.
"""
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_SCRIPTS = ("train_teacher.py", "train_student.py", "convert.py", "validation.py")
MARKER = re.compile(r"<!-- example: (\S+) -->\n```(\w+)\n(.*?)\n```", re.S)


def extending_section() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    match = re.search(r"^## Extending\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md has no '## Extending' section"
    return match.group(1)


def examples() -> dict[str, str]:
    found = {}
    for name, lang, body in MARKER.findall(extending_section()):
        assert name not in found, f"example {name} appears twice"
        assert lang == {"py": "python", "sh": "bash"}[name.rsplit(".", 1)[1]], name
        found[name] = body + "\n"
    return found


def example_env(tmp_path) -> dict[str, str]:
    """The environment the examples run in: ``python`` first on PATH is this interpreter, as a
    script that execs it (a symlink to it would start a venv's base interpreter, without the
    venv's packages), and the repository is on PYTHONPATH."""
    bin_dir = tmp_path / "_bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_example(tmp_path, script: str) -> subprocess.CompletedProcess:
    """Write every Python block of the section into ``tmp_path`` and run the bash block ``script``."""
    for name, body in examples().items():
        if name.endswith(".py"):
            (tmp_path / name).write_text(body)
    for name in ENTRY_SCRIPTS:
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = example_env(tmp_path)
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", examples()[script]], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{script} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_python_of_the_examples_is_this_interpreter_with_its_packages(tmp_path):
    """In a venv too: the examples' ``python`` has this interpreter's prefix (and so torch)."""
    out = subprocess.run(["python", "-c", "import sys; print(sys.prefix)"], env=example_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == sys.prefix, out.stdout + out.stderr


def test_section_has_the_four_examples():
    names = set(examples())
    assert {"my_method.py", "method.sh", "my_model.py", "check_model.py", "model.sh", "my_block.py",
            "check_block.py", "block.sh", "my_dataset.py", "dataset.sh"} <= names
    section = extending_section()
    assert "-t DUAL" in section  # how a user selects the new block type
    for plugin, script in (("my_method", "method.sh"), ("my_model", "model.sh"),
                           ("my_block", "block.sh"), ("my_dataset", "dataset.sh")):
        assert f"--plugin {plugin}" in examples()[script], (plugin, script)


def accuracy_of(stdout: str) -> float:
    """The accuracy of validation.py's last line."""
    return float(stdout.split("accuracy: ")[-1].split()[0])


def checkpoint_config(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["config"]


@pytest.mark.slow
def test_new_method_trains_one_epoch_on_digits(tmp_path):
    out = run_example(tmp_path, "method.sh")
    # --help lists the flag, in the method's own group
    assert "--emse_normalize" in out.stdout and "embedding MSE (--distill emse)" in out.stdout
    folders = list((tmp_path / "save" / "student_model").glob("S_resnet8_T_resnet8_digits_emse_*"))
    assert len(folders) == 1, folders
    with open(folders[0] / "test_last_metrics.json") as f:
        metrics = json.load(f)
    assert math.isfinite(metrics["test_acc"])
    assert metrics["config"]["distill"] == "emse"
    assert metrics["config"]["emse_normalize"] == 0  # the flag given reached the run
    assert metrics["config"]["plugin"] == ["my_method"]  # and the plugin is recorded
    assert checkpoint_config(folders[0] / "resnet8_last.pth")["plugin"] == ["my_method"]


@pytest.mark.slow
def test_new_model_trains_as_teacher_and_validates(tmp_path):
    out = run_example(tmp_path, "model.sh")
    assert "(2, 100)" in out.stdout
    folder = tmp_path / "save" / "models" / "tinycnn_digits_lr_0.05_decay_0.0005_trial_0"
    assert (folder / "ckpt_epoch_1.pth").is_file()
    assert checkpoint_config(folder / "tinycnn_last.pth")["plugin"] == ["my_model"]
    assert "data set digits (recorded in" in out.stdout
    assert 0 <= accuracy_of(out.stdout) <= 100


@pytest.mark.slow
def test_new_block_type_trains_converts_and_validates(tmp_path):
    out = run_example(tmp_path, "block.sh")
    assert "DUAL converts exactly" in out.stdout
    folder = tmp_path / "save" / "student_model" / "S_represnet8_T_resnet8_digits_kd_t_DUAL_r_0.1_a_0.9_b_0.0_1"
    config = checkpoint_config(folder / "represnet8_last.pth")
    assert (config["blocktype"], config["plugin"]) == ("DUAL", ["my_block"])
    assert "block type DUAL" in out.stdout  # convert.py rebuilt the recorded block type
    with open(folder / "test_last_metrics.json") as f:
        trained = json.load(f)["test_acc"]
    # the deploy form scores what the train form did (within two of the 360 test images)
    assert accuracy_of(out.stdout) == pytest.approx(trained, abs=0.6)


@pytest.mark.slow
def test_new_dataset_trains_validates_and_exports(tmp_path):
    """The data set from its own file: a one-epoch teacher, then validation.py and convert.py
    --onnx on the data set the checkpoint records (the ONNX input size from the spec:
    tests/test_dataset_names.py, in process)."""
    out = run_example(tmp_path, "dataset.sh")
    path = tmp_path / "save" / "models" / "resnet8_digits01_lr_0.05_decay_0.0005_trial_0" / "resnet8_last.pth"
    assert checkpoint_config(path)["dataset"] == "digits01"
    assert "data set digits01 (recorded in" in out.stdout
    assert math.isfinite(accuracy_of(out.stdout))
    assert (tmp_path / "resnet8_digits01.onnx").stat().st_size > 0
