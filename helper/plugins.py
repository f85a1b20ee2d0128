"""``--plugin MODULE``: the user's own registrations, imported before an entry script builds
its command line.

A method (``register_method``), a model (``register_model``), a block type
(``register_block_type``) or a data set (``register_dataset``) registered in a file outside
the tree becomes a choice of every entry script when that file is imported before the parser
reads the registries. Each entry script calls :func:`import_plugins` on its arguments first;
its parser declares the flag too (``--help``; a run's configuration records it).

``MODULE`` is a module name, importable from the current directory or ``PYTHONPATH``
(``--plugin my_method``), or the path of a ``.py`` file (``--plugin ../ext/my_method.py``),
which is imported under its file's stem. The flag repeats; the modules are imported in the
order given, each once per process. A plugin that cannot be imported stops with one line
naming it.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

from helper.errors import UserError

FLAG = "--plugin"
HELP = ("import MODULE first (a module name importable from the current directory or "
        "PYTHONPATH, or a .py file's path): a method, model, block type or data set it "
        "registers is then a choice of this script; repeatable, recorded in the run's configuration")


def plugins_in(argv: Sequence[str]) -> list[str]:
    """The values of every ``--plugin`` in ``argv``, in order; a malformed command line
    yields what it can (the entry script's own parser then reports the mistake)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument(FLAG, action="append", default=[])
    try:
        return parser.parse_known_args(list(argv))[0].plugin
    except argparse.ArgumentError:
        return []


def import_plugins(argv: Sequence[str] | None = None) -> list[ModuleType]:
    """Import the ``--plugin`` modules of ``argv`` (``sys.argv[1:]`` when None)."""
    return [import_plugin(name) for name in plugins_in(sys.argv[1:] if argv is None else argv)]


def _is_path(name: str) -> bool:
    return name.endswith(".py") or os.sep in name or (os.altsep is not None and os.altsep in name)


def import_plugin(name: str) -> ModuleType:
    """The module ``name`` (a module name or a ``.py`` path), imported once; one line
    (:class:`UserError`) naming it when it cannot be found or its import fails."""
    try:
        return _import_file(name) if _is_path(name) else _import_module(name)
    except UserError as err:
        raise UserError(f"{FLAG} {name}: {err}") from None
    except Exception as err:  # the plugin's own code failed: say which plugin, and how
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise UserError(f"{FLAG} {name}: importing it failed ({reason}); fix the plugin "
                        f"or leave {FLAG} {name} out") from None


def _import_module(name: str) -> ModuleType:
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)  # after the project's own modules: a file here cannot shadow them
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and name != err.name and not name.startswith(f"{err.name}."):
            raise  # a module the plugin imports is missing: reported as its failure
        raise UserError(f"no module {name} in the current directory ({here}) or on PYTHONPATH; "
                        "give a module name importable from here or the path of a .py file") from None


def _import_file(path: str) -> ModuleType:
    file = Path(path).resolve()
    if not file.is_file():
        raise UserError(f"no such file ({file}); give the path of a .py file or a module name")
    stem = file.stem
    loaded = sys.modules.get(stem)
    if loaded is not None:
        if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == file:
            return loaded
        raise UserError(f"a module named {stem} is already imported (from "
                        f"{getattr(loaded, '__file__', None) or 'built in'}); rename the file")
    spec = importlib.util.spec_from_file_location(stem, file)
    if spec is None or spec.loader is None:
        raise UserError(f"{file} cannot be imported as a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module  # before running it: dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[stem]
        raise
    return module


def relative_to(name: str, folder: str) -> str:
    """A plugin named in a file that lies in ``folder`` (an experiment file): a ``.py`` path is
    taken relative to ``folder`` (``~`` expanded; an absolute one as it is), a module name is
    left as it is (imported from the current directory or ``PYTHONPATH``)."""
    if not _is_path(name):
        return name
    return os.path.normpath(os.path.join(folder, os.path.expanduser(name)))


def add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    """Declare ``--plugin`` on an entry script's parser (for ``--help`` and the configuration;
    the modules were imported before the parser was built, :func:`import_plugins`)."""
    parser.add_argument(FLAG, action="append", default=None, metavar="MODULE", help=HELP)


def recorded_plugins(values: Sequence[str] | None) -> tuple[str, ...]:
    """``--plugin``'s values as a configuration holds them (none given: ``()``)."""
    return tuple(values or ())
