"""Generated blocks of the README: text between a begin and an end marker (HTML comments) that a
script rewrites from the registries or the experiment files (``scripts/method_table.py``,
``scripts/registry_tables.py``, ``scripts/table_scripts.py``) and a test checks is current."""
from __future__ import annotations

from helper.errors import UserError


def with_block(readme: str, begin: str, end: str, text: str) -> str:
    """``readme`` with everything from ``begin`` to ``end`` (both kept) replaced by ``text``,
    set off by blank lines; a :class:`UserError` naming the markers when they are missing."""
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise UserError(f"README.md has no generated block between {begin!r} and {end!r}")
    return readme[:start] + "\n".join([begin, "", text, "", end]) + readme[stop + len(end):]
