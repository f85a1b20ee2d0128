"""``--plugin MODULE`` (:mod:`helper.plugins`): imported before an entry script builds its parser,
recorded in the configuration only when given (so runs without it record what they always did),
compared by ``--resume``, and a plugin that cannot be imported is one line naming it. In process,
with plugins that register nothing (the README's four registering ones run end to end in
``tests/test_extending.py``)."""
from __future__ import annotations

import json
import sys

import pytest

import convert
import train_student
import train_teacher
import validation
from engine.config import config_dict
from engine.trainer import check_continuation
from helper.errors import UserError
from helper.plugins import import_plugin, plugins_in
from tests.cli_helpers import exit_message

TEACHER = ["--model", "resnet8", "--dataset", "digits"]


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder, the current directory, holding ``noop_plugin.py`` (registers nothing, counts its
    imports) and ``broken_plugin.py`` (raises on import)."""
    (tmp_path / "noop_plugin.py").write_text("import builtins\nbuiltins.NOOP_IMPORTS = "
                                             "getattr(builtins, 'NOOP_IMPORTS', 0) + 1\n")
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('the plugin is broken')\n")
    monkeypatch.chdir(tmp_path)
    for name in ("noop_plugin", "broken_plugin"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("noop_plugin", "broken_plugin"):
        sys.modules.pop(name, None)
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]


def test_the_plugins_of_a_command_line_in_order():
    assert plugins_in(["--plugin", "a", "--epochs", "2", "--plugin=b.py"]) == ["a", "b.py"]
    assert plugins_in(["--epochs", "2"]) == []
    assert plugins_in(["--plugin"]) == []  # the entry script's parser says what is missing


def test_a_module_or_a_file_is_imported_once(plugin_dir):
    import builtins

    first = import_plugin("noop_plugin")
    assert import_plugin("noop_plugin") is first
    assert import_plugin(str(plugin_dir / "noop_plugin.py")) is first  # the same file, by its path
    assert builtins.NOOP_IMPORTS == 1
    del builtins.NOOP_IMPORTS


@pytest.mark.parametrize("script", [train_teacher, train_student, convert, validation])
def test_a_plugin_that_cannot_be_imported_is_one_line(plugin_dir, capsys, script):
    line = exit_message(capsys, script.main, ["--plugin", "broken_plugin"])
    assert line == ("error: --plugin broken_plugin: importing it failed (RuntimeError: the plugin is "
                    "broken); fix the plugin or leave --plugin broken_plugin out")
    line = exit_message(capsys, script.main, ["--plugin", "no_such_plugin"])
    assert line.startswith("error: --plugin no_such_plugin: no module no_such_plugin in the current directory")
    line = exit_message(capsys, script.main, ["--plugin", "missing/plugin.py"])
    assert line.startswith("error: --plugin missing/plugin.py: no such file")


def test_the_configuration_records_the_plugins_only_when_given(plugin_dir, capsys):
    train_teacher.main([*TEACHER, "--print_config"])
    assert "plugin" not in json.loads(capsys.readouterr().out)
    train_teacher.main([*TEACHER, "--print_config", "--plugin", "noop_plugin", "--plugin", "./noop_plugin.py"])
    assert json.loads(capsys.readouterr().out)["plugin"] == ["noop_plugin", "./noop_plugin.py"]
    config = train_student.parse_option(["--path_t", "t.pth", "--model_t", "resnet8", "--model_s", "resnet8",
                                         "--plugin", "noop_plugin"])
    assert config.run.plugin == ("noop_plugin",)
    assert train_student.student_config(config)["plugin"] == ["noop_plugin"]
    assert "plugin" not in config_dict(train_student.parse_option(["--path_t", "t.pth", "--model_t", "resnet8"]))


def test_resume_compares_the_recorded_plugins(plugin_dir):
    with_plugin = train_teacher.parse_option([*TEACHER, "--plugin", "noop_plugin"])
    without = train_teacher.parse_option(TEACHER)
    ckpt = {"arch": "resnet8", "epoch": 1, "config": config_dict(with_plugin)}
    assert check_continuation(ckpt, "last.pth", with_plugin, "resnet8") == []
    with pytest.raises(UserError, match=r"\(plugin: noop_plugin in the checkpoint, \(not recorded\) in the command\)"):
        check_continuation(ckpt, "last.pth", without, "resnet8")
    older = {"arch": "resnet8", "epoch": 1, "config": config_dict(without)}  # recorded no plugin
    assert check_continuation(older, "last.pth", with_plugin, "resnet8") == []
