"""Every ``--distill`` method on every teacher -> student pair of the KDrefine table, with the
default flags, through ``train_student.py``'s own code path: parse the flags, load the teacher
file, build the data, the student and the method (and run the init stage of AB/FT/FSP), then
take one training step.

On a tiny batch (4 images of a generated CIFAR-100 set) and with ``--init_epochs 1``: the point
is that every cell builds and steps with finite losses, not what it learns. A method that cannot
apply to a pair (FSP and KDSVD need equal channel counts) must stop before training with one
line naming both channel counts, and ``main`` with exit 2. Which cells those are is read off the
compatibility contract (``tests/fixtures/reference/models.json``), not off the code under test.

The methods are the registry's (:func:`distiller_zoo.method_names`), the pairs the columns of the
KDrefine table in ``scripts/published_results.json`` (with their re-parameterizable students), so
a method or a pair added there is in the grid without an edit here. ``make test`` runs a sample
(:func:`sampled`: every method on 3 pairs, every pair with at least 4 methods); ``pytest -m grid``
runs every cell.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import zlib

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

Pair = tuple[str, str]
Cell = tuple[str, str, str]

PUBLISHED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                         "published_results.json")


def table_pairs(table_id: str = "kdrefine") -> list[Pair]:
    """The table's (teacher, student) columns, each student as its re-parameterizable form."""
    with open(PUBLISHED, encoding="utf-8") as f:
        published = json.load(f)
    rep_of = {plain: rep for rep, plain in published["rep_students"].items()}
    table = next(t for t in published["tables"] if t["id"] == table_id)
    return [(column["teacher"], rep_of[column["student"]]) for column in table["columns"]]


PAIRS = table_pairs()
METHODS = method_names()
CELLS = [(t, s, m) for (t, s), m in itertools.product(PAIRS, METHODS)]
EQUAL_CHANNELS_METHODS = {"fsp": slice(0, -1), "kdsvd": slice(1, -1)}  # the features each compares

#: The sample's cost table: (teacher, method) cells whose one CPU step takes 30 to 150 s (the
#: method's projections of ResNet50's 2048-channel features). ``make test`` never samples them
#: (whatever pairs or methods are added); ``pytest -m grid`` runs them.
SLOW = {("ResNet50", "semckd"), ("ResNet50", "factor")}
PAIRS_PER_METHOD = 3
METHODS_PER_PAIR = 4


def slow(teacher: str, method: str) -> bool:
    return (teacher, method) in SLOW


def rank(method: str, pair: Pair) -> int:
    """A fixed pseudo-random number for the cell (the same on every machine and run): the lower,
    the earlier the cell is sampled."""
    return zlib.crc32(f"{method} on {pair[0]} -> {pair[1]}".encode())


def sampled(methods: list[str], pairs: list[Pair]) -> set[Cell]:
    """Each method on its ``PAIRS_PER_METHOD`` lowest-ranked pairs (rendezvous hashing), leaving
    out :data:`SLOW` cells; then a pair left with fewer than ``METHODS_PER_PAIR`` methods gets its
    lowest-ranked other methods.

    A method's own pairs depend on its name and the pairs alone, not on the other methods or the
    order of names: adding a method changes no other method's cells (while no pair needs the
    top-up: a method added only adds to the pairs' counts), and adding a pair moves a method's
    cell only onto that pair, never between the pairs there were."""
    chosen: set[Cell] = set()
    for method in methods:
        allowed = [pair for pair in pairs if not slow(pair[0], method)]
        for teacher, student in sorted(allowed, key=lambda pair: rank(method, pair))[:PAIRS_PER_METHOD]:
            chosen.add((teacher, student, method))
    for pair in pairs:
        have = {m for t, s, m in chosen if (t, s) == pair}
        others = sorted((m for m in methods if m not in have and not slow(pair[0], m)),
                        key=lambda m: rank(m, pair))
        chosen.update((*pair, m) for m in others[:max(0, METHODS_PER_PAIR - len(have))])
    return chosen


SAMPLE = sampled(METHODS, PAIRS)
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
    """A folder with a tiny CIFAR-100 set (8 training images: two batches for an init stage, the
    first for the step; 4 test images: one batch for the teacher's accuracy check) and one random
    teacher file per teacher of the table, in RepDistiller's layout
    (``save/models/<arch>_vanilla/ckpt_epoch_240.pth``)."""
    root = tmp_path_factory.mktemp("grid")
    write_fake_cifar100(root / "data", n_train=8, n_test=4)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
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
            prepare_cell(parsed, dist)
        message = str(err.value)
        assert "\n" not in message
        assert str(mismatch[0]) in message and str(mismatch[1]) in message
        return
    config, member, loss = prepare_cell(parsed, dist)
    assert config.run.channels_last  # the default memory format
    run = member.run
    before = [p.detach().clone() for p in run.eval_model.parameters()]
    member.train_loader = list(itertools.islice(member.train_loader, 1))
    stats = run_epoch(member, loss, 1, LoopSettings.from_config(config, method), dist)
    assert math.isfinite(stats["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, run.eval_model.parameters()))


def prepare_cell(parsed, dist: DistContext):
    """What :func:`train_student.main` builds of a run before it trains (no folder claimed):
    ``(config, member, loss)``."""
    config, teacher_ckpt = train_student.ready(parsed, dist)
    member, loss, _, _ = train_student.prepare_student(config, dist, teacher_ckpt)
    return config, member, loss


def test_the_sample_covers_every_method_and_pair():
    """The grid is the registry's methods times the table's pairs (each pair of registered
    models); the sample has every method on 3 pairs, every pair with 4 methods, no slow cell."""
    assert all(teacher in model_dict and student in model_dict for teacher, student in PAIRS)
    assert len(CELLS) == len(method_names()) * len(table_pairs()) == len(set(CELLS))
    assert not {(t, s, m) for t, s, m in SAMPLE if slow(t, m)}
    per_method = {m: sum(1 for c in SAMPLE if c[2] == m) for m in METHODS}
    per_pair = {p: sum(1 for c in SAMPLE if c[:2] == p) for p in PAIRS}
    assert min(per_method.values()) >= PAIRS_PER_METHOD and min(per_pair.values()) >= METHODS_PER_PAIR


@pytest.mark.parametrize("new_method", ["aaa", "new_method", "zzz"])
def test_adding_a_method_keeps_the_other_methods_cells(new_method):
    """A method added to the registry (wherever its name sorts) runs on its own pairs; every
    other method keeps its sampled pairs (the old sampler shifted them all by one position)."""
    grown = sampled([*METHODS, new_method], PAIRS)
    assert {cell for cell in grown if cell[2] != new_method} == SAMPLE
    assert sum(1 for cell in grown if cell[2] == new_method) == PAIRS_PER_METHOD


@pytest.mark.parametrize("new_pair", [("ResNet50", "repnew"), ("resnet8", "represnet8")])
def test_adding_a_pair_moves_cells_only_onto_it(new_pair):
    """A pair added to the table gets its methods; a method's other cells stay where they were
    or move onto it, never onto another pair; no slow cell is sampled."""
    grown = sampled(METHODS, [*PAIRS, new_pair])
    assert {cell for cell in grown if cell[:2] != new_pair} <= SAMPLE
    assert sum(1 for cell in grown if cell[:2] == new_pair) >= METHODS_PER_PAIR
    assert not {(t, s, m) for t, s, m in grown if slow(t, m)}


def test_a_method_that_cannot_apply_exits_2_with_one_line(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    teacher, student, method = next(c for c in CELLS if refused(*c))
    with pytest.raises(SystemExit) as exit_info:
        train_student.main(argv(workdir, teacher, student, method))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and method in err[0].lower()
