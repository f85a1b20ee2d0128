"""Generated blocks of the README: text between a begin and an end marker (HTML comments) that a
script rewrites from the registries or the experiment files (``scripts/method_table.py``,
``scripts/registry_tables.py``, ``scripts/table_scripts.py``) and a test checks is current."""
from __future__ import annotations

import sys
from typing import Callable

from helper.errors import UserError


def with_block(readme: str, begin: str, end: str, text: str) -> str:
    """``readme`` with everything from ``begin`` to ``end`` (both kept) replaced by ``text``,
    set off by blank lines; a :class:`UserError` naming the markers when they are missing."""
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise UserError(f"README.md has no generated block between {begin!r} and {end!r}")
    return readme[:start] + "\n".join([begin, "", text, "", end]) + readme[stop + len(end):]


def check_or_write(readme_path: str, regenerate: Callable[[str], str], write: bool, what: str,
                   command: str) -> int:
    """A generator's ``--write`` (rewrite ``readme_path`` with ``regenerate(text)`` where that
    differs; 0) or ``--check`` (0 when current; else 1 and one line on stderr saying ``what`` is
    out of date and to run ``command``)."""
    with open(readme_path, encoding="utf-8") as fh:
        readme = fh.read()
    current = regenerate(readme)
    if current == readme:
        return 0
    if write:
        with open(readme_path, "w", encoding="utf-8") as fh:
            fh.write(current)
        return 0
    print(f"error: README.md's {what} out of date; run {command}", file=sys.stderr)
    return 1
