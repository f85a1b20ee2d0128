"""The README's tables of models, block types and data sets are the ones
``scripts/registry_tables.py`` generates from the registries, and an entry registered later
(as a file in the tree or a ``--plugin`` would add it) joins its table with no other edit."""
from __future__ import annotations

import sys
import types

import pytest
import torch.nn as nn

from dataset import registry as dataset_registry
from dataset.registry import DatasetSpec, register_dataset
from models import CIFAR_ZOO
from models.rep_blocks import BLOCK_TYPES, register_block_type
from scripts import registry_tables


def test_readme_tables_are_current():
    with open(registry_tables.README, encoding="utf-8") as fh:
        readme = fh.read()
    assert registry_tables.with_tables(readme) == readme, "run python scripts/registry_tables.py --write"
    for block in registry_tables.BLOCKS:
        assert registry_tables.begin(block) in readme and registry_tables.end(block) in readme


def test_check_exits_1_on_a_stale_readme(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "README.md"
    with open(registry_tables.README, encoding="utf-8") as fh:
        stale.write_text(fh.read().replace("| `ACB` |", "| `ACB-old` |"), encoding="utf-8")
    monkeypatch.setattr(registry_tables, "README", str(stale))
    assert registry_tables.main(["--check"]) == 1
    assert "registry_tables.py --write" in capsys.readouterr().err
    assert registry_tables.main(["--write"]) == 0 and registry_tables.main(["--check"]) == 0


@pytest.fixture
def registries(monkeypatch):
    """The model, block-type and data-set registries, restored after the test."""
    monkeypatch.setattr(CIFAR_ZOO, "models", dict(CIFAR_ZOO.models))
    monkeypatch.setattr(CIFAR_ZOO, "_facts", dict(CIFAR_ZOO._facts))
    monkeypatch.setattr(CIFAR_ZOO, "rep_names", set(CIFAR_ZOO.rep_names))
    monkeypatch.setattr(dataset_registry, "_SPECS", dict(dataset_registry._SPECS))
    for name in list(BLOCK_TYPES):
        monkeypatch.setitem(BLOCK_TYPES, name, BLOCK_TYPES[name])
    yield
    BLOCK_TYPES.pop("TwinConv", None)


def test_a_registered_model_block_type_and_data_set_join_their_tables(registries, monkeypatch):
    module = types.ModuleType("my_tiny_models", "Tiny test networks (``tinynet``), one conv. More text.")
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def tinynet(num_classes: int = 100, **kw) -> nn.Module:
        return nn.Conv2d(3, num_classes, 1)

    tinynet.__module__ = module.__name__
    CIFAR_ZOO.register("tinynet")(tinynet)

    @register_block_type("TwinConv")
    class TwinConv(nn.Module):
        """Two KxK conv+BN branches | summed. Fused like the others."""

    register_dataset(DatasetSpec(
        name="tiny", classes=3, stats=lambda: ((0.5,) * 3, (0.25,) * 3), schedule=None,
        default_loader="device", loaders=None, sample_loaders=None, test_loader=None,
        test_split=None, sample_k=None, model_zoo="cifar", image_size=16,
        description="three classes under <data_folder>/tiny"))

    tables = registry_tables.tables()
    assert ("| cifar | `my_tiny_models` | Tiny test networks (`tinynet`), one conv. | tinynet | no |"
            in tables["model zoo"])
    assert "| `TwinConv` | `TwinConv` | Two KxK conv+BN branches \\| summed. |" in tables["block types"]
    assert ("| `tiny` | three classes under &lt;data_folder&gt;/tiny | 3 | cifar | 16 | `device` |"
            in tables["data sets"])


def test_first_sentence_keeps_an_ellipsis_and_stops_at_the_full_stop():
    assert registry_tables.first_sentence("Nets ``a`` ... ``b``. Then more.\n\nOther.") == "Nets `a` ... `b`."
    assert registry_tables.first_sentence(None) == ""
    assert registry_tables.first_sentence("No full stop") == "No full stop"
