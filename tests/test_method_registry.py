"""The method registry is the one list of methods: no module outside ``distiller_zoo/`` (and
``tests/``) names a method or imports a method-specific class, each method flag is declared once
(its ``Params`` field, read by parsing, the range check and the typed configuration), and the
README's methods table is the one ``scripts/method_table.py`` generates."""
from __future__ import annotations

import argparse
import ast
import importlib
from dataclasses import fields

import pytest

from distiller_zoo.methods import (METHODS, Distiller, Params, SampleFlags, build_method, get_method,
                                   method_flag_ranges, method_names, method_params_classes, register_method)
from engine.options import FLAG_RANGES, check_flag_values
from helper.errors import UserError
from helper.ranges import Range
from scripts import method_table
from tests.test_architecture import parse, project_files

#: Modules outside distiller_zoo/ may import from these only (the registry's public API).
PUBLIC = ("distiller_zoo", "distiller_zoo.methods")


def _outside() -> list[str]:
    return [p for p in project_files() if not p.startswith("distiller_zoo/")]


def _method_specific(module: str, name: str) -> bool:
    """A class defined by a method (its ``Distiller``, its ``Params``, a loss class)."""
    obj = getattr(importlib.import_module(module), name, None)
    return isinstance(obj, type) and (obj.__module__ != "distiller_zoo.methods.base"
                                      or obj in METHODS.values())


def test_no_module_outside_the_zoo_names_a_method():
    names = set(method_names())
    offenders = [f"{path}:{node.lineno} {node.value!r}" for path in _outside()
                 for node in ast.walk(parse(path))
                 if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]
    assert not offenders, "method names outside distiller_zoo/ (read the registry):\n  " + "\n  ".join(offenders)


def test_no_module_outside_the_zoo_imports_a_method_specific_class():
    offenders = []
    for path in _outside():
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                offenders += [f"{path}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("distiller_zoo") and a.name not in PUBLIC]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distiller_zoo"):
                if node.module not in PUBLIC:
                    offenders.append(f"{path}:{node.lineno} {node.module}")
                    continue
                offenders += [f"{path}:{node.lineno} {node.module}.{a.name}" for a in node.names
                              if _method_specific(node.module, a.name)]
    assert not offenders, "method-specific imports outside distiller_zoo/:\n  " + "\n  ".join(offenders)


@pytest.mark.parametrize("source, offends", [
    ("from distiller_zoo.methods import CRDParams", True),
    ("from distiller_zoo.methods.embedding import MAX_FEAT_DIM", True),
    ("from distiller_zoo import DistillKL", True),
    ("from distiller_zoo.methods import Params, get_method, DEFAULT_METHOD", False),
])
def test_the_import_rule_tells_method_specific_classes(source, offends):
    node = ast.parse(source).body[0]
    found = node.module not in PUBLIC or any(_method_specific(node.module, a.name) for a in node.names)
    assert found == offends


def test_each_method_flag_range_is_declared_with_the_flag():
    """The range check reads the methods' fields: no method flag in the entry scripts' table,
    and every bounded method flag refused out of its range by check_flag_values."""
    ranges = method_flag_ranges()
    method_flags = {f.name for cls in method_params_classes() for f in fields(cls)}
    assert not method_flags & set(FLAG_RANGES)
    assert {"nce_k", "feat_dim", "dkd_warmup", "nce_t", "nce_m", "dkd_T", "dkd_alpha", "dkd_beta"} <= set(ranges)
    for name, rule in ranges.items():
        bad = rule.low - 1 if rule.low is not None else rule.high + 1
        with pytest.raises(UserError, match=rf"^--{name} "):
            check_flag_values({name: bad})


def test_a_method_sampling_negatives_names_its_flags():
    """needs_index and sample_flags agree, the sample loader's k and mode come from the method's
    own parameters, and with_negatives replaces k."""
    for name in method_names():
        cls = get_method(name)
        assert cls.needs_index == (cls.sample_flags is not None), name
        if cls.sample_flags is None:
            continue
        params = cls.params_class.from_flags({f.name: f.default for f in fields(cls.params_class)})
        k, mode = cls.sampling(params)
        assert cls.sampling(cls.with_negatives(params, k - 1)) == (k - 1, mode)


def test_a_method_without_sample_indices_declares_no_sample_flags():
    class Odd(Distiller):
        sample_flags = SampleFlags(k="nce_k", mode="mode")

    with pytest.raises(TypeError, match="sample_flags"):
        register_method("odd-method-for-this-test")(Odd)
    assert "odd-method-for-this-test" not in METHODS


def test_build_method_fills_no_flag_silently():
    """The legacy build_method reads every flag from the namespace: a missing one is an error,
    not the dataclass default."""
    with pytest.raises(TypeError, match="batch_size"):
        build_method("kd", argparse.Namespace(kd_T=4.0, logit_stand=False), None, None, [], [], 1)
    assert not hasattr(Params, "from_options")


def test_logit_stand_refusal_comes_from_the_method():
    for name in method_names(lambda c: not c.supports_logit_stand):
        cls = get_method(name)
        with pytest.raises(UserError, match=rf"not to --distill {name}"):
            check_flag_values({"distill": name, "logit_stand": True})
        if cls.logit_stand_note:
            with pytest.raises(UserError, match=cls.logit_stand_note):
                cls.check_logit_stand(True)


def test_readme_methods_table_is_generated_from_the_registry():
    with open(method_table.README, encoding="utf-8") as fh:
        readme = fh.read()
    assert method_table.with_table(readme) == readme, "run python scripts/method_table.py --write"
    for name in method_names():
        assert method_table.row(name) in readme
        assert get_method(name).paper and get_method(name).loss_classes, name


def test_readme_method_flags_are_generated_from_the_registry():
    """The "Flags:" paragraph under the methods table is what ``scripts/method_table.py`` makes
    of the methods' ``Params`` declarations: every method's own flag with its default."""
    with open(method_table.README, encoding="utf-8") as fh:
        readme = fh.read()
    assert method_table.with_flags(readme) == readme, "run python scripts/method_table.py --write"
    paragraph = method_table.flags_paragraph()
    for cls in method_params_classes():
        for f in fields(cls):
            assert f"`--{f.name} " in paragraph, f.name


def test_flag_ranges_read_as_written():
    assert method_table.bounds(Range(1, 65536)) == "1..65536"
    assert method_table.bounds(Range(0, 1, high_open=True)) == "[0, 1)"
    assert method_table.bounds(Range(0, low_open=True)) == "> 0"
    assert method_table.bounds(Range(1)) == ">= 1"
