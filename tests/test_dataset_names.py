"""Data sets are named only in :mod:`dataset` (issue 19), and a set registered from a file of
its own is a ``--dataset`` of every entry script.

1. No module outside ``dataset/`` and ``tests/`` holds a string literal equal to a registered
   data-set name: defaults come from :data:`dataset.DEFAULT_DATASET` (the offline one from
   :data:`dataset.OFFLINE_DATASET`), choices and help from the registry, every per-set fact
   (image size, model zoo, schedule) from the spec, and which ``--dataset`` selects a model zoo
   from :func:`dataset.zoo_dataset`. Checked on the source with ``ast``, as
   ``tests/test_architecture.py`` checks the layers; the one literal let through is a zoo's kind
   in ``ModelRegistry(...)`` (the ImageNet zoo's key is spelled like the ImageNet set).
2. A set registered by a module in a temporary folder (not in the tree) is accepted by
   ``train_teacher.py``, ``train_student.py`` (``--print_config`` too), ``convert.py`` and
   ``validation.py``, and ``convert.py`` exports ONNX at its spec's image size. In process, with
   the registry restored afterwards, so nothing is trained and no subprocess starts.
"""
from __future__ import annotations

import ast
import importlib
import json
import sys

import pytest

import convert
import dataset
import train_student
import train_teacher
import validation
from dataset import registry
from models import CIFAR_ZOO
from models.registry import ZOOS
from tests.test_architecture import parse, project_files


def _zoo_kinds(tree: ast.AST) -> set[int]:
    """The ``kind`` argument of each ``ModelRegistry(...)`` call (by node id): a zoo's key, the
    string a spec's ``model_zoo`` names. The ImageNet zoo's is spelled like the ImageNet set,
    but it names a zoo, not a data set."""
    kinds = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ModelRegistry":
            given = node.args[:1] + [k.value for k in node.keywords if k.arg == "kind"]
            kinds.update(id(arg) for arg in given if isinstance(arg, ast.Constant))
    return kinds


def _spelled(tree: ast.AST, names: set[str]) -> list[ast.Constant]:
    """The string literals of ``tree`` equal to one of ``names``, zoo kinds aside."""
    kinds = _zoo_kinds(tree)
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and node.value in names and id(node) not in kinds]


def test_no_module_outside_dataset_names_a_data_set():
    names = set(dataset.dataset_names())
    outside = [path for path in project_files() if not path.startswith("dataset/")]
    found = [f"{path}:{node.lineno} {node.value!r}" for path in outside
             for node in _spelled(parse(path), names)]
    assert found == [], "data-set names outside dataset/ (read the spec instead):\n" + "\n".join(found)


def test_only_a_zoo_kind_is_let_through():
    """The rule's one exception is narrow: the kind of a ``ModelRegistry(...)``, nothing else
    (a comparison with the same string is caught), and the project declares only its zoos so."""
    tree = ast.parse('ModelRegistry("imagenet", "an ImageNet", 1000)\nif x == "imagenet":\n    pass\n'
                     'ModelRegistry(kind="digits", name="x", default_classes=10)\n')
    assert [(node.lineno, node.value) for node in _spelled(tree, {"imagenet", "digits"})] == [(2, "imagenet")]
    declared = set()
    for path in project_files():
        tree = parse(path)
        kinds = _zoo_kinds(tree)
        declared |= {node.value for node in ast.walk(tree) if id(node) in kinds}
    assert declared == set(ZOOS)


PLUGIN = '''
from dataclasses import replace

from dataset import dataset_spec, register_dataset

register_dataset(replace(dataset_spec("digits"), name="tinyset", image_size=16,
                         description="a test set from a file of its own"))
'''


@pytest.fixture
def tinyset(tmp_path, monkeypatch):
    """``tinyset`` (digits' spec at 16x16) registered by ``tmp_path/my_tinyset.py``; the
    registry is a copy that the test's end drops."""
    (tmp_path / "my_tinyset.py").write_text(PLUGIN)
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_tinyset", raising=False)
    importlib.import_module("my_tinyset")
    yield "tinyset"
    sys.modules.pop("my_tinyset", None)


def test_a_set_from_its_own_file_is_a_choice_of_every_entry_script(tinyset, capsys):
    assert train_teacher.parse_option(["--model", "resnet8", "--dataset", tinyset]).data.dataset == tinyset
    config = train_student.parse_option(["--path_t", "t.pth", "--model_t", "resnet8",
                                         "--model_s", "resnet8", "--dataset", tinyset])
    assert config.data.dataset == tinyset
    train_student.main(["--path_t", "t.pth", "--model_t", "resnet8", "--model_s", "resnet8",
                        "--dataset", tinyset, "--print_config"])
    assert json.loads(capsys.readouterr().out)["dataset"] == tinyset
    train_teacher.main(["--model", "resnet8", "--dataset", tinyset, "--print_config"])
    assert json.loads(capsys.readouterr().out)["dataset"] == tinyset
    assert convert.parse_option(["--load", "m.pth", "--onnx", "m.onnx", "--dataset", tinyset]).dataset == tinyset
    assert validation.parse_option(["--model_path", "m.pth", "--dataset", tinyset]).dataset == tinyset
    help_text = " ".join(train_teacher.build_parser().format_help().split())
    assert "tinyset: a test set from a file of its own" in help_text


def test_convert_exports_onnx_at_the_image_size_of_the_spec(tinyset, monkeypatch):
    seen = {}

    def fake_export(model, size, label, meta):
        seen.update(size=size, meta=meta)

    monkeypatch.setattr(convert, "export_onnx", fake_export)
    model = CIFAR_ZOO.build("resnet8", num_classes=10)
    convert.export(model, "resnet8", None, CIFAR_ZOO, tinyset)
    assert seen == {"size": 16, "meta": {"arch": "resnet8", "form": "plain", "dataset": tinyset}}
    convert.export(model, "resnet8", None, CIFAR_ZOO, None)  # no data set: the zoo's own
    assert seen["size"] == dataset.dataset_spec(dataset.zoo_dataset(CIFAR_ZOO.kind)).image_size


def test_unregistered_set_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        train_teacher.parse_option(["--model", "resnet8", "--dataset", "tinyset"])
    assert done.value.code == 2
    assert "tinyset" in capsys.readouterr().err


def test_every_built_in_set_is_in_the_dataset_help():
    text = " ".join(train_teacher.build_parser().format_help().split())
    for name in dataset.dataset_names():
        assert f"{name}:" in text, name
