"""Unpickling that cannot run code: only an explicit allow-list of globals is resolved.

A pickle runs code by naming a global (``posix.system``, ``builtins.open``, a class with a
``__reduce__``) and calling it. :class:`RestrictedUnpickler` resolves a global only when its
``(module, name)`` is in the allow-list it is given, and raises :class:`RefusedGlobal` (naming
it) for anything else, before anything is called. Every way a pickle reaches a global (``GLOBAL``,
``STACK_GLOBAL``, ``INST``, ``OBJ``, the copyreg extension opcodes) goes through
:meth:`~pickle.Unpickler.find_class`; persistent ids and out-of-band buffers are refused.

:func:`numpy_array_globals` is the allow-list for numpy arrays and scalars as numpy 1.x/2.x
and Python 2 numpy pickle them; with no globals at all only dicts, lists, tuples, sets, str,
bytes, numbers, booleans and None can be built.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import io
import pickle
from typing import IO, Any, Mapping

import numpy as np

__all__ = ["RefusedGlobal", "RestrictedUnpickler", "numpy_array_globals", "python3_name",
           "restricted_load", "restricted_loads"]

_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def python3_name(module: str, name: str) -> str:
    """``module.name`` of a pickled global, with Python 2 names (``__builtin__.eval``,
    ``commands.Popen``) given their Python 3 spelling, as an error message should show them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}" if module else name


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that is not allow-listed: ``module`` and ``name`` as written,
    ``qualname`` in Python 3 spelling (e.g. ``posix.system``, ``builtins.eval``)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        self.qualname = python3_name(module, name)
        super().__init__(f"refused to unpickle {self.qualname}")


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol 2 (``latin1`` only)."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1 or errors != "strict":
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return codecs.encode(text, "latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only the globals in ``allowed``.

    ``allowed`` maps ``(module, name)`` as written in the pickle (no Python 2 name fixing) to
    the object to use for it.
    """

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any] | None = None,
                 encoding: str = "ASCII", errors: str = "strict") -> None:
        super().__init__(file, fix_imports=False, encoding=encoding, errors=errors)
        self._allowed = dict(allowed or {})

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(str(module), str(name)) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent reference (not a plain pickle)")


def restricted_load(file: IO[bytes], allowed: Mapping[tuple[str, str], Any] | None = None,
                    encoding: str = "ASCII") -> Any:
    """Unpickle one object from ``file`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file, allowed, encoding=encoding).load()


def restricted_loads(data: bytes, allowed: Mapping[tuple[str, str], Any] | None = None,
                     encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return restricted_load(io.BytesIO(data), allowed, encoding=encoding)


def numpy_array_globals() -> dict[tuple[str, str], Any]:
    """Allow-list for numpy arrays and scalars of plain dtypes.

    What the pickles reference: ``numpy.core.multiarray._reconstruct`` (numpy 1.x and Python 2
    numpy, e.g. the official CIFAR files) or ``numpy._core.multiarray._reconstruct`` (numpy 2.x),
    ``numpy.ndarray`` and ``numpy.dtype`` for arrays; ``numpy.[_]core.multiarray.scalar`` for
    scalars; ``numpy.[_]core.numeric._frombuffer`` for arrays at protocol 5; and
    ``_codecs.encode`` (latin1 only) for ``bytes`` that Python 3 pickled at protocol 2.
    """
    core = getattr(np, "_core", None) or np.core
    multiarray, numeric = core.multiarray, core.numeric
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        frombuffer = getattr(numeric, "_frombuffer", None)
        if frombuffer is not None:
            allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed
