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
* Every checkpoint written by :func:`save_checkpoint` carries a digest of its tensors
  (:func:`compute_digest`): ``'sha256:<hex>'`` under the key ``'digest'`` of a checkpoint dict,
  or as the attribute ``digest`` of a raw state dict (an ``OrderedDict``, like ``_metadata``,
  so the file still loads with ``model.load_state_dict(torch.load(f))``).
  :func:`load_checkpoint` verifies it when present; files without one (released RepDistiller and
  KDrefine checkpoints, state dicts from elsewhere) load as before.
* Problems a user can fix (missing, truncated, unsafe or mismatched files) raise
  :class:`~helper.errors.UserError` with one line naming the file and what differs.
"""
from __future__ import annotations

import argparse
import codecs
import errno
import hashlib
import json
import os
import pickle
import random
import re
import tempfile
import time
from collections import OrderedDict
from typing import IO, Any, Callable, Iterator, Mapping

import numpy as np
import torch

from helper.errors import UserError
from helper.safe_pickle import RefusedGlobal, python3_name, restricted_load

#: Classes besides tensors and containers that may appear in a checkpoint's pickle.
SAFE_GLOBALS = [argparse.Namespace]

#: Where :func:`save_checkpoint` stores the digest in a checkpoint dict (and the attribute name
#: on a raw state dict).
DIGEST_KEY = "digest"
_DIGEST_PREFIX = "sha256:"
_DIGEST_DOMAIN = b"kdrefine-checkpoint-digest-v1\0"

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

def _iter_tensors(obj: Any, prefix: str, stack: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
        return
    if isinstance(obj, (Mapping, list, tuple, argparse.Namespace)):
        if id(obj) in stack:  # a cycle (only a crafted file has one)
            return
        stack.add(id(obj))
        if isinstance(obj, argparse.Namespace):
            items = vars(obj).items()
        elif isinstance(obj, Mapping):
            items = obj.items()
        else:
            items = enumerate(obj)
        for key, value in items:
            name = key if isinstance(key, str) else repr(key)
            yield from _iter_tensors(value, f"{prefix}/{name}" if prefix else name, stack)
        stack.discard(id(obj))


def _tensor_bytes(tensor: torch.Tensor) -> Any:
    cpu = tensor.detach().to("cpu")
    try:
        cpu = cpu.resolve_conj().resolve_neg().contiguous()
        return cpu.reshape(-1).view(torch.uint8).numpy()
    except (RuntimeError, TypeError, ValueError):  # sparse, quantized, ...: layout only
        return repr((cpu.layout, cpu.dtype)).encode()


def compute_digest(checkpoint: Any) -> str:
    """``'sha256:<hex>'`` of every tensor in ``checkpoint``, in order.

    Walks dicts (insertion order), lists, tuples and ``argparse.Namespace`` depth first, skipping
    the top-level ``'digest'`` entry; for each tensor it hashes its path (``model/fc.weight``),
    dtype, shape and raw bytes (of a contiguous CPU copy). Non-tensor entries (epoch, accuracy,
    config) are not covered: they may be edited without invalidating the digest.
    """
    h = hashlib.sha256(_DIGEST_DOMAIN)
    top = checkpoint
    if isinstance(checkpoint, Mapping) and DIGEST_KEY in checkpoint:
        top = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
    for name, tensor in _iter_tensors(top, "", set()):
        h.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode("utf-8", "replace"))
        h.update(_tensor_bytes(tensor))
    return _DIGEST_PREFIX + h.hexdigest()


def _is_raw_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def with_digest(state: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`save_checkpoint` writes for ``state``: a raw state dict (all values tensors)
    becomes an ``OrderedDict`` (keeping ``_metadata``) with attribute ``digest``; any other
    dict gets a ``'digest'`` entry (a stale one is replaced)."""
    if _is_raw_state_dict(state):
        payload: dict[str, Any] = OrderedDict(state)
        metadata = getattr(state, "_metadata", None)
        if metadata is not None:
            payload._metadata = metadata  # type: ignore[attr-defined]
        payload.digest = compute_digest(payload)  # type: ignore[attr-defined]
        return payload
    payload = {k: v for k, v in state.items() if k != DIGEST_KEY}
    payload[DIGEST_KEY] = compute_digest(payload)
    return payload


def recorded_digest(checkpoint: Any) -> str | None:
    """The digest a loaded checkpoint carries (``'digest'`` entry or attribute), else None."""
    value = None
    if isinstance(checkpoint, Mapping):
        value = checkpoint.get(DIGEST_KEY) if not _is_raw_state_dict(checkpoint) else None
        if value is None:
            value = getattr(checkpoint, "__dict__", {}).get(DIGEST_KEY)
    if isinstance(value, str) and value.startswith(_DIGEST_PREFIX):
        return value
    return None


def verify_digest(checkpoint: Any, path: str) -> None:
    """Raise a :class:`UserError` if ``checkpoint`` carries a digest its tensors do not match."""
    expected = recorded_digest(checkpoint)
    if expected is not None and compute_digest(checkpoint) != expected:
        raise UserError(f"{path}: digest mismatch: the file is corrupted (its tensors differ from "
                        f"the sha256 recorded when it was written; {_REWRITE})")


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
    """What a plain (non-torch) pickle holds, read without resolving any global."""
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f, {}, encoding="latin1")
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


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth``/``.pt`` file with ``weights_only=True`` or an ``.hdf5`` weight file.

    Returns a dict (a checkpoint dict or a state dict); its digest, when it has one, is
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
    verify_digest(checkpoint, path)
    return checkpoint


def _show_key(name: str) -> str:
    shown = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _hdf5_array(path: str, name: str, dataset) -> Any:
    """One HDF5 dataset as a native-endian numeric numpy array, or a :class:`UserError`."""
    import h5py  # optional (only .h5 files need it)

    dtype = dataset.dtype
    key = _show_key(name)
    if dtype.fields is not None:
        raise UserError(f"{path}: dataset {key} has a compound dtype ({len(dtype.fields)} fields), "
                        f"not numbers; a weight file holds one numeric array per tensor")
    if h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU":
        raise UserError(f"{path}: dataset {key} holds strings, not numbers; a weight file holds "
                        f"one numeric array per tensor")
    if dtype.kind not in "biufc":
        raise UserError(f"{path}: dataset {key} holds {dtype} values, not numbers; a weight file "
                        f"holds one numeric array per tensor")
    try:
        array = np.asarray(dataset[()])
    except Exception as err:
        raise UserError(f"{path}: cannot read dataset {key} ({_first_line(err)}); the file is "
                        f"truncated or corrupted - {_REWRITE}") from None
    if array.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
        array = array.astype(array.dtype.newbyteorder("="))  # big-endian values, native layout
    return np.ascontiguousarray(array) if array.ndim else array


def _load_hdf5(path: str) -> "OrderedDict[str, torch.Tensor]":
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
        except Exception as err:
            raise UserError(f"{path} is not a readable HDF5 weight file (corrupted: "
                            f"{_first_line(err)}); {_REWRITE}") from None
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
    """The number of classes: rows of the classifier, the last 2-D weight of the state dict."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not matrices:
        raise UserError(f"{path}: cannot find a classifier (no 2-D weight) to read the class count from")
    return int(matrices[-1].shape[0])


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
    """Restore what :func:`rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype("uint32"), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(_python_rng_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        # as many devices as both machines have (a resumed run may see another GPU count)
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _python_rng_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def _python_rng_from_tensor(state: Mapping[str, Any]) -> tuple:
    return state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss"]
