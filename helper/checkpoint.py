"""Reading and writing checkpoints safely.

* Every load goes through ``torch.load(weights_only=True)``: a file whose pickle would run code
  is refused, never run. The ``argparse.Namespace`` that KDrefine's train-form files carry under
  ``'opt'`` is the one class allow-listed. Before that the file is sniffed, so that a directory,
  an empty file, a text file (a README or an HTML error page renamed ``.pth``, a Git LFS pointer),
  a plain Python pickle or an HDF5 file each get their own one-line message.
* Every save is atomic: written to a temporary file ``.tmp_<random><ext>`` in the same folder,
  flushed to disk, then renamed over the target, so a crash, a failed run or a full disk leaves
  the last good checkpoint intact (:func:`remove_stale_temp_files` deletes what a killed process
  left). Files get the user's umask (``0o666 & ~umask``), like any file a program creates.
* Every checkpoint written by :func:`save_checkpoint` carries a digest of its whole content
  (:func:`compute_digest`: tensors by their stored bytes, every other entry by a type-tagged
  encoding of its value): ``'v2:sha256:<hex>'`` under the key ``'digest'`` of a checkpoint
  dict, or as the attribute ``digest`` of a raw state dict (an ``OrderedDict``, like
  ``_metadata``, so the file still loads with ``model.load_state_dict(torch.load(f))``).
  :func:`load_checkpoint` verifies it when present, and the older tensor-only digests
  (``'sha256:<hex>'``) the way they were computed; files without one (released RepDistiller and
  KDrefine checkpoints, state dicts from elsewhere) load as before.
* Before anything reads a loaded file's tensors, their sizes are checked against the file's
  (:func:`size_limit`): a small file cannot make the loader allocate gigabytes, nor an HDF5
  file read another file (external storage, virtual datasets) or load a filter plugin.
  :func:`check_fields` checks a training checkpoint's epoch, accuracies and RNG states.
* Problems a user can fix (missing, truncated, unsafe or mismatched files) raise
  :class:`~helper.errors.UserError` with one line naming the file and what differs.
"""
from __future__ import annotations

import argparse
import codecs
import errno
import hashlib
import json
import math
import os
import pickle
import random
import re
import reprlib
import struct
import tempfile
import time
from collections import OrderedDict
from typing import IO, Any, Callable, Iterator, Mapping

import numpy as np
import torch

from helper.errors import UserError
from helper.pickle_reader import RefusedGlobal, python3_name, read_pickle

#: Classes besides tensors and containers that may appear in a checkpoint's pickle.
SAFE_GLOBALS = [argparse.Namespace]

#: Where :func:`save_checkpoint` stores the digest in a checkpoint dict (and the attribute name
#: on a raw state dict).
DIGEST_KEY = "digest"
_DIGEST_PREFIX_V1 = "sha256:"
_DIGEST_DOMAIN_V1 = b"kdrefine-checkpoint-digest-v1\0"
_DIGEST_PREFIX_V2 = "v2:sha256:"
_DIGEST_DOMAIN_V2 = b"kdrefine-checkpoint-digest-v2\0"
_DIGEST_FORM = re.compile(r"^(v2:)?sha256:[0-9a-f]{64}$")
_DIGEST_LENGTHS = (len(_DIGEST_PREFIX_V1) + 64, len(_DIGEST_PREFIX_V2) + 64)

#: A loaded file's tensors may declare at most ``SIZE_FACTOR`` times the file's size plus
#: ``SIZE_SLACK`` bytes (:func:`size_limit`).
SIZE_FACTOR = 64
SIZE_SLACK = 1 << 20

_TMP_PREFIX = ".tmp_"
#: Names ``tempfile.mkstemp(prefix=".tmp_", suffix=<ext>)`` gives: 8 random characters, then the
#: target's extension (or ``.tmp``).
_TMP_NAME = re.compile(r"^\.tmp_[a-z0-9_]{8}\.[^./\\]+$")

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: ``torch.save(..., _use_new_zipfile_serialization=False)`` starts with its magic number pickled.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_TORCH_LEGACY_NUMBER = 0x1950A86A20F9469CFC6C
_REWRITE = "re-download it or write it again"


# ----------------------------------------------------------------------------- writing

def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _GuardedFile:
    """A file wrapper that remembers the first ``OSError`` of ``write``/``flush`` (torch.save
    turns it into a ``RuntimeError`` with an unhelpful message)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _write_error(path: str, err: OSError) -> UserError:
    if err.errno == errno.ENOSPC:
        what = "no space left on the device; free some space"
    elif err.errno == getattr(errno, "EDQUOT", -1):
        what = "disk quota exceeded; free some space"
    else:
        reason = err.strerror or str(err) or type(err).__name__
        what = f"{reason}; check the folder and its permissions"
    return UserError(f"cannot write {path}: {what} and run again (any previous {os.path.basename(path)} "
                     f"is unchanged)")


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, flush it to disk, then rename
    it over ``path``; on any failure the temporary file is removed and ``path`` is untouched.

    The file gets mode ``0o666 & ~umask``. An ``OSError`` (full disk, quota, read-only or
    forbidden folder) becomes a one-line :class:`UserError` naming ``path``; other exceptions
    of ``write`` propagate unchanged.
    """
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] or ".tmp"
    tmp_path = None
    guard: _GuardedFile | None = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=suffix, dir=folder)
        with os.fdopen(fd, "wb") as raw:
            os.chmod(tmp_path, 0o666 & ~_umask())
            guard = _GuardedFile(raw)
            write(guard)
            guard.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_path, path)
        tmp_path = None
    except Exception as err:
        os_error = (guard.error if guard is not None else None) or (
            err if isinstance(err, OSError) else None)
        if os_error is not None:
            raise _write_error(path, os_error) from err
        raise
    finally:
        if tmp_path is not None and os.path.lexists(tmp_path):
            try:
                os.remove(tmp_path)
            except OSError:
                pass


def remove_stale_temp_files(folder: str, min_age_s: float = 0.0) -> list[str]:
    """Delete the ``.tmp_<8 chars><ext>`` files that :func:`atomic_write` left in ``folder``
    (a process killed mid-write); return their paths.

    Only regular files directly in ``folder`` whose names have exactly that form are removed,
    and only those last modified at least ``min_age_s`` seconds ago (to spare a write another
    process is doing right now, pass e.g. 600). A missing folder is not an error.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        if not _TMP_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < min_age_s:
                continue
            os.remove(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.path)
    return sorted(removed)


# ----------------------------------------------------------------------------- digest

#: How deep containers may nest in a checkpoint (this project's files nest 5 levels).
MAX_DEPTH = 100


class StructureError(ValueError):
    """A checkpoint that cannot be walked: a container that holds itself, or nesting deeper
    than :data:`MAX_DEPTH`."""


def _children(obj: Any) -> list[tuple[Any, Any]] | None:
    """``(key, value)`` pairs of a container: a mapping's entries then its attributes (torch's
    ``_metadata``, the ``digest``/``arch`` of a raw state dict), a namespace's attributes, a
    sequence's or set's items; None for anything else."""
    if isinstance(obj, Mapping):
        return list(obj.items()) + list(getattr(obj, "__dict__", {}).items())
    if isinstance(obj, argparse.Namespace):
        return list(vars(obj).items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(enumerate(obj))
    return None


def _iter_tensors(obj: Any, prefix: str = "", depth: int = 0, seen: set[int] | None = None,
                  active: set[int] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every distinct tensor of ``obj`` with the path that first reaches it (``model/fc.weight``),
    depth first in order; a container or tensor reached again is not walked again. Raises
    :class:`StructureError` for a cycle or nesting deeper than :data:`MAX_DEPTH`."""
    seen = set() if seen is None else seen
    active = set() if active is None else active
    if id(obj) in active:
        raise StructureError(f"{prefix or 'its top level'} holds itself")
    if id(obj) in seen:
        return
    if isinstance(obj, torch.Tensor):
        seen.add(id(obj))
        yield prefix, obj
        return
    children = _children(obj)
    if children is None:
        return
    if depth >= MAX_DEPTH:
        raise StructureError(f"its containers nest more than {MAX_DEPTH} levels deep")
    seen.add(id(obj))
    active.add(id(obj))
    for key, value in children:
        name = key if isinstance(key, str) else reprlib.repr(key)  # bounded, even for deep keys
        path = f"{prefix}/{name}" if prefix else name
        if isinstance(key, (tuple, frozenset)):  # a key is walked too: it may nest as deep
            yield from _iter_tensors(key, path, depth + 1, seen, active)
        yield from _iter_tensors(value, path, depth + 1, seen, active)
    active.discard(id(obj))


def _tensor_bytes(tensor: torch.Tensor) -> Any:
    cpu = tensor.detach().to("cpu")
    try:
        cpu = cpu.resolve_conj().resolve_neg().contiguous()
        return cpu.reshape(-1).view(torch.uint8).numpy()
    except (RuntimeError, TypeError, ValueError):  # sparse, quantized, ...: layout only
        return repr((cpu.layout, cpu.dtype)).encode()


def _digest_v1(checkpoint: Any) -> str:
    """The first digest (``'sha256:<hex>'``, written until the whole file was covered): every
    tensor's path, dtype, shape and values (of a contiguous copy), skipping the top-level
    ``'digest'`` entry. Kept to verify the files it was written into."""
    h = hashlib.sha256(_DIGEST_DOMAIN_V1)
    top = checkpoint
    if isinstance(checkpoint, Mapping) and DIGEST_KEY in checkpoint:
        top = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
    for name, tensor in _iter_tensors(top):
        h.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode("utf-8", "replace"))
        h.update(_tensor_bytes(tensor))
    return _DIGEST_PREFIX_V1 + h.hexdigest()


def _sized(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<Q", len(data)) + data


def _scalar(obj: Any) -> bytes | None:
    """The encoding of a scalar (None, bool, int, float, complex, torch dtype/device/...), else None."""
    if obj is None or obj is True or obj is False:
        return {None: b"N", True: b"T", False: b"F"}[obj]
    if isinstance(obj, int):
        return _sized(b"i", obj.to_bytes(obj.bit_length() // 8 + 1, "little", signed=True))
    if isinstance(obj, float):
        return b"f" + struct.pack("<d", obj)  # the exact bits, NaN payloads included
    if isinstance(obj, complex):
        return b"c" + struct.pack("<dd", obj.real, obj.imag)
    if isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return _sized(b"o", f"{type(obj).__name__}:{obj}".encode())
    return None


#: The parts a tensor of a sparse layout is stored as (each a strided tensor).
_SPARSE_PARTS = {torch.sparse_coo: ("_indices", "_values"),
                 torch.sparse_csr: ("crow_indices", "col_indices", "values"),
                 torch.sparse_csc: ("ccol_indices", "row_indices", "values"),
                 torch.sparse_bsr: ("crow_indices", "col_indices", "values"),
                 torch.sparse_bsc: ("ccol_indices", "row_indices", "values")}


class _Encoder:
    """The canonical encoding behind the version-2 digest (:func:`compute_digest`).

    A scalar is a type tag and its exact value; any other object (string, bytes, container,
    tensor) is ``'H'`` and the sha256 of its own encoding, computed once per object, so a
    value referenced many times costs one hash (a crafted file cannot make it exponential).
    A container is its kind, class name, and its items in order (a mapping's entries, then its
    attributes sorted by name; a set's items sorted by encoding). A tensor is its class, dtype,
    layout, shape, ``requires_grad``, strides, storage offset, conjugate/negative bits and the
    sha256 of the bytes of its *storage*, hashed once per storage: never an expanded view, so
    the memory used is what the file holds. Meta tensors (no storage) are their metadata.
    """

    def __init__(self) -> None:
        self.memo: dict[int, bytes] = {}
        self.active: set[int] = set()
        self.storages: dict[tuple[str, int, int], bytes] = {}

    def encode(self, obj: Any, depth: int = 0, top: bool = False) -> bytes:
        scalar = _scalar(obj)
        if scalar is not None:
            return scalar
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        if key in self.active:
            raise StructureError("a container holds itself")
        if depth > MAX_DEPTH:
            raise StructureError(f"its containers nest more than {MAX_DEPTH} levels deep")
        self.active.add(key)
        h = hashlib.sha256()
        if isinstance(obj, str):
            h.update(b"s" + obj.encode("utf-8", "surrogatepass"))
        elif isinstance(obj, (bytes, bytearray)):
            h.update(b"b" + bytes(obj))
        elif isinstance(obj, torch.Tensor):
            self._tensor(h, obj)
        elif isinstance(obj, Mapping):
            self._mapping(h, obj, depth, top)
        elif isinstance(obj, argparse.Namespace):
            h.update(b"n" + self._entries(sorted(vars(obj).items()), depth))
        elif isinstance(obj, (list, tuple)):
            h.update(_sized(b"l", type(obj).__name__.encode()) + self._items(obj, depth))
        elif isinstance(obj, (set, frozenset)):
            items = sorted(self.encode(item, depth + 1) for item in obj)
            h.update(_sized(b"S", type(obj).__name__.encode()) + struct.pack("<Q", len(items)) + b"".join(items))
        else:  # never in a file that loads (weights_only refuses other classes)
            h.update(_sized(b"?", f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}".encode()))
        self.active.discard(key)
        self.memo[key] = b"H" + h.digest()
        return self.memo[key]

    def _items(self, items: Any, depth: int) -> bytes:
        parts = [self.encode(item, depth + 1) for item in items]
        return struct.pack("<Q", len(parts)) + b"".join(parts)

    def _entries(self, pairs: list[tuple[Any, Any]], depth: int) -> bytes:
        parts = [self.encode(k, depth + 1) + self.encode(v, depth + 1) for k, v in pairs]
        return struct.pack("<Q", len(parts)) + b"".join(parts)

    def _mapping(self, h: Any, obj: Mapping, depth: int, top: bool) -> None:
        """Entries in order, then attributes by name; at the top level without the digest
        itself (a ``'digest'`` entry that is not a tensor, a ``digest`` attribute)."""
        entries = [(k, v) for k, v in obj.items()
                   if not (top and k == DIGEST_KEY and not isinstance(v, torch.Tensor))]
        attributes = sorted(((k, v) for k, v in getattr(obj, "__dict__", {}).items()
                             if not (top and k == DIGEST_KEY)), key=lambda kv: str(kv[0]))
        h.update(_sized(b"d", type(obj).__name__.encode()) + self._entries(entries, depth)
                 + self._entries(attributes, depth))

    def _tensor(self, h: Any, tensor: torch.Tensor) -> None:
        h.update(_sized(b"X", f"{type(tensor).__name__}|{tensor.dtype}|{tensor.layout}|"
                              f"{tuple(tensor.shape)}|{tensor.requires_grad}".encode()))
        if tensor.device.type == "meta":
            return
        if tensor.layout == torch.strided:
            h.update(_sized(b"v", f"{tensor.stride()}|{tensor.storage_offset()}|"
                                  f"{tensor.is_conj()}|{tensor.is_neg()}".encode()))
            h.update(self._storage(tensor.untyped_storage()))
        for part in _SPARSE_PARTS.get(tensor.layout, ()):
            self._tensor(h, getattr(tensor, part)())

    def _storage(self, storage: torch.UntypedStorage) -> bytes:
        key = (str(storage.device), storage.data_ptr(), storage.nbytes())
        if key not in self.storages:
            cpu = storage if storage.device.type == "cpu" else storage.cpu()
            data = torch.empty(0, dtype=torch.uint8).set_(cpu).numpy() if cpu.nbytes() else b""
            self.storages[key] = hashlib.sha256(data).digest()
        return b"S" + struct.pack("<Q", storage.nbytes()) + self.storages[key]


def compute_digest(checkpoint: Any, version: int = 2) -> str:
    """The digest :func:`save_checkpoint` records: ``'v2:sha256:<hex>'`` over every entry of
    ``checkpoint`` but the digest itself (see :class:`_Encoder`): tensors by their stored bytes
    and metadata, everything else (epoch, accuracies, configuration, RNG states, optimizer
    settings, a raw state dict's ``_metadata`` and attributes) by a type-tagged encoding of its
    exact value. ``version=1``: the older tensor-only ``'sha256:<hex>'`` (:func:`_digest_v1`).

    Raises :class:`StructureError` for a checkpoint that holds itself or nests too deeply.
    """
    if version == 1:
        return _digest_v1(checkpoint)
    h = hashlib.sha256(_DIGEST_DOMAIN_V2)
    h.update(_Encoder().encode(checkpoint, top=True))
    return _DIGEST_PREFIX_V2 + h.hexdigest()


def _is_raw_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def with_digest(state: Mapping[str, Any], attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`save_checkpoint` writes for ``state``: a raw state dict (all values tensors)
    becomes an ``OrderedDict`` keeping its attributes (``_metadata``), plus ``attributes``
    (``convert.py``'s ``arch`` and ``blocktype``), with attribute ``digest``; any other dict
    gets a ``'digest'`` entry (a stale one is replaced). The digest covers the attributes too."""
    if _is_raw_state_dict(state):
        payload: dict[str, Any] = OrderedDict(state)
        payload.__dict__.update({k: v for k, v in getattr(state, "__dict__", {}).items()
                                 if k != DIGEST_KEY})
        payload.__dict__.update(attributes or {})
        payload.digest = compute_digest(payload)  # type: ignore[attr-defined]
        return payload
    if attributes:
        raise ValueError("attributes are only set on a raw state dict")
    payload = {k: v for k, v in state.items() if k != DIGEST_KEY}
    payload[DIGEST_KEY] = compute_digest(payload)
    return payload


def _digest_value(checkpoint: Any) -> Any:
    """What a loaded checkpoint holds where the digest goes (entry or attribute), else None."""
    if not isinstance(checkpoint, Mapping):
        return None
    value = None if _is_raw_state_dict(checkpoint) else checkpoint.get(DIGEST_KEY)
    return getattr(checkpoint, "__dict__", {}).get(DIGEST_KEY) if value is None else value


def recorded_digest(checkpoint: Any) -> str | None:
    """The digest a loaded checkpoint carries (``'digest'`` entry or attribute; version 2
    ``'v2:sha256:<hex>'`` or version 1 ``'sha256:<hex>'``), else None."""
    value = _digest_value(checkpoint)
    return value if isinstance(value, str) and _DIGEST_FORM.match(value) else None


def _damaged_digest(checkpoint: Any) -> str | None:
    """Why a checkpoint without a well-formed digest looks like one whose digest was damaged:
    a ``digest`` string of a digest's length or prefix that is not well formed, or a
    well-formed digest under another top-level name (a flipped bit in the key). None when it
    looks like a file written without one."""
    value = _digest_value(checkpoint)
    if isinstance(value, str):
        if len(value) in _DIGEST_LENGTHS or value.startswith(("sha256", "v2:")):
            return f"its digest {_show_key(value)!r} is not well formed"
        return None
    if value is not None or not isinstance(checkpoint, Mapping):
        return None
    places = [*(() if _is_raw_state_dict(checkpoint) else checkpoint.items()),
              *getattr(checkpoint, "__dict__", {}).items()]
    for key, other in places:
        if isinstance(other, str) and _DIGEST_FORM.match(other):
            return f"a digest is stored under {_show_key(str(key))!r} instead of {DIGEST_KEY!r}"
    return None


def verify_digest(checkpoint: Any, path: str) -> None:
    """Raise a :class:`UserError` if ``checkpoint`` carries a digest its content does not
    match (a version-1 digest: its tensors), or one that was damaged (:func:`_damaged_digest`)."""
    expected = recorded_digest(checkpoint)
    problem = _damaged_digest(checkpoint) if expected is None else None
    if expected is not None:
        version = 2 if expected.startswith(_DIGEST_PREFIX_V2) else 1
        try:
            actual = compute_digest(checkpoint, version)
        except StructureError as err:
            raise UserError(f"{path} is not a usable checkpoint: {err}; {_REWRITE}") from None
        if actual != expected:
            what = "content differs" if version == 2 else "tensors differ"
            problem = f"its {what} from the sha256 recorded when it was written"
    if problem:
        raise UserError(f"{path}: digest mismatch: the file is corrupted ({problem}; {_REWRITE})")


def save_checkpoint(state: Mapping[str, Any], path: str) -> None:
    """Write ``state`` with its digest (:func:`with_digest`) to ``path`` atomically (temporary
    file in the same folder, then rename)."""
    payload = with_digest(state)
    atomic_write(path, lambda f: torch.save(payload, f))


def write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically, like :func:`save_checkpoint`."""
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=2).encode()))


# ----------------------------------------------------------------------------- reading

def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else ""
    line = line.split(" This is an internal", 1)[0]
    if len(line) > 160:
        line = line[:157] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _torch_reason(message: str) -> str:
    """The informative line of a ``torch.load`` error (not its boilerplate)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation",
              "WeightsUnpickler error:")
    useful = [line for line in lines if not line.startswith(boiler)]
    line = (useful or lines or ["unknown error"])[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _unsafe_global_name(message: str) -> str | None:
    """The global a ``weights_only`` load refused, from torch's message (None if it names none)."""
    match = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", message)
    if match:
        module, _, name = match.group(1).rstrip(".").rpartition(".")
        return python3_name(module, name)
    for line in message.splitlines():
        if "Unsupported global" in line:
            return line.strip().split("Unsupported global:")[-1].strip().rstrip(".") or None
    return None


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\n\r\f\v" for ch in text)


def _snippet(head: bytes) -> str:
    text = head.decode("utf-8", "replace").strip().splitlines()
    line = text[0] if text else ""
    return repr(line if len(line) <= 40 else line[:37] + "...")


def _sniff(path: str) -> tuple[str, bytes]:
    """(kind, first bytes): kind is zip, torch-legacy, hdf5, pickle, lfs, text, empty or other."""
    with open(path, "rb") as f:
        head = f.read(512)
        if not head:
            return "empty", head
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
    if head.startswith(_ZIP_MAGIC):
        return "zip", head
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch-legacy", head
    if head.startswith(_HDF5_MAGIC):
        return "hdf5", head
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return "lfs", head
    if head[:1] == b"\x80" or (last == b"." and head[:1] in (b"]", b"}", b"(", b"c") and
                               not _is_text(head)):
        return "pickle", head
    if _is_text(head):
        return "text", head
    return "other", head


def _plain_pickle_error(path: str) -> UserError:
    """What a plain (non-torch) pickle holds, read by its opcodes without resolving any global."""
    try:
        with open(path, "rb") as f:
            obj = read_pickle(f)
    except RefusedGlobal as err:
        return UserError(f"refused to load {path}: it is a plain Python pickle, not a PyTorch "
                         f"checkpoint, and it references {err.qualname}, which could run code")
    except Exception as err:
        return UserError(f"{path} is not a PyTorch checkpoint: it is a damaged plain Python "
                         f"pickle ({_first_line(err)}); {_REWRITE}")
    if type(obj) is int and obj == _TORCH_LEGACY_NUMBER:
        return UserError(f"{path} is an old-format PyTorch file (pickle protocol above 2) that "
                         f"safe loading cannot read; load it once with a trusted torch.load and "
                         f"save it again with torch.save")
    return UserError(f"{path} is not a PyTorch checkpoint: it is a plain Python pickle of a "
                     f"{type(obj).__name__} (torch.save writes a zip archive); save the weights "
                     f"with torch.save(model.state_dict(), path)")


def _unknown_format(path: str, head: bytes) -> UserError:
    return UserError(f"{path} is not a PyTorch checkpoint (unknown format: it starts with bytes "
                     f"{head[:8].hex(' ')}); pass the .pth file torch.save wrote")


def _torch_load(path: str, kind: str, head: bytes, map_location) -> Any:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        name = _unsafe_global_name(message)
        if name is None and kind == "other":
            raise _unknown_format(path, head) from None
        if name is not None:
            raise UserError(
                f"refused to load {path}: its pickle would run code or build objects that are not "
                f"weights ({name}); only tensors and plain containers are accepted") from None
        raise UserError(f"{path} is not a readable checkpoint (corrupt or truncated: "
                        f"{_torch_reason(message)}); {_REWRITE}") from None
    except Exception as err:  # RuntimeError, OSError, EOFError, MemoryError, ...: a bad file
        if kind == "other":
            raise _unknown_format(path, head) from None
        if kind == "zip" and "data.pkl" in str(err):
            raise UserError(f"{path} is a zip archive but not a PyTorch checkpoint (it has no "
                            f"data.pkl); pass the .pth file torch.save wrote") from None
        raise UserError(f"{path} is not a readable checkpoint (corrupt or truncated: "
                        f"{_first_line(err)}); {_REWRITE}") from None


def size_limit(file_size: int) -> int:
    """The most bytes of tensor data a file of ``file_size`` bytes may declare:
    :data:`SIZE_FACTOR` times its size plus :data:`SIZE_SLACK`. A ``.pth`` file stores its
    tensors uncompressed (its views add up to about its size), and weights compress little in
    HDF5; what declares more is damaged or crafted to make a small file allocate gigabytes."""
    return SIZE_FACTOR * file_size + SIZE_SLACK


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _check_tensors(checkpoint: Any, path: str, file_size: int) -> None:
    """Before anything reads a loaded checkpoint's tensors: one line for a structure that
    cannot be walked (:class:`StructureError`), a meta-device tensor (no values), or views
    that add up to more than :func:`size_limit` allows (a 4-byte storage expanded to 2^29
    floats); nothing is copied or expanded here. (A view reaching past its storage never gets
    here: ``torch.load`` refuses it.)"""
    total, limit = 0, size_limit(file_size)
    try:
        for name, tensor in _iter_tensors(checkpoint):
            shown = _show_key(name)
            if tensor.device.type == "meta":
                raise UserError(f"{path}: tensor {shown} is a meta-device tensor (a shape without "
                                f"values: the model was never materialized); save the real weights")
            shape = tuple(tensor.shape)
            if tensor.layout == torch.strided:
                total += math.prod(shape) * tensor.element_size()
            if total > limit:
                raise UserError(f"{path}: tensor {shown} of shape {shape} takes the file's tensors "
                                f"to {_megabytes(total)}, more than a {file_size}-byte file can hold "
                                f"(at most {SIZE_FACTOR} times its size + {_megabytes(SIZE_SLACK)}); "
                                f"the file is damaged or crafted - {_REWRITE}")
    except StructureError as err:
        raise UserError(f"{path} is not a usable checkpoint: {err}; {_REWRITE}") from None


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth``/``.pt`` file with ``weights_only=True`` or an ``.hdf5`` weight file.

    Returns a dict (a checkpoint dict or a state dict); its tensors are checked against the
    file's size (:func:`_check_tensors`, :func:`_load_hdf5`) and its digest, when it has one, is
    verified. Raises :class:`UserError` for a missing, empty, truncated, corrupted or unsafe
    file, a file of another kind (directory, text, plain pickle) and one that holds something
    other than a dict.
    """
    if not path:
        raise UserError("no checkpoint file given")
    if os.path.isdir(path):
        raise UserError(f"checkpoint path {path} is a directory, not a file; pass the .pth file "
                        f"inside it")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    try:
        kind, head = _sniff(path)
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path} ({_first_line(err)})") from None
    if kind == "empty":
        raise UserError(f"checkpoint {path} is empty (0 bytes); {_REWRITE}")
    if path.endswith((".hdf5", ".h5")) or kind == "hdf5":
        return _load_hdf5(path)
    if kind == "lfs":
        raise UserError(f"{path} is a Git LFS pointer, not the checkpoint itself; fetch it with "
                        f"'git lfs pull' or download the file")
    if kind == "text":
        raise UserError(f"{path} is a text file (it starts with {_snippet(head)}), not a PyTorch "
                        f"checkpoint; pass the .pth file torch.save wrote")
    if kind == "pickle":
        raise _plain_pickle_error(path)
    checkpoint = _torch_load(path, kind, head, map_location)
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or a "
                        f"checkpoint dict (with a 'model' or 'state_dict' entry); pass a file "
                        f"written by torch.save(model.state_dict(), path) or by this project")
    if not checkpoint:
        raise UserError(f"{path} holds an empty dict, no weights; {_REWRITE}")
    _check_tensors(checkpoint, path, os.path.getsize(path))
    verify_digest(checkpoint, path)
    return checkpoint


def _show_key(name: str) -> str:
    shown = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= 80 else shown[:77] + "..."


#: HDF5 filters a weight file may use, all built into HDF5 or h5py (any other id makes HDF5
#: look for a plugin library to load).
_HDF5_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
                 6: "scaleoffset", 32000: "lzf"}
#: The filters that do not compress (with only these, every byte of a dataset is stored).
_HDF5_PLAIN_FILTERS = {2, 3}


def _hdf5_nbytes(path: str, name: str, dataset) -> int:
    """The bytes ``dataset`` declares, once nothing about it stops it from being read safely:
    one line for external storage (it would read another file), a virtual dataset (it maps
    other files), a non-numeric dtype, no dataspace, a filter that is not built in (it would
    load a plugin) and, without a compressing filter, less storage allocated than the data
    needs (chunks never written: HDF5 would make them up from the fill value)."""
    import h5py  # optional (only .h5 files need it)

    key = _show_key(name)
    plist = dataset.id.get_create_plist()
    if plist.get_external_count():
        raise UserError(f"{path}: dataset {key} keeps its data in another file (HDF5 external "
                        f"storage); refused: a weight file holds its own data")
    if dataset.is_virtual:
        raise UserError(f"{path}: dataset {key} is a virtual dataset (it maps other files); "
                        f"refused: a weight file holds its own data")
    dtype = dataset.dtype
    if dtype.fields is not None:
        raise UserError(f"{path}: dataset {key} has a compound dtype ({len(dtype.fields)} fields), "
                        f"not numbers; a weight file holds one numeric array per tensor")
    if h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU":
        raise UserError(f"{path}: dataset {key} holds strings, not numbers; a weight file holds "
                        f"one numeric array per tensor")
    if dtype.kind not in "biufc":
        raise UserError(f"{path}: dataset {key} holds {dtype} values, not numbers; a weight file "
                        f"holds one numeric array per tensor")
    if dataset.shape is None:
        raise UserError(f"{path}: dataset {key} has no dataspace (an empty HDF5 dataset), not an "
                        f"array; a weight file holds one numeric array per tensor")
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [f for f in filters if f not in _HDF5_FILTERS]
    if unknown:
        raise UserError(f"{path}: dataset {key} uses HDF5 filter {unknown[0]}, which is not built "
                        f"in (HDF5 would load a plugin for it); refused")
    nbytes = math.prod(dataset.shape) * dtype.itemsize
    stored = dataset.id.get_storage_size()
    if set(filters) <= _HDF5_PLAIN_FILTERS and stored < nbytes:
        raise UserError(f"{path}: dataset {key} declares {nbytes} bytes but only {stored} are "
                        f"stored (never written); the file is damaged or crafted - {_REWRITE}")
    return nbytes


def _hdf5_array(path: str, name: str, dataset) -> Any:
    """One HDF5 dataset (checked by :func:`_hdf5_nbytes`) as a native-endian numpy array."""
    try:
        array = np.asarray(dataset[()])
    except Exception as err:
        raise UserError(f"{path}: cannot read dataset {_show_key(name)} ({_first_line(err)}); the "
                        f"file is truncated or corrupted - {_REWRITE}") from None
    if array.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
        array = array.astype(array.dtype.newbyteorder("="))  # big-endian values, native layout
    return np.ascontiguousarray(array) if array.ndim else array


def _load_hdf5(path: str) -> "OrderedDict[str, torch.Tensor]":
    """The datasets of an HDF5 weight file as tensors (``fc/weight`` -> ``fc.weight``).

    Before any data is read every dataset is checked (:func:`_hdf5_nbytes`) and their
    declared sizes together must stay within :func:`size_limit` of the file's size, so a
    small file cannot make this read another file, load a plugin or allocate gigabytes.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as err:
        raise UserError(f"{path} is not a readable HDF5 weight file ({_first_line(err)})") from None
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    with f:
        datasets: list[tuple[str, Any]] = []
        try:
            f.visititems(lambda name, obj: datasets.append((name, obj))
                         if isinstance(obj, h5py.Dataset) else None)
            sizes = [_hdf5_nbytes(path, name, dataset) for name, dataset in datasets]
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"{path} is not a readable HDF5 weight file (corrupted: "
                            f"{_first_line(err)}); {_REWRITE}") from None
        file_size = os.path.getsize(path)
        if sum(sizes) > size_limit(file_size):
            raise UserError(f"{path}: its datasets declare {_megabytes(sum(sizes))}, more than a "
                            f"{file_size}-byte file can hold (at most {SIZE_FACTOR} times its size "
                            f"+ {_megabytes(SIZE_SLACK)}); the file is damaged or crafted - {_REWRITE}")
        for name, dataset in datasets:
            array = _hdf5_array(path, name, dataset)
            try:
                tensor = torch.from_numpy(array).clone()
            except (TypeError, RuntimeError) as err:
                raise UserError(f"{path}: dataset {_show_key(name)} has dtype {array.dtype}, which "
                                f"PyTorch cannot hold ({_first_line(err)})") from None
            state[name.replace("/", ".")] = tensor
    return state


def recorded_architecture(checkpoint: Any) -> str | None:
    """The architecture a checkpoint says its weights are for: its ``'arch'`` entry (this
    project), ``config['model_s']``/``config['model']``, or KDrefine's ``opt.model_s``/``opt.model``."""
    if not isinstance(checkpoint, Mapping):
        return None
    arch = checkpoint.get("arch")
    if isinstance(arch, str) and arch:
        return arch
    config = checkpoint.get("config")
    if isinstance(config, Mapping):
        for key in ("model_s", "model", "arch"):
            if isinstance(config.get(key), str) and config[key]:
                return config[key]
    opt = checkpoint.get("opt")
    if isinstance(opt, argparse.Namespace):
        for key in ("model_s", "model", "arch"):
            value = vars(opt).get(key)
            if isinstance(value, str) and value:
                return value
    return None


#: Attributes that ``convert.py`` sets on the deploy state dict it writes (an ``OrderedDict``,
#: like ``digest`` and torch's ``_metadata``, so ``model.load_state_dict(torch.load(f))`` still
#: works): the architecture and the training-time block type the weights were converted from.
RECORD_ATTRIBUTES = ("arch", "blocktype")
_RECORD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


def recorded_model(checkpoint: Any) -> tuple[str | None, str | None]:
    """``(architecture, block type)`` a checkpoint records, each None where it records none.

    The architecture is :func:`recorded_architecture`'s, or the attribute ``arch`` of a raw
    state dict (``convert.py``'s deploy files); the block type is the ``'blocktype'`` entry
    (``train_student.py``), ``config['blocktype']``, KDrefine's ``opt.blocktype``, or the
    attribute ``blocktype`` of a raw state dict. Values that are not plain names (a crafted or
    damaged file) count as no record.
    """
    if not isinstance(checkpoint, Mapping):
        return None, None
    if _is_raw_state_dict(checkpoint):
        attributes = getattr(checkpoint, "__dict__", {})
        arch, blocktype = (attributes.get(name) for name in RECORD_ATTRIBUTES)
    else:
        arch = recorded_architecture(checkpoint)
        blocktype = checkpoint.get("blocktype")
        config, opt = checkpoint.get("config"), checkpoint.get("opt")
        if blocktype is None and isinstance(config, Mapping):
            blocktype = config.get("blocktype")
        if blocktype is None and isinstance(opt, argparse.Namespace):
            blocktype = vars(opt).get("blocktype")

    def name(value: Any) -> str | None:
        return value if isinstance(value, str) and _RECORD_NAME.match(value) else None

    return name(arch), name(blocktype)


def extract_state_dict(checkpoint: Any, path: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """The model weights of a checkpoint: its ``'model'`` or ``'state_dict'`` entry, or the raw
    state dict itself; a ``'module.'`` prefix (DataParallel/DDP) is stripped.

    The architecture the checkpoint records (:func:`recorded_architecture`), if any, rides along
    as the attribute ``recorded_arch`` of the returned dict, for :func:`load_weights`' message.
    """
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or a "
                        f"checkpoint dict (with a 'model' or 'state_dict' entry)")
    source = checkpoint
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            source = checkpoint[key]
            break
    tensors = {k: v for k, v in source.items() if isinstance(v, torch.Tensor)}
    if not source or len(tensors) != len(source):
        others = sorted({type(v).__name__ for v in source.values()
                         if not isinstance(v, torch.Tensor)})
        found = f" (it holds {', '.join(others)} values)" if tensors and others else ""
        raise UserError(f"{path} holds no model weights{found} (expected a state dict, or a dict "
                        f"with a 'model' or 'state_dict' entry)")
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in source.items():
        key = str(key)
        state[key[len("module."):] if key.startswith("module.") else key] = value
    arch = recorded_architecture(checkpoint)
    if arch is not None:
        state.recorded_arch = arch  # type: ignore[attr-defined]
    return state


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def describe_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """One line saying how ``state`` differs from ``model``'s state dict, or None if it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_preview(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches (file vs model): {_preview(shapes)}")
    return "; ".join(parts) or None


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str,
                 arch: str, hint: str = "") -> torch.nn.Module:
    """Load ``state`` into ``model`` strictly, or raise one line naming the file, the counts of
    tensors on both sides, the architecture the file records (when it records another one, see
    :func:`extract_state_dict`) and the difference."""
    problem = describe_mismatch(model, state)
    if problem:
        n_model = len(model.state_dict())
        recorded = getattr(state, "recorded_arch", None)
        base = arch.split(" ", 1)[0]
        seems = (f"; the file says it is for {recorded}" if isinstance(recorded, str) and
                 recorded != base else "")
        raise UserError(f"{path} does not match architecture {arch} ({len(state)} tensors in the "
                        f"file, {n_model} in {base}{seems}): {problem}{hint}")
    model.load_state_dict(state, strict=True)
    return model


def num_classes_from_state_dict(state: Mapping[str, torch.Tensor], path: str = "checkpoint") -> int:
    """The number of classes: rows of the classifier, the last 2-D weight of the state dict.
    A classifier without weights (a zero dimension) is refused: its row count, unbounded by
    the file's size, would size the model built for it."""
    matrices = [(k, v) for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not matrices:
        raise UserError(f"{path}: cannot find a classifier (no 2-D weight) to read the class count from")
    key, weight = matrices[-1]
    if 0 in weight.shape:
        raise UserError(f"{path}: its classifier {_show_key(str(key))} has shape {tuple(weight.shape)}, "
                        f"no weights; {_REWRITE}")
    return int(weight.shape[0])


# ----------------------------------------------------------------------------- training fields

#: The largest ``epoch`` a checkpoint may record.
MAX_EPOCH = 1_000_000
#: The fields of a training checkpoint that hold accuracies (percent).
ACCURACY_FIELDS = ("accuracy", "best_acc")
_FIELD_HINT = ("the file is damaged or not a <name>_last.pth of this project; resume from the "
               "run's own <name>_last.pth or start the run again without --resume")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"the {type(value).__name__} {reprlib.repr(value)}"


def check_fields(checkpoint: Mapping[str, Any], path: str) -> None:
    """One line (a :class:`UserError`) for the first training field of ``checkpoint`` (loaded
    from ``path``) that is not what this project writes: ``epoch`` a whole number in
    0..:data:`MAX_EPOCH` (not a bool), ``accuracy``/``best_acc`` finite numbers in [0, 100],
    ``rng_state`` generator states that restore (checked on scratch generators, see
    :func:`rng_state`). Fields the checkpoint lacks are not checked."""
    if "epoch" in checkpoint:
        epoch = checkpoint["epoch"]
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            raise UserError(f"{path}: its 'epoch' is {_describe(epoch)}, not a whole number in "
                            f"0..{MAX_EPOCH}; {_FIELD_HINT}")
    for key in ACCURACY_FIELDS:
        value = checkpoint.get(key, 0.0)
        if type(value) not in (int, float) or not (math.isfinite(value) and 0 <= value <= 100):
            raise UserError(f"{path}: its {key!r} is {_describe(value)}, not an accuracy in "
                            f"[0, 100] percent; {_FIELD_HINT}")
    if "rng_state" in checkpoint:
        _check_rng_state(checkpoint["rng_state"], path)


class _BadState(ValueError):
    """A generator state that is not of the form :func:`rng_state` records."""


def _tensor_of(value: Any, what: str, dtype: torch.dtype, numel: int | None = None) -> torch.Tensor:
    """``value`` if it is a 1-D CPU ``dtype`` tensor (of ``numel`` elements, or at most 2^16)."""
    ok = (isinstance(value, torch.Tensor) and value.dtype == dtype and value.dim() == 1
          and value.device.type == "cpu" and value.layout == torch.strided
          and (value.numel() == numel if numel is not None else value.numel() <= 1 << 16))
    if not ok:
        size = f"{numel} " if numel is not None else ""
        raise _BadState(f"{what} is {_describe(value)}, not a 1-D tensor of {size}{dtype} values")
    return value.detach()


def _entry(state: Any, key: str, what: str) -> Any:
    if not isinstance(state, Mapping):
        raise _BadState(f"{what} is {_describe(state)}, not a dict")
    if key not in state:
        raise _BadState(f"{what} lacks {key!r}")
    return state[key]


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _BadState(f"{what} is {_describe(value)}, not a whole number in {low}..{high}")
    return value


def _numpy_state(state: Any) -> tuple:
    """The ``np.random.set_state`` tuple of :func:`rng_state`'s ``'numpy'`` entry."""
    keys = _tensor_of(_entry(state, "keys", "numpy"), "numpy keys", torch.int64, 624)
    if keys.numel() and (int(keys.min()) < 0 or int(keys.max()) >= 2**32):
        raise _BadState("numpy keys are outside 0..2^32-1")
    cached = _entry(state, "cached_gaussian", "numpy")
    if type(cached) is not float:
        raise _BadState(f"numpy cached_gaussian is {_describe(cached)}, not a float")
    return ("MT19937", keys.numpy().astype("uint32"), _integer(_entry(state, "pos", "numpy"), "numpy pos", 0, 624),
            _integer(_entry(state, "has_gauss", "numpy"), "numpy has_gauss", 0, 1), cached)


def _python_state(state: Any) -> tuple:
    """The ``random.setstate`` tuple of :func:`rng_state`'s ``'python'`` entry."""
    internal = _tensor_of(_entry(state, "internal", "python"), "python internal", torch.int64, 625)
    gauss = _entry(state, "gauss", "python")
    if gauss is not None and type(gauss) is not float:
        raise _BadState(f"python gauss is {_describe(gauss)}, not a float or None")
    return (_integer(_entry(state, "version", "python"), "python version", 0, 1 << 16),
            tuple(int(v) for v in internal.tolist()), gauss)


def _cuda_states(states: Any) -> list[torch.Tensor]:
    if not isinstance(states, (list, tuple)) or len(states) > 1024:
        raise _BadState(f"cuda is {_describe(states)}, not a list of device states")
    return [_tensor_of(s, "a cuda state", torch.uint8) for s in states]


def _check_rng_state(state: Any, path: str) -> None:
    """One line unless ``state`` restores: each part is converted as :func:`set_rng_state`
    does and set on a scratch generator (the global ones are untouched)."""
    try:
        torch.Generator().set_state(_tensor_of(_entry(state, "torch", "rng_state"), "torch", torch.uint8))
        np.random.RandomState().set_state(_numpy_state(_entry(state, "numpy", "rng_state")))
        random.Random().setstate(_python_state(_entry(state, "python", "rng_state")))
        _cuda_states(state.get("cuda", []))
    except _BadState as err:
        raise UserError(f"{path}: its 'rng_state' is malformed ({err}); {_FIELD_HINT}") from None
    except (RuntimeError, ValueError, TypeError, OverflowError) as err:
        raise UserError(f"{path}: its 'rng_state' does not restore ({_first_line(err)}); "
                        f"{_FIELD_HINT}") from None


def rng_state() -> dict[str, Any]:
    """The random-number-generator states that make a resumed run continue exactly."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_rng_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded (:func:`check_fields` tells a malformed one)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        # as many devices as both machines have (a resumed run may see another GPU count)
        for index, cuda_state in enumerate(_cuda_states(state["cuda"])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _python_rng_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}
