"""Reading data pickles by walking their opcodes: nothing is unpickled, imported or called.

A pickle is a program for a small stack machine, and :mod:`pickle` runs it: every global it
names is imported and called, so any generic unpickler (even one with an allow-list of
callables) hands the file numpy's or Python's machinery to misuse. :func:`read_pickle` walks
the opcodes itself (protocols 0 to 5) and builds only plain data: dicts, lists, tuples, sets,
``str``, ``bytes``, ints, floats, booleans and ``None``. Python 2 strings (``STRING``,
``BINSTRING``, ``SHORT_BINSTRING``) come back as ``str`` decoded as latin-1, as
``pickle.load(f, encoding='latin1')`` gives them.

Globals are never resolved. A ``GLOBAL``/``STACK_GLOBAL`` is compared with a short table of
names and kept as a token that describes a layout:

* ``_codecs.encode`` (latin-1 only) and ``builtins.bytes`` (no arguments): ``bytes`` as
  Python 3 writes them at protocol 2;
* with ``max_array_bytes`` given, numpy arrays of plain numeric dtypes as numpy writes them:
  ``numpy.[_]core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` followed by ``BUILD``
  with ``(1, shape, dtype, is_fortran, raw bytes)`` (numpy 1.x, 2.x and Python 2 numpy, e.g.
  the official CIFAR files), or ``numpy.[_]core.numeric._frombuffer(buffer, dtype, shape,
  order)`` (protocol 5), with dtypes as ``numpy.dtype(code, False, True)`` plus ``BUILD``
  ``(3, byte order, None, None, None, -1, -1, 0)``. The array is made here with
  ``np.frombuffer`` over the raw bytes read from the file, its shape checked to match their
  length exactly (so no stride or broadcast trick is possible).

Anything else is refused with :class:`PickleError` (one line): any other global
(:class:`RefusedGlobal`, naming it), object or structured dtypes, ``REDUCE``/``BUILD`` on
anything but the forms above, objects (``INST``, ``OBJ``, ``NEWOBJ``), persistent ids,
extension codes, out-of-band buffers and ``DUP``. A memoised list, dict, set or array can not
be fetched again (``GET``) and ``DUP`` is refused, so every container appears once: no cycles,
no sharing, and nesting deeper than ``max_depth`` levels is refused as it is built.

Bounds: the file is read whole, after its size is checked against ``max_file_bytes``; every
length an opcode declares is checked against what is left of it before anything is copied, so
a file cannot make the reader allocate more than its own size (plus Python's per-object
overhead); one array holds at most ``max_array_bytes``.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import functools
import math
import os
import pickletools
import reprlib
import struct
from typing import IO, Any, Callable

import numpy as np

__all__ = ["MAX_DEPTH", "PickleError", "RefusedGlobal", "python3_name", "read_pickle",
           "read_pickle_bytes"]

#: Deepest nesting of containers accepted (a label list is 1 deep, a dict of lists 2).
MAX_DEPTH = 100
#: Longest integer accepted from ``LONG4`` (bytes): every integer read can still be printed
#: (Python refuses ``str`` of an int over 4300 digits; ``LONG1`` stops at 255 bytes, text
#: ``INT``/``LONG`` at 4300 digits).
MAX_LONG_BYTES = 1024
#: Most dimensions an array may declare (numpy's own limit is 64).
MAX_NDIM = 32

#: Plain numeric dtype codes an array may have (numpy's ``dtype.str`` without byte order).
ARRAY_DTYPES = frozenset({"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4",
                          "f8"})

_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})

_BYTES_GLOBALS = {
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
    ("builtins", "bytes"): "bytes",
}
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
}


def python3_name(module: str, name: str) -> str:
    """``module.name`` of a pickled global, with Python 2 names (``__builtin__.eval``,
    ``commands.Popen``) given their Python 3 spelling, as an error message should show them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}" if module else name


def _shown(text: str, limit: int = 80) -> str:
    """``text`` safe for a one-line message: printable, at most ``limit`` characters."""
    text = text[:4 * limit]
    if not text.isprintable():
        text = ascii(text)[1:-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _brief(value: object) -> str:
    """A short printable ``repr`` of ``value`` (strings cut before ``repr`` sees them)."""
    if isinstance(value, (str, bytes, bytearray)):
        return _shown(repr(value[:40]))
    return _shown(reprlib.repr(value))


def _count(n: int) -> str:
    """``n`` in digits, or as a power of two when it is too long to print."""
    return str(n) if n.bit_length() <= 256 else f"about 2**{n.bit_length() - 1}"


def _kind(value: object) -> str:
    """What ``value`` is, in the words of a message."""
    names = {_Py2Str: "str", _Token: "global", _Dtype: "numpy dtype",
             _PendingArray: "numpy array"}
    return names.get(type(value), type(value).__name__)


class PickleError(ValueError):
    """The pickle is damaged, or holds something :func:`read_pickle` does not build (one line)."""


class RefusedGlobal(PickleError):
    """The pickle names a global outside the table: ``qualname`` in Python 3 spelling (e.g.
    ``posix.system``, ``builtins.eval``), made printable and short."""

    def __init__(self, module: str, name: str, offset: int) -> None:
        self.qualname = _shown(python3_name(module[:200], name[:200]))
        super().__init__(f"byte {offset}: refused global {self.qualname}")


class _Py2Str(bytes):
    """A Python 2 ``str``: raw bytes while reading (array data stays bytes), latin-1 ``str``
    in the result."""


class _Token:
    """A global from the table, never resolved: ``kind`` says which layout it stands for."""

    def __init__(self, kind: str, qualname: str) -> None:
        self.kind, self.qualname = kind, qualname


class _Dtype:
    """``numpy.dtype(code, False, True)`` waiting for its ``BUILD`` state (byte order)."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.dtype: np.dtype | None = None


class _PendingArray:
    """``_reconstruct(ndarray, (0,), b'b')`` waiting for its ``BUILD`` state."""


def _is_int(value: object) -> bool:
    return type(value) is int


#: The types of dict keys and set items, and of values compared by :func:`_eq`: plain
#: scalars, whose hash and comparison cost no more than their size (a tuple's hash walks its
#: items, and shared tuples would make that exponential).
_SCALARS = frozenset({int, bool, float, str, bytes, _Py2Str, type(None)})


def _eq(value: object, choice: object) -> bool:
    """``value == choice`` for plain data, at a cost bounded by ``choice`` (``value`` may be a
    numpy array, which compares element-wise, or a huge tuple)."""
    if isinstance(choice, tuple):
        return (type(value) is tuple and len(value) == len(choice)
                and all(_eq(v, c) for v, c in zip(value, choice)))
    return type(value) in _SCALARS and value == choice


def _text(value: object) -> str | None:
    """``value`` as ``str`` if it is text (a Python 2 string counts), else None."""
    if isinstance(value, _Py2Str):
        return value.decode("latin1")
    return value if isinstance(value, str) else None


def _utf8(data: memoryview) -> str:
    return str(data, "utf-8", "surrogatepass")  # as pickle decodes its unicode opcodes


def _signed(data: memoryview) -> int:
    return int.from_bytes(data, "little", signed=True)


_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<I", "<Q"))
_I32, _F64 = struct.Struct("<i"), struct.Struct(">d")

#: Opcode -> name, from :mod:`pickletools` (protocols 0 to 5).
_NAMES = {ord(op.code): op.name for op in pickletools.opcodes}
#: Opcodes refused outright, with what they would build (one line each).
_REFUSED = {
    "OBJ": "OBJ (an object built by calling a class)",
    "NEWOBJ": "NEWOBJ (an object built by calling a class)",
    "NEWOBJ_EX": "NEWOBJ_EX (an object built by calling a class)",
    "PERSID": "a persistent id",
    "BINPERSID": "a persistent id",
    "EXT1": "an extension code (a registered global)",
    "EXT2": "an extension code (a registered global)",
    "EXT4": "an extension code (a registered global)",
    "NEXT_BUFFER": "an out-of-band buffer",
    "READONLY_BUFFER": "an out-of-band buffer",
    "DUP": "DUP (a value referenced twice)",
}
#: Opcodes whose argument is a length-prefixed string: (length layout, longest length accepted
#: or None, what its bytes become).
_SIZED: dict[int, tuple[struct.Struct, int | None, Callable[[memoryview], Any]]] = {
    ord("U"): (_U8, None, _Py2Str),  # SHORT_BINSTRING
    ord("T"): (_I32, None, _Py2Str),  # BINSTRING
    ord("C"): (_U8, None, bytes),  # SHORT_BINBYTES
    ord("B"): (_U32, None, bytes),  # BINBYTES
    0x8E: (_U64, None, bytes),  # BINBYTES8
    0x96: (_U64, None, bytearray),  # BYTEARRAY8 (mutable: OWNED)
    0x8C: (_U8, None, _utf8),  # SHORT_BINUNICODE
    ord("X"): (_U32, None, _utf8),  # BINUNICODE
    0x8D: (_U64, None, _utf8),  # BINUNICODE8
    0x8A: (_U8, None, _signed),  # LONG1
    0x8B: (_I32, MAX_LONG_BYTES, _signed),  # LONG4
}
#: Opcodes with a fixed-size argument: (layout, what is done with the number).
_FIXED: dict[int, tuple[struct.Struct, str]] = {
    ord("K"): (_U8, "push"), ord("M"): (_U16, "push"), ord("J"): (_I32, "push"),  # BININT*
    ord("G"): (_F64, "push"),  # BINFLOAT
    ord("q"): (_U8, "put"), ord("r"): (_U32, "put"),  # BINPUT, LONG_BINPUT
    ord("h"): (_U8, "get"), ord("j"): (_U32, "get"),  # BINGET, LONG_BINGET
}
_STOP = ord(".")
#: Types :meth:`_Reader.finish` returns as they are.
_FINISHED = frozenset({int, str, float, bool, bytes, bytearray, np.ndarray, type(None)})

#: How a value may be shared (fetched again from the memo): OWNED values (lists, dicts, sets,
#: bytearrays, arrays, tuples holding one) appear once, so nothing is shared or cyclic; SHARED
#: ones (globals, built dtypes, tuples holding one) may appear again; FROZEN ones are plain
#: immutable data (scalars, frozensets, tuples of them).
OWNED, SHARED, FROZEN = 0, 1, 2
#: A value on the stack, how deep its containers nest, and how it may be shared.
Item = tuple[Any, int, int]


class _Reader:
    """One pass over one pickle held in ``data``; see :func:`read_pickle`."""

    def __init__(self, data: bytes, max_array_bytes: int | None, max_depth: int) -> None:
        self.data, self.view, self.pos = data, memoryview(data), 0
        self.max_array_bytes, self.max_depth = max_array_bytes, max_depth
        self.globals = dict(_BYTES_GLOBALS)
        if max_array_bytes is not None:
            self.globals.update(_NUMPY_GLOBALS)
        self.stack: list[Item] = []
        self.metastack: list[list[Item]] = []  # MARK saves the stack here and starts a new one
        self.memo: dict[int, Item] = {}
        self.finished: dict[int, Any] = {}  # id of a tuple or frozenset -> its finished copy
        self.opcode_at = 0
        self.handlers: dict[int, Callable[[], None]] = {
            code: getattr(self, f"op_{name}") for code, name in _NAMES.items()
            if hasattr(self, f"op_{name}")}
        self.handlers.update({code: functools.partial(self.refuse, _REFUSED[name])
                              for code, name in _NAMES.items() if name in _REFUSED})

    # ------------------------------------------------------------------ input
    def fail(self, what: str) -> PickleError:
        return PickleError(f"byte {self.opcode_at}: {what}")

    def take(self, n: int, what: str) -> int:
        """Where the next ``n`` bytes start; refused when the file has fewer left."""
        start, left = self.pos, len(self.data) - self.pos
        if n < 0:
            raise self.fail(f"{what} with a negative length {n}")
        if n > left:
            raise self.fail(f"{what} of {n} bytes, but only {left} bytes are left: the file "
                            "is truncated")
        self.pos = start + n
        return start

    def unpack(self, layout: struct.Struct, what: str) -> Any:
        return layout.unpack_from(self.data, self.take(layout.size, what))[0]

    def readline(self, what: str) -> bytes:
        """A protocol-0 argument line, without its newline."""
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise self.fail(f"{what} without its end of line: the file is truncated")
        line, self.pos = self.data[self.pos:end], end + 1
        return line

    # ------------------------------------------------------------------ stack
    def push(self, value: Any, depth: int = 0, share: int = FROZEN) -> None:
        if depth > self.max_depth:
            raise self.fail(f"containers nested more than {self.max_depth} levels deep")
        self.stack.append((value, depth, share))

    def push_tuple(self, items: list[Item]) -> None:
        self.push(tuple(item[0] for item in items), self.depth_of(items),
                  min((item[2] for item in items), default=FROZEN))

    def pop(self, what: str) -> Item:
        if not self.stack:
            raise self.fail(f"{what} on an empty stack")
        return self.stack.pop()

    def pop_mark(self, what: str) -> list[Item]:
        if not self.metastack:
            raise self.fail(f"{what} without a MARK")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    @staticmethod
    def depth_of(items: list[Item]) -> int:
        return 1 + max((item[1] for item in items), default=0)

    def grow(self, items: list[Item], what: str, kind: type) -> Any:
        """The container on top of the stack (of type ``kind``), its depth raised for
        ``items`` about to go in."""
        if not self.stack:
            raise self.fail(f"{what} on an empty stack")
        container, depth, _ = self.stack.pop()
        if type(container) is not kind:
            raise self.fail(f"{what} on a {_kind(container)}, not a {kind.__name__}")
        self.push(container, max(depth, self.depth_of(items)), OWNED)
        return container

    def key(self, item: Item) -> Any:
        if type(item[0]) not in _SCALARS:
            raise self.fail(f"a {_kind(item[0])} as a dict key or set item (only str, bytes, "
                            "numbers and None)")
        return item[0]

    # ------------------------------------------------------------------ the walk
    def run(self) -> Any:
        data, view, end, handlers = self.data, self.view, len(self.data), self.handlers
        pos = 0
        while pos < end:
            code = data[pos]
            sized = _SIZED.get(code)
            if sized is not None:  # the commonest opcodes are read here, without a call
                layout, longest, make = sized
                start = pos + 1 + layout.size
                n = layout.unpack_from(data, pos + 1)[0] if start <= end else -1
                if not 0 <= n <= end - start or (longest is not None and n > longest):
                    raise self.sized_error(pos, code, longest)
                try:
                    value = make(view[start:start + n])
                    self.stack.append((value, 0, OWNED if make is bytearray else FROZEN))
                except UnicodeDecodeError:
                    self.opcode_at = pos
                    raise self.fail(f"{_NAMES[code]} that is not valid UTF-8") from None
                pos = start + n
                continue
            fixed = _FIXED.get(code)
            if fixed is not None:
                layout, action = fixed
                start = pos + 1 + layout.size
                if start > end:
                    raise self.sized_error(pos, code, None)
                number = layout.unpack_from(data, pos + 1)[0]
                if action == "push":
                    self.stack.append((number, 0, FROZEN))
                else:
                    self.opcode_at = pos
                    (self.put if action == "put" else self.get)(number)
                pos = start
                continue
            self.opcode_at, self.pos = pos, pos + 1
            if code == _STOP:
                return self.stop()
            if code not in handlers:
                raise self.fail(f"unknown opcode {bytes([code])!r}: not a pickle")
            handlers[code]()
            pos = self.pos
        self.opcode_at = pos
        raise self.fail("the pickle ends without STOP: the file is truncated")

    def sized_error(self, at: int, code: int, longest: int | None) -> PickleError:
        """Why the argument of the opcode at ``at`` does not fit (the file or the opcode)."""
        self.opcode_at, self.pos = at, at + 1
        layout = _SIZED[code][0] if code in _SIZED else _FIXED[code][0]
        n = self.unpack(layout, _NAMES[code])  # raises when the file ends first
        if longest is not None and n > longest:
            return self.fail(f"{_NAMES[code]} of {n} bytes (at most {longest})")
        try:
            self.take(n, _NAMES[code])
        except PickleError as err:
            return err
        return self.fail(f"{_NAMES[code]} out of bounds")

    def stop(self) -> Any:
        if len(self.stack) != 1 or self.metastack:
            raise self.fail(f"STOP with {len(self.stack)} values and {len(self.metastack)} "
                            "open MARKs on the stack (one value expected)")
        return self.finish(self.stack[0][0])

    def finish(self, value: Any) -> Any:
        """``value`` with Python 2 strings as ``str``, dtypes as ``np.dtype`` and no tokens."""
        kind = type(value)
        if kind in _FINISHED:
            return value
        if kind is _Py2Str:
            return value.decode("latin1")
        if kind is list:  # in place: each list is the reader's own and appears once
            for i, item in enumerate(value):
                if type(item) not in _FINISHED:
                    value[i] = self.finish(item)
            return value
        if kind in (tuple, frozenset):  # these may be shared: each is finished once
            if id(value) not in self.finished:
                self.finished[id(value)] = kind(self.finish(v) for v in value)
            return self.finished[id(value)]
        if kind is dict:
            return {self.finish(k): self.finish(v) for k, v in value.items()}
        if kind is set:
            return {self.finish(v) for v in value}
        if kind is _Dtype and value.dtype is not None:
            return value.dtype
        if kind is _Token:
            raise self.fail(f"a bare reference to {value.qualname}")
        raise self.fail("a numpy array or dtype without its BUILD state")

    # ------------------------------------------------------------------ framing, marks
    def op_PROTO(self) -> None:
        version = self.unpack(_U8, "PROTO")
        if version > 5:
            raise self.fail(f"pickle protocol {version} (this reader knows 0 to 5)")

    def op_FRAME(self) -> None:  # a hint for buffering: checked, then read through
        length, left = self.unpack(_U64, "FRAME"), len(self.data) - self.pos
        if length > left:
            raise self.fail(f"a frame of {length} bytes, but only {left} bytes are left: the "
                            "file is truncated")

    def op_MARK(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark("POP")

    def op_POP_MARK(self) -> None:
        self.pop_mark("POP_MARK")

    # ------------------------------------------------------------------ protocol-0 values
    def op_NONE(self) -> None:
        self.push(None)

    def op_NEWTRUE(self) -> None:
        self.push(True)

    def op_NEWFALSE(self) -> None:
        self.push(False)

    def number(self, line: bytes, parse: Callable[[str], Any], what: str) -> Any:
        try:
            return parse(line.decode("ascii"))
        except ValueError:  # also UnicodeDecodeError; int() refuses over 4300 digits
            raise self.fail(f"{what} that is not a number: {_brief(line)}") from None

    def op_INT(self) -> None:
        line = self.readline("INT")
        if line in (b"00", b"01"):
            self.push(line == b"01")  # protocol 0's booleans
        else:
            self.push(self.number(line, int, "INT"))

    def op_LONG(self) -> None:
        line = self.readline("LONG")
        self.push(self.number(line[:-1] if line.endswith(b"L") else line, int, "LONG"))

    def op_FLOAT(self) -> None:
        self.push(self.number(self.readline("FLOAT"), float, "FLOAT"))

    def op_STRING(self) -> None:
        line = self.readline("STRING")
        if len(line) < 2 or line[:1] not in (b"'", b'"') or line[-1:] != line[:1]:
            raise self.fail("STRING that is not quoted")
        try:
            self.push(_Py2Str(codecs.escape_decode(line[1:-1])[0]))
        except ValueError:
            raise self.fail("STRING with a bad escape") from None

    def op_UNICODE(self) -> None:
        try:
            self.push(self.readline("UNICODE").decode("raw-unicode-escape"))
        except UnicodeDecodeError:
            raise self.fail("UNICODE with a bad escape") from None

    # ------------------------------------------------------------------ containers
    def op_EMPTY_LIST(self) -> None:
        self.push([], 1, OWNED)

    def op_EMPTY_DICT(self) -> None:
        self.push({}, 1, OWNED)

    def op_EMPTY_TUPLE(self) -> None:
        self.push((), 1)

    def op_EMPTY_SET(self) -> None:
        self.push(set(), 1, OWNED)

    def op_LIST(self) -> None:
        items = self.pop_mark("LIST")
        self.push([item[0] for item in items], self.depth_of(items), OWNED)

    def op_TUPLE(self) -> None:
        self.push_tuple(self.pop_mark("TUPLE"))

    def tuple_of(self, n: int) -> None:
        if len(self.stack) < n:
            raise self.fail(f"TUPLE{n} with {len(self.stack)} values on the stack")
        items = self.stack[-n:]
        del self.stack[-n:]
        self.push_tuple(items)

    def op_TUPLE1(self) -> None:
        self.tuple_of(1)

    def op_TUPLE2(self) -> None:
        self.tuple_of(2)

    def op_TUPLE3(self) -> None:
        self.tuple_of(3)

    def op_FROZENSET(self) -> None:
        items = self.pop_mark("FROZENSET")
        self.push(frozenset(self.key(item) for item in items), self.depth_of(items))

    def set_items(self, target: dict, items: list[Item], what: str) -> None:
        if len(items) % 2:
            raise self.fail(f"{what} with an odd number of values")
        for i in range(0, len(items), 2):
            target[self.key(items[i])] = items[i + 1][0]

    def op_DICT(self) -> None:
        items = self.pop_mark("DICT")
        target: dict = {}
        self.set_items(target, items, "DICT")
        self.push(target, self.depth_of(items), OWNED)

    def op_SETITEM(self) -> None:
        value = self.pop("SETITEM")
        items = [self.pop("SETITEM"), value]
        self.set_items(self.grow(items, "SETITEM", dict), items, "SETITEM")

    def op_SETITEMS(self) -> None:
        items = self.pop_mark("SETITEMS")
        self.set_items(self.grow(items, "SETITEMS", dict), items, "SETITEMS")

    def op_APPEND(self) -> None:
        item = self.pop("APPEND")
        self.grow([item], "APPEND", list).append(item[0])

    def op_APPENDS(self) -> None:
        items = self.pop_mark("APPENDS")
        self.grow(items, "APPENDS", list).extend(item[0] for item in items)

    def op_ADDITEMS(self) -> None:
        items = self.pop_mark("ADDITEMS")
        self.grow(items, "ADDITEMS", set).update(self.key(item) for item in items)

    # ------------------------------------------------------------------ memo
    def put(self, index: int) -> None:
        if not self.stack:
            raise self.fail("PUT on an empty stack")
        self.memo[index] = self.stack[-1]

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise self.fail(f"GET of memo entry {index}, which was never stored")
        value, depth, share = self.memo[index]
        if isinstance(value, _Dtype):  # memoised before its BUILD, fetched after it
            share = SHARED if value.dtype is not None else OWNED
        if share == OWNED:
            raise self.fail(f"a {_kind(value)} referenced twice (memo GET): a data file holds "
                            "each container once")
        self.push(value, depth, share)

    def op_PUT(self) -> None:
        self.put(self.number(self.readline("PUT"), int, "PUT"))

    def op_MEMOIZE(self) -> None:
        self.put(len(self.memo))

    def op_GET(self) -> None:
        self.get(self.number(self.readline("GET"), int, "GET"))

    # ------------------------------------------------------------------ globals
    def global_token(self, module: str, name: str) -> _Token:
        kind = self.globals.get((module, name))
        if kind is None:
            raise RefusedGlobal(module, name, self.opcode_at)
        return _Token(kind, python3_name(module, name))

    def names(self, what: str) -> tuple[str, str]:
        """The module and name lines of ``GLOBAL`` and ``INST``."""
        try:
            return (self.readline(what).decode("utf-8"), self.readline(what).decode("utf-8"))
        except UnicodeDecodeError:
            raise self.fail(f"{what} with a name that is not UTF-8") from None

    def op_GLOBAL(self) -> None:
        self.push(self.global_token(*self.names("GLOBAL")), 0, SHARED)

    def op_STACK_GLOBAL(self) -> None:
        name, module = _text(self.pop("STACK_GLOBAL")[0]), _text(self.pop("STACK_GLOBAL")[0])
        if module is None or name is None:
            raise self.fail("STACK_GLOBAL of values that are not names")
        self.push(self.global_token(module, name), 0, SHARED)

    def op_INST(self) -> None:
        raise RefusedGlobal(*self.names("INST"), self.opcode_at)

    def refuse(self, what: str) -> None:
        raise self.fail(f"refused {what}: a data file holds no objects")

    # ------------------------------------------------------------------ REDUCE and BUILD
    def op_REDUCE(self) -> None:
        args, func = self.pop("REDUCE")[0], self.pop("REDUCE")[0]
        if not isinstance(func, _Token) or not isinstance(args, tuple):
            raise self.fail(f"REDUCE of a {_kind(func)}: only the layouts of bytes and "
                            "numpy arrays are read")
        if func.kind == "encode":
            self.push(self.encode(args))
        elif func.kind == "bytes" and args == ():
            self.push(b"")
        elif func.kind == "reconstruct" and self.is_reconstruct(args):
            self.push(_PendingArray(), 0, OWNED)
        elif func.kind == "dtype":
            self.push(self.dtype_call(args), 0, OWNED)
        elif func.kind == "frombuffer" and len(args) == 4:
            buffer, dtype, shape, order = args
            if not isinstance(buffer, (bytes, bytearray)) or _text(order) not in ("C", "F"):
                raise self.fail("_frombuffer without a bytes buffer and order 'C' or 'F'")
            self.push(self.array(shape, dtype, buffer, _text(order) == "F"), 0, OWNED)
        else:
            raise self.fail(f"refused call {func.qualname}{self.described(args)}: only the "
                            "layouts numpy and pickle write for arrays and bytes are read")

    @staticmethod
    def described(args: tuple) -> str:
        """``args`` by type only (their values may be huge)."""
        return _shown("(" + ", ".join(_kind(a) for a in args) + ")")

    def encode(self, args: tuple) -> bytes:
        text = _text(args[0]) if len(args) == 2 else None
        encoding = _text(args[1]) if len(args) == 2 else None
        if text is None or encoding is None or encoding.lower() not in _LATIN1:
            raise self.fail(f"refused _codecs.encode{self.described(args)}: only "
                            "encode(str, 'latin1'), as Python 3 writes bytes")
        try:
            return text.encode("latin1")
        except UnicodeEncodeError:
            raise self.fail("_codecs.encode of text that is not latin-1") from None

    @staticmethod
    def is_reconstruct(args: tuple) -> bool:
        return (len(args) == 3 and isinstance(args[0], _Token) and args[0].kind == "ndarray"
                and _eq(args[1], (0,)) and isinstance(args[2], bytes) and args[2] == b"b")

    def dtype_call(self, args: tuple) -> _Dtype:
        code = _text(args[0]) if len(args) == 3 else None
        if code is None or not _eq(args[1], 0) or not _eq(args[2], 1):
            raise self.fail(f"refused numpy.dtype{self.described(args)}: only "
                            "numpy.dtype(code, False, True)")
        if code not in ARRAY_DTYPES:
            raise self.fail(f"refused numpy dtype {_brief(code)}: only plain numeric "
                            f"dtypes ({', '.join(sorted(ARRAY_DTYPES))})")
        return _Dtype(code)

    def op_BUILD(self) -> None:
        state, target = self.pop("BUILD")[0], self.pop("BUILD")[0]
        if isinstance(target, _Dtype) and target.dtype is None:
            target.dtype = self.dtype_state(target.code, state)
            self.push(target, 0, SHARED)
        elif isinstance(target, _PendingArray):
            if not (isinstance(state, tuple) and len(state) == 5 and _eq(state[0], 1)):
                raise self.fail("an array state that is not (1, shape, dtype, is_fortran, raw)")
            _, shape, dtype, fortran, raw = state
            if not (_eq(fortran, 0) or _eq(fortran, 1)) or not isinstance(raw, (bytes, bytearray)):
                raise self.fail("an array state whose data is not raw bytes (object arrays "
                                "are refused)")
            self.push(self.array(shape, dtype, raw, bool(fortran)), 0, OWNED)
        else:
            raise self.fail(f"refused BUILD on a {_kind(target)}: only numpy arrays and "
                            "dtypes are built")

    def dtype_state(self, code: str, state: Any) -> np.dtype:
        """The dtype for ``code`` and numpy's dtype state ``(3, order, None, None, None, -1,
        -1, 0)`` (or version 4 with ``None`` metadata); nothing else is accepted."""
        plain = (None, None, None, -1, -1, 0)
        if not (isinstance(state, tuple) and len(state) in (8, 9)
                and _eq(state[0], len(state) - 5) and _eq(state[2:8], plain)
                and (len(state) == 8 or state[8] is None)):
            raise self.fail("a numpy dtype state other than a plain number's")
        order = _text(state[1])
        if order not in ("<", ">", "=", "|") or (order == "|" and not code.endswith("1")):
            raise self.fail(f"a numpy dtype with byte order {_brief(state[1])}")
        dtype = np.dtype(code)
        return dtype.newbyteorder(order) if order in ("<", ">") else dtype

    def array(self, shape: Any, dtype: Any, raw: bytes | bytearray, fortran: bool) -> np.ndarray:
        """An array made with ``np.frombuffer`` over ``raw``, whose length must be exactly what
        ``shape`` and ``dtype`` need; its shape (zero sizes counted as one) may need at most
        ``max_array_bytes``."""
        if not isinstance(dtype, _Dtype) or dtype.dtype is None:
            raise self.fail("an array whose dtype is not a built numpy dtype")
        if not (isinstance(shape, tuple) and len(shape) <= MAX_NDIM
                and all(_is_int(n) and n >= 0 for n in shape)):
            raise self.fail(f"an array shape that is not up to {MAX_NDIM} sizes >= 0")
        itemsize, limit = dtype.dtype.itemsize, self.max_array_bytes or 0
        nbytes = math.prod(shape) * itemsize
        shown = _shown(", ".join(_count(n) for n in shape[:4]) + (", ..." if shape[4:] else ""))
        if math.prod(max(n, 1) for n in shape) * itemsize > limit:
            raise self.fail(f"an array of shape ({shown}) {dtype.dtype.name}, more than the "
                            f"{limit} bytes this file may hold")
        if len(raw) != nbytes:
            raise self.fail(f"an array of shape ({shown}) {dtype.dtype.name} needs {nbytes} "
                            f"bytes of data, the file holds {len(raw)}")
        flat = np.frombuffer(raw, dtype=dtype.dtype, count=nbytes // itemsize)
        return flat.reshape(shape, order="F" if fortran else "C")


def read_pickle(file: IO[bytes], max_array_bytes: int | None = None,
                max_depth: int = MAX_DEPTH, max_file_bytes: int | None = None) -> Any:
    """The value of the one pickle from ``file``'s position on, read opcode by opcode.

    ``max_array_bytes``: ``None`` refuses numpy arrays like any other global; otherwise the most
    bytes one array may hold. ``max_file_bytes``: a larger file is refused before it is read.
    Raises :class:`PickleError` (:class:`RefusedGlobal` for a global outside the table) with a
    one-line reason that starts with the byte offset; reading stops at the first ``STOP``, like
    :func:`pickle.load`.
    """
    start = file.tell()
    size = file.seek(0, os.SEEK_END) - start
    if max_file_bytes is not None and size > max_file_bytes:
        raise PickleError(f"the file has {size} bytes, more than the {max_file_bytes} its "
                          "format allows")
    file.seek(start)
    return read_pickle_bytes(file.read(size), max_array_bytes, max_depth)


def read_pickle_bytes(data: bytes, max_array_bytes: int | None = None,
                      max_depth: int = MAX_DEPTH) -> Any:
    """:func:`read_pickle` of the pickle at the start of ``data``."""
    return _Reader(data, max_array_bytes, max_depth).run()
