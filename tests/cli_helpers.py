"""What the CLI tests share: a working folder with small CIFAR-format files and a short resnet8
teacher, the student command line around it, and the one-line-error check."""
from __future__ import annotations

import os

import pytest

import train_teacher
from tests.cifar_fixtures import write_fake_cifar100

TEACHER_RUN = "resnet8_cifar100_lr_0.05_decay_0.0005_trial_0"
TEACHER_LAST = os.path.join("save", "models", TEACHER_RUN, "resnet8_last.pth")
FAST = ["--batch_size", "32", "--print_freq", "2", "--seed", "0", "--num_workers", "0"]


def teacher_workdir(tmp_path_factory, name: str = "pipeline", n_train: int = 128):
    """A folder with small CIFAR-100 files under ./data (``n_train`` training images: 4 steps
    of ``--batch_size 32`` per epoch by default) and a 2-epoch resnet8 teacher."""
    root = tmp_path_factory.mktemp(name)
    write_fake_cifar100(root / "data", n_train=n_train, n_test=128, seed=0)
    old = os.getcwd()
    os.chdir(root)
    try:
        train_teacher.main(["--model", "resnet8", "--epochs", "2", "--lr_decay_epochs", "1",
                            "--save_freq", "1", *FAST])
    finally:
        os.chdir(old)
    return root


def student_args(*extra: str) -> list[str]:
    return ["--path_t", TEACHER_LAST, "--model_s", "represnet8", "--epochs", "2",
            "--lr_decay_epochs", "1", *FAST, *extra]


def student_folder(distill="kdrefine", r="0.1", a="0.9", b="0.0", trial="1", s="represnet8"):
    return os.path.join("save", "student_model",
                        f"S_{s}_T_resnet8_cifar100_{distill}_r_{r}_a_{a}_b_{b}_{trial}")


def exit_message(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as err:
        fn(argv)
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]
