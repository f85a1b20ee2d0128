"""Every ``--distill`` method on every teacher -> student pair of the KDrefine table, with the
default flags, through ``train_student.py``'s own code path: parse the flags, load the teacher
file, build the data, the student and the method (and run the init stage of AB/FT/FSP), then
take one training step.

On a tiny batch (4 images of a generated CIFAR-100 set) and with ``--init_epochs 1``: the point
is that every cell builds and steps with finite losses, not what it learns. A method that cannot
apply to a pair (FSP and KDSVD need equal channel counts) must stop before training with one
line naming both channel counts, and ``main`` with exit 2. Which cells those are is read off the
compatibility contract (``tests/fixtures/reference/models.json``), not off the code under test.

``make test`` runs a sample (every method on at least 3 pairs, every pair with at least 6
methods); ``pytest -m grid`` runs all 162 cells.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import train_student
from dataset.synthetic import write_fake_cifar100
from distiller_zoo import method_names
from helper.distributed import DistContext
from helper.errors import UserError
from engine.fit import LoopSettings, run_epoch
from models import model_dict
from tests.reference import load_json

PAIRS = [("wrn_40_2", "repwrn_16_2"), ("wrn_40_2", "repwrn_40_1"), ("resnet56", "represnet20"),
         ("resnet110", "represnet20"), ("resnet110", "represnet32"), ("vgg13", "repvgg8"),
         ("vgg13", "repmobilenetv2"), ("ResNet50", "repmobilenetv2"), ("ResNet50", "repvgg8")]
METHODS = method_names()
CELLS = [(t, s, m) for (t, s), m in itertools.product(PAIRS, METHODS)]
EQUAL_CHANNELS_METHODS = {"fsp": slice(0, -1), "kdsvd": slice(1, -1)}  # the features each compares


def sampled(cells: list[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Every method on 3 pairs and every pair with at least 6 methods: method ``k`` runs on the
    pairs ``k+1``, ``k+4`` and ``k+7`` (mod 9), so each pair gets 6 of the 18 methods. The
    shift by one keeps semckd and factor off the ResNet50 pairs, where one CPU step of theirs
    takes 30 to 150 s (2048-channel projections); ``pytest -m grid`` runs those cells."""
    chosen = set()
    for k, method in enumerate(METHODS):
        for j in (1, 4, 7):
            teacher, student = PAIRS[(k + j) % len(PAIRS)]
            chosen.add((teacher, student, method))
    return chosen


SAMPLE = sampled(CELLS)
SAMPLED_CELLS = [pytest.param(*cell, id="-".join(cell)) for cell in CELLS if cell in SAMPLE]
ALL_CELLS = [pytest.param(*cell, id="-".join(cell)) for cell in CELLS]


def channels(model: str, which: slice) -> list[int]:
    """Feature channel counts from the contract; the WRN rep students (ours, not in it) have
    their plain form's features."""
    contract = load_json("models.json")
    shapes = contract.get(model, contract.get(model.removeprefix("rep")))["feat_shapes"]
    return [shape[1] for shape in shapes[which]]


def refused(teacher: str, student: str, method: str) -> tuple[list[int], list[int]] | None:
    """The student's and teacher's channel counts when ``method`` cannot apply to the pair."""
    which = EQUAL_CHANNELS_METHODS.get(method)
    if which is None:
        return None
    s_c, t_c = channels(student, which), channels(teacher, which)
    return None if s_c == t_c else (s_c, t_c)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a tiny CIFAR-100 set and one random teacher file per teacher of the table,
    in RepDistiller's layout (``save/models/<arch>_vanilla/ckpt_epoch_240.pth``)."""
    root = tmp_path_factory.mktemp("grid")
    write_fake_cifar100(root / "data", n_train=16, n_test=8)
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for arch in sorted({t for t, _ in PAIRS}):
        folder = root / "save" / "models" / f"{arch}_vanilla"
        folder.mkdir(parents=True)
        torch.save({"model": calibrated(model_dict[arch](num_classes=100), images).state_dict()},
                   folder / "ckpt_epoch_240.pth")
    return root


def calibrated(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """A random model whose BN statistics are those of ``images``, as a trained teacher's are
    of its data (with the default statistics, a deep random net's features blow up)."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def argv(root, teacher: str, student: str, method: str) -> list[str]:
    return ["--path_t", str(root / "save" / "models" / f"{teacher}_vanilla" / "ckpt_epoch_240.pth"),
            "--model_s", student, "--distill", method, "--data_folder", str(root / "data"),
            "--batch_size", "4", "--init_epochs", "1", "--device", "cpu", "--seed", "0"]


@pytest.mark.parametrize("teacher, student, method", SAMPLED_CELLS)
def test_sampled_cell_steps(workdir, monkeypatch, teacher, student, method):
    monkeypatch.chdir(workdir)
    check_cell(workdir, teacher, student, method)


@pytest.mark.grid
@pytest.mark.parametrize("teacher, student, method", ALL_CELLS)
def test_every_cell_steps(workdir, monkeypatch, teacher, student, method):
    monkeypatch.chdir(workdir)
    check_cell(workdir, teacher, student, method)


def check_cell(workdir, teacher: str, student: str, method: str) -> None:
    """One training step of the cell with its default recipe, or its one-line refusal."""
    torch.set_num_threads(1)
    parsed = train_student.parse_option(argv(workdir, teacher, student, method))
    dist = DistContext(torch.device("cpu"))
    mismatch = refused(teacher, student, method)
    if mismatch is not None:
        with pytest.raises(UserError) as err:
            config, trials, teacher_ckpt = train_student.ready_trials(parsed, dist)
            train_student.prepare_trials(config, dist, trials, teacher_ckpt)
        message = str(err.value)
        assert "\n" not in message
        assert str(mismatch[0]) in message and str(mismatch[1]) in message
        return
    config, trials, teacher_ckpt = train_student.ready_trials(parsed, dist)
    members, stepping, _, _ = train_student.prepare_trials(config, dist, trials, teacher_ckpt)
    assert config.run.channels_last  # the default memory format
    run = members[0].run
    before = [p.detach().clone() for p in run.eval_model.parameters()]
    members[0].train_loader = list(itertools.islice(members[0].train_loader, 1))
    stats = run_epoch(members, stepping, 1, LoopSettings.from_config(config, method), dist)[0]
    assert math.isfinite(stats["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, run.eval_model.parameters()))


def test_the_sample_covers_every_method_and_pair():
    assert not {c for c in SAMPLE if c[0] == "ResNet50" and c[2] in ("semckd", "factor")}
    per_method = {m: sum(1 for c in SAMPLE if c[2] == m) for m in METHODS}
    per_pair = {p: sum(1 for c in SAMPLE if c[:2] == p) for p in PAIRS}
    assert len(METHODS) == 18 and len(CELLS) == 162
    assert min(per_method.values()) >= 3 and min(per_pair.values()) >= 6


def test_a_method_that_cannot_apply_exits_2_with_one_line(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    teacher, student, method = next(c for c in CELLS if refused(*c))
    with pytest.raises(SystemExit) as exit_info:
        train_student.main(argv(workdir, teacher, student, method))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and method in err[0].lower()
