"""The data-set registry (:mod:`dataset.registry`): every spec is complete, names resolve or
fail in one line, and :mod:`dataset`'s functions ask the spec instead of branching on a name."""
from __future__ import annotations

import ast
import dataclasses
import pkgutil
import sys
from pathlib import Path

import pytest

import dataset as D
import models
from dataset import registry
from dataset.loaders import LOADER_KINDS, LoaderOptions
from helper.errors import UserError
from models.registry import ZOOS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dataset"
#: spec fields that may be None, and what None means
OPTIONAL = {"sample_loaders": "no contrastive (CRD) sampling",
            "train_images": "the training split is what the folders hold (no fixed size)"}


@pytest.mark.parametrize("name", D.dataset_names())
def test_every_spec_is_complete(name):
    spec = D.dataset_spec(name)
    assert isinstance(spec, D.DatasetSpec) and spec.name == name
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        assert value is not None or field.name in OPTIONAL, f"{name}: {field.name} is None"
    assert isinstance(spec.schedule, D.Schedule)
    assert spec.default_loader in LOADER_KINDS
    assert models.zoo_named(spec.model_zoo) is not None
    for builder in ("loaders", "test_loader", "test_split", "sample_k"):
        assert callable(getattr(spec, builder)), f"{name}: {builder} is not callable"
    assert spec.sample_loaders is None or callable(spec.sample_loaders)
    assert isinstance(spec.image_size, int) and spec.image_size > 0
    assert isinstance(spec.classes, int) or callable(spec.classes)
    if not callable(spec.stats):
        mean, std = spec.stats
        assert len(mean) == len(std) == 3 and all(s > 0 for s in std)


def test_in_memory_specs_answer_without_data_files():
    for name in ("cifar100", "digits"):
        assert D.num_classes(name) == D.dataset_spec(name).num_classes()
        mean, std = D.normalization(name)
        assert len(mean) == len(std) == 3
    assert (D.num_classes("cifar100"), D.num_classes("digits")) == (100, 10)
    assert D.sample_k("cifar100", 77) == 77 and D.sample_k("imagenet", 77) == 77


def test_schedules_and_zoos():
    assert D.CIFAR_SCHEDULE == D.Schedule(epochs=240, batch_size=64,
                                          lr_decay_epochs="150,180,210", weight_decay=5e-4,
                                          lr_per_256=None)
    assert D.IMAGENET_SCHEDULE == D.Schedule(epochs=100, batch_size=256,
                                             lr_decay_epochs="30,60,90", weight_decay=1e-4,
                                             lr_per_256=0.1, dot_delta=0.09)
    assert D.CIFAR_SCHEDULE.dot_delta == 0.075  # DOT's (mdistiller's configs)
    expected = {"cifar100": (D.CIFAR_SCHEDULE, "cifar", "device"),
                "digits": (D.CIFAR_SCHEDULE, "cifar", "device"),
                "imagenet": (D.IMAGENET_SCHEDULE, "imagenet", "torchvision")}
    assert D.dataset_names()[:3] == tuple(expected)  # the benchmark's, first; a set added later follows
    for name, (schedule, zoo, loader) in expected.items():
        spec = D.dataset_spec(name)
        assert (spec.schedule, spec.model_zoo, spec.default_loader) == (schedule, zoo, loader)
        assert D.default_loader(name) == loader
    assert D.dataset_spec("imagenet").sample_loaders is None


def test_unknown_name_is_one_line_listing_the_known_ones():
    with pytest.raises(UserError) as err:
        D.dataset_spec("mnist")
    msg = str(err.value)
    assert msg == "unknown dataset 'mnist'; known: " + ", ".join(D.dataset_names())
    assert msg.startswith("unknown dataset 'mnist'; known: cifar100, digits, imagenet")
    for call in (D.num_classes, D.default_loader, D.normalization, D.load_test_split,
                 D.get_test_loader, D.get_dataloaders, D.get_sample_dataloaders):
        with pytest.raises(UserError, match="unknown dataset 'mnist'"):
            call("mnist")
    with pytest.raises(UserError, match="unknown dataset"):
        D.sample_k("mnist", 5)


def test_specs_and_options_are_frozen():
    spec = D.dataset_spec("cifar100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoaderOptions().batch_size = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        D.CIFAR_SCHEDULE.epochs = 1  # type: ignore[misc]


def test_spec_rejects_unknown_loader_kind_and_zoo():
    spec = D.dataset_spec("digits")
    with pytest.raises(ValueError, match="default loader"):
        dataclasses.replace(spec, default_loader="dali")
    with pytest.raises(ValueError, match="model zoo"):
        dataclasses.replace(spec, model_zoo="mnist")


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant of ``tree`` except docstrings, with its line."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_dataset_functions_do_not_branch_on_names():
    """No ``dataset == 'imagenet'``, no name-keyed dict, no name literal at all in the code of
    :mod:`dataset` (docstrings aside): what differs per set lives in its spec."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    names = set(D.dataset_names())
    found = [(line, text) for line, text in _string_constants(tree)
             if any(name in text for name in names)]
    assert found == [], f"data-set names in dataset/__init__.py: {found}"
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp, ast.Match)):
            assert not isinstance(node, ast.Match), f"line {node.lineno}: match statement"
            for sub in ast.walk(node.test):
                if isinstance(sub, ast.Compare):
                    operands = [sub.left, *sub.comparators]
                    assert not any(isinstance(o, ast.Name) and o.id == "dataset"
                                   for o in operands), f"line {sub.lineno}: compares dataset"


def _project_imports(path: Path) -> tuple[set[str], list[int]]:
    """(top-level project packages imported by ``path``, lines of imports inside functions)."""
    tree = ast.parse(path.read_text())
    project = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").split(".")[0] in project:
                    nested.append(sub.lineno)
                if isinstance(sub, ast.Import) and any(a.name.split(".")[0] in project
                                                       for a in sub.names):
                    nested.append(sub.lineno)
        if isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
    return top & project, nested


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_dataset_layer_imports_only_itself_and_helper(path):
    imported, nested = _project_imports(path)
    assert imported <= {"dataset", "helper"}, f"{path.name} imports {imported}"
    assert nested == [], f"{path.name}: project imports inside functions at lines {nested}"


def test_registry_lists_every_spec_once():
    names = D.dataset_names()
    assert len(set(names)) == len(names) and names[:3] == ("cifar100", "digits", "imagenet")
    assert all(D.dataset_spec(name).name == name for name in names)
    assert D.DEFAULT_DATASET in names
    assert {name: D.dataset_spec(name).image_size for name in names[:3]} == {
        "cifar100": 32, "digits": 32, "imagenet": 224}


def test_every_module_of_the_folder_is_imported():
    """A built-in set is its file alone: importing :mod:`dataset` imports every module of the
    folder (a new dataset/<name>.py registers itself with no import line)."""
    modules = [f"dataset.{module.name}" for module in pkgutil.iter_modules(D.__path__)]
    assert {"dataset.cifar100", "dataset.digits", "dataset.imagenet", "dataset.synthetic"} <= set(modules)
    assert [name for name in modules if name not in sys.modules] == []


def test_each_zoo_is_selected_by_its_first_set_and_the_offline_set_is_built_in():
    assert {kind: D.zoo_dataset(kind) for kind in ZOOS} == {"cifar": "cifar100", "imagenet": "imagenet"}
    with pytest.raises(ValueError, match="no registered data set uses the model zoo 'mnist'"):
        D.zoo_dataset("mnist")
    assert D.OFFLINE_DATASET == "digits"


def test_register_dataset_adds_a_set_and_refuses_a_name_twice(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # undone after the test
    tiny = dataclasses.replace(D.dataset_spec("digits"), name="tiny", image_size=16,
                               description="a test set")
    assert D.register_dataset(tiny) is tiny
    assert D.dataset_names()[-1] == "tiny" and D.dataset_spec("tiny") is tiny
    assert "tiny: a test set" in D.dataset_help()
    with pytest.raises(ValueError, match="registered twice"):
        D.register_dataset(tiny)
    with pytest.raises(TypeError):
        D.register_dataset({"name": "dict"})
