"""Small CIFAR-100 files in the official format, for tests and benchmarks that cannot download
the real set.

The official ``cifar-100-python/{train,test,meta}`` files (Krizhevsky 2009) were written by
Python 2 ``cPickle`` with protocol 2: every key, name and the raw array buffer is a Python 2
``str``, so Python 3 loads them as ``str`` with ``encoding='latin1'`` and as ``bytes`` with
``encoding='bytes'``. Python 3's pickler would write ``str`` as unicode (loading as ``str``
under both encodings), so :class:`_Py2Pickler` emits Python 2 string opcodes
(``SHORT_BINSTRING``/``BINSTRING``) and pickles numpy arrays the way Python 2 numpy did
(``numpy.core.multiarray._reconstruct`` plus a ``BUILD`` state holding the raw bytes).

Images are class-dependent (a colour and a coarse 4x4 pattern per class, plus noise) so that a
tiny network can learn them in end-to-end tests.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

NUM_FINE = 100
NUM_COARSE = 20
DIRNAME = "cifar-100-python"
#: The registered data set (``--dataset``) whose files :func:`write_fake_cifar100` writes.
FAKE_DATASET = "cifar100"


class _GlobalRef:
    """A ``module.name`` reference pickled as a ``GLOBAL`` opcode without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce requires a callable
        raise TypeError("placeholder only")


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``str``/``bytes`` as Python 2 strings and numpy arrays as
    Python 2 numpy did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file) -> None:
        super().__init__(file, protocol=2)

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def _save_ref(self, obj: _GlobalRef) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str
    dispatch[_GlobalRef] = _save_ref

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            state = (1, tuple(int(s) for s in arr.shape), arr.dtype, False, arr.tobytes())
            return (_GlobalRef("numpy.core.multiarray", "_reconstruct"),
                    (_GlobalRef("numpy", "ndarray"), (0,), "b"), state)
        if isinstance(obj, np.dtype):
            if obj.kind not in "uif" or obj.byteorder not in "|<=":
                raise ValueError(f"fixture pickler supports little-endian numbers, got {obj}")
            order = "|" if obj.itemsize == 1 else "<"
            return (_GlobalRef("numpy", "dtype"), (obj.str[1:], 0, 1),
                    (3, order, None, None, None, -1, -1, 0))
        return NotImplemented


def py2_pickle_bytes(obj) -> bytes:
    """Pickle ``obj`` as Python 2 ``cPickle.dump(obj, f, 2)`` would have."""
    buf = io.BytesIO()
    _Py2Pickler(buf).dump(obj)
    return buf.getvalue()


def _class_images(labels: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
    """(N, 3072) uint8 in the official layout: 1024 red, then green, then blue values."""
    proto_rng = np.random.default_rng(10_000 + seed)
    colours = proto_rng.integers(30, 226, size=(NUM_FINE, 3, 1, 1)).astype(np.float32)
    patterns = proto_rng.integers(0, 256, size=(NUM_FINE, 3, 4, 4)).astype(np.float32)
    patterns = patterns.repeat(8, axis=2).repeat(8, axis=3)  # 4x4 -> 32x32 blocks
    base = 0.6 * colours + 0.4 * patterns  # (C, 3, 32, 32)
    noise = rng.normal(0.0, 12.0, size=(len(labels), 3, 32, 32)).astype(np.float32)
    images = np.clip(base[labels] + noise, 0, 255).round().astype(np.uint8)
    return images.reshape(len(labels), 3072)


def _split_dict(n: int, rng: np.random.Generator, seed: int, split: str) -> dict:
    labels = np.arange(n) % NUM_FINE
    rng.shuffle(labels)
    return {
        "filenames": [f"fake_{split}_{i:06d}.png" for i in range(n)],
        "batch_label": f"{split}ing batch 1 of 1",
        "fine_labels": [int(v) for v in labels],
        "coarse_labels": [int(v) // (NUM_FINE // NUM_COARSE) for v in labels],
        "data": _class_images(labels, rng, seed),
    }


def write_fake_cifar100(folder: str | Path, n_train: int = 1000, n_test: int = 200,
                        seed: int = 0) -> Path:
    """Write ``folder/cifar-100-python/{train,test,meta}`` in the official format.

    Labels are balanced (``i % 100`` shuffled), so every class appears once ``n >= 100``.
    Returns the ``cifar-100-python`` directory.
    """
    rng = np.random.default_rng(seed)
    out = Path(folder) / DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "train": _split_dict(n_train, rng, seed, "train"),
        "test": _split_dict(n_test, rng, seed, "test"),
        "meta": {
            "fine_label_names": [f"fine_{i:03d}" for i in range(NUM_FINE)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(NUM_COARSE)],
        },
    }
    for name, obj in files.items():
        (out / name).write_bytes(py2_pickle_bytes(obj))
    return out


def write_fake_cifar100_archive(archive: str | Path, n_train: int = 200, n_test: int = 100,
                                seed: int = 0) -> str:
    """Write a ``cifar-100-python.tar.gz``-style archive of fake files; return its md5."""
    archive = Path(archive)
    staging = archive.parent / (archive.name + ".staging")
    src = write_fake_cifar100(staging, n_train=n_train, n_test=n_test, seed=seed)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=DIRNAME)
    for f in src.iterdir():
        f.unlink()
    src.rmdir()
    staging.rmdir()
    return hashlib.md5(archive.read_bytes()).hexdigest()
