"""CIFAR-100 files are parsed by their pickle opcodes (:mod:`helper.pickle_reader`), never
unpickled: files that crashed Python or allocated gigabytes through the old allow-list
unpickler end in one line, every size is bounded before anything is allocated, and a fuzz test
checks that mutated, truncated and spliced CIFAR pickles, random opcode streams and random data
pickled by every protocol either load correctly or end in one :class:`UserError` line, with
nothing else raised and bounded memory (``KD_FUZZ_EXAMPLES=N`` for more than 100 examples)."""
from __future__ import annotations

import faulthandler
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataset import cifar100
from helper.errors import UserError
from helper.pickle_reader import PickleError, read_pickle_bytes
from tests.cifar_fixtures import py2_pickle_bytes

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=int(os.environ.get("KD_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
TRAIN_ARRAY_BYTES = 50_000 * 3072


# ----------------------------------------------------------------------------- hand-made files
# Pickle opcodes written out, as an attacker would (see pickletools for their meaning).

def glob(module: str, name: str) -> bytes:
    """GLOBAL module.name"""
    return b"c" + f"{module}\n{name}\n".encode()


def py2str(data: bytes) -> bytes:
    """SHORT_BINSTRING (a Python 2 str)"""
    return b"U" + bytes([len(data)]) + data


def int4(n: int) -> bytes:
    """BININT"""
    return b"J" + struct.pack("<i", n)


def num(n: int) -> bytes:
    """BININT, or LONG1 for a larger integer"""
    if -2**31 <= n < 2**31:
        return int4(n)
    data = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def dtype(code: bytes, order: bytes = b"|", flags: int = 0) -> bytes:
    """numpy.dtype(code, False, True) with BUILD state (3, order, None, None, None, -1, -1,
    flags)"""
    return (glob("numpy", "dtype") + py2str(code) + b"K\x00K\x01\x87R(K\x03" + py2str(order)
            + b"NNN" + int4(-1) + int4(-1) + b"K" + bytes([flags]) + b"tb")


def segfault_file() -> bytes:
    """{'data': numpy.core.multiarray.scalar(dtype('O8') with its object flags cleared by BUILD,
    8 bytes)}: numpy reads the 8 bytes as an object pointer (a segmentation fault under the old
    allow-list unpickler)."""
    return (b"\x80\x02}" + py2str(b"data") + glob("numpy.core.multiarray", "scalar")
            + dtype(b"O8") + py2str(b"A" * 8) + b"\x86Rs.")


def zero_stride_file(images: int) -> bytes:
    """{'data': ndarray((images, 3072), u1, 1 byte, 0, (0, 0)), 'fine_labels': the same for
    (images,) int64}: a view of one byte as ``images`` images, made real by the reader's copy
    (2.9 GB for 400,000 images under the old unpickler; a MemoryError for 1,000,000)."""
    data = (glob("numpy", "ndarray") + b"(" + int4(images) + b"M\x00\x0c\x86" + dtype(b"u1")
            + b"C\x01\x00" + b"K\x00K\x00K\x00\x86tR")
    labels = (glob("numpy", "ndarray") + b"(" + int4(images) + b"\x85" + dtype(b"i8", b"<")
              + b"C\x08" + bytes(8) + b"K\x00K\x00\x85tR")
    return b"\x80\x02}(" + py2str(b"data") + data + py2str(b"fine_labels") + labels + b"u."


def reconstruct_file(shape: tuple[int, ...], raw: bytes, code: bytes = b"u1") -> bytes:
    """{'data': an array as Python 2 numpy pickled it: _reconstruct + BUILD (1, shape, dtype,
    False, raw)}; ``raw`` is written whole (its length field can claim more)."""
    dims = b"".join(num(n) for n in shape)
    return (b"\x80\x02}" + py2str(b"data") + glob("numpy.core.multiarray", "_reconstruct")
            + glob("numpy", "ndarray") + b"K\x00\x85" + py2str(b"b") + b"\x87R(K\x01(" + dims
            + b"t" + dtype(code) + b"\x89" + raw + b"tbs.")


def binstring(data: bytes, claimed: int | None = None) -> bytes:
    """BINBYTES whose length field says ``claimed`` (default: the real length)."""
    return b"B" + struct.pack("<I", len(data) if claimed is None else claimed) + data


def nested_labels(depth: int) -> bytes:
    """{'data': 1 image, 'fine_labels': [[[...]]] nested ``depth`` lists deep}"""
    image = reconstruct_file((1, 3072), binstring(bytes(3072)))[:-2]  # without SETITEM, STOP
    return (image + b"s" + py2str(b"fine_labels") + b"]" * depth + b"a" * (depth - 1)
            + b"s.")


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text and "\r" not in text and text == text.strip(), repr(text)
    return text


def read_error(tmp_path: Path, content: bytes, name: str = "train") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        cifar100.read_cifar100_file(path)
    text = one_line(err)
    assert str(path) in text
    return text


# ----------------------------------------------------------------------------- the cases

def test_segfault_file_is_refused_without_calling_numpy(tmp_path):
    # The reader refuses the scalar global when it meets it; no numpy function is ever called
    # on the file's behalf, so this cannot crash (test_hostile_files_in_a_subprocess checks
    # that too, where a crash could not take the test run down).
    text = read_error(tmp_path, segfault_file())
    assert "refused to unpickle numpy.core.multiarray.scalar" in text
    this = "this"  # a module that prints when imported: the reader never imports one
    sys.modules.pop(this, None)
    assert "refused to unpickle this.x" in read_error(tmp_path, b"\x80\x02" + glob(this, "x")
                                                      + b".")
    assert this not in sys.modules
    text = read_error(tmp_path, b"\x80\x02}" + py2str(b"data") + dtype(b"O8") + b"s.")
    assert "refused numpy dtype 'O8'" in text


def test_zero_stride_and_oversized_arrays_are_refused_before_allocating(tmp_path):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for images in (400_000, 1_000_000):
            text = read_error(tmp_path, zero_stride_file(images))
            assert "refused call numpy.ndarray(" in text
        # a declared 1,000,000-image buffer (3 GB) in a file of a few hundred bytes
        raw = binstring(b"", claimed=1_000_000 * 3072)
        text = read_error(tmp_path, reconstruct_file((1_000_000, 3072), raw))
        assert "BINBYTES of 3072000000 bytes, but only" in text and "truncated" in text
        # shapes beyond the format's 50,000 / 10,000 images, and data that does not fill one
        text = read_error(tmp_path, reconstruct_file((50_001, 3072), binstring(b"")))
        assert "shape (50001, 3072) uint8, more than the 153600000 bytes" in text
        text = read_error(tmp_path, reconstruct_file((10_001, 3072), binstring(b"")), "test")
        assert "more than the 30720000 bytes" in text
        text = read_error(tmp_path, reconstruct_file((0, 2**62, 2**62), binstring(b"")))
        assert "more than the 153600000 bytes" in text
        text = read_error(tmp_path, reconstruct_file((4, 3072), binstring(b"\x00")))
        assert "needs 12288 bytes of data, the file holds 1" in text
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_file_larger_than_the_format_is_refused_before_reading(tmp_path):
    path = tmp_path / "train"
    path.write_bytes(bytes(2 * 2**20))
    with pytest.raises(UserError, match="has 2097152 bytes, more than the 1055744") as err:
        cifar100.load_pickle(path, images=1)  # one image: 2 * 3072 + 1024 bytes + 1 MiB
    one_line(err)


def test_hostile_files_in_a_subprocess(tmp_path):
    """No crash and bounded memory, asserted where a crash could not take pytest down; only
    numpy and the reader are imported (torch would take seconds)."""
    files = [segfault_file(), zero_stride_file(400_000), zero_stride_file(1_000_000),
             reconstruct_file((1_000_000, 3072), binstring(b"", claimed=1_000_000 * 3072)),
             nested_labels(10_000)]
    paths = [tmp_path / f"hostile{i}" for i in range(len(files))]
    for path, data in zip(paths, files):
        path.write_bytes(data)
    script = textwrap.dedent(f"""
        import resource
        from helper.pickle_reader import PickleError, read_pickle
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in {[str(p) for p in paths]!r}:
            try:
                with open(path, "rb") as f:
                    read_pickle(f, max_array_bytes={TRAIN_ARRAY_BYTES})
                print("loaded")
            except PickleError as err:
                print("refused", err)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("grown_kib", grown)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == len(files) + 1 and all(x.startswith("refused ") for x in lines[:-1])
    assert int(lines[-1].split()[1]) < 64 * 1024, lines[-1]  # KiB: far below any image buffer


def test_deeply_nested_labels_are_one_line(tmp_path):
    text = read_error(tmp_path, nested_labels(10_000))  # RecursionError under the old code
    assert "containers nested more than 100 levels deep" in text
    text = read_error(tmp_path, nested_labels(99))  # within the bound: named, never recursed
    assert "'fine_labels' are not integers (found the list [[[[[[" in text
    deep_tuple = b"\x80\x02" + b"(" * 200 + b"t" * 200 + b"."
    assert "nested more than 100" in read_error(tmp_path, deep_tuple)


def test_shared_tuples_cost_their_size_not_their_expansion(tmp_path):
    """A tuple of two copies of a tuple of two copies of ... (memo GETs): 2**60 leaves in a few
    hundred bytes are walked once each, and a tuple is never a dict key (its hash would walk
    them all)."""
    doubling = b"K\x01\x85q\x000" + b"".join(  # (1,) as memo 0; (m[i-1], m[i-1]) as memo i
        b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i]) + b"0"
        for i in range(1, 61)) + b"h\x3c"
    image = reconstruct_file((1, 3072), binstring(bytes(3072)))[:-2]  # without SETITEM, STOP
    content = image + b"s" + py2str(b"fine_labels") + doubling + b"s."
    text = read_error(tmp_path, content)
    assert "'fine_labels' are not integers (found the tuple ((((" in text
    text = read_error(tmp_path, b"\x80\x02}" + doubling + b"K\x00s.")
    assert "a tuple as a dict key or set item" in text


REFUSED = [
    (b"\x80\x02]q\x00h\x00a.", "a list referenced twice (memo GET)"),  # a list inside itself
    (b"\x80\x02]2a.", "refused DUP"),
    (b"\x80\x02\x82\x01.", "refused an extension code"),
    (b"\x80\x02U\x01xQ.", "refused a persistent id"),
    (b"\x80\x02" + glob("numpy", "ndarray") + b")\x81.", "refused NEWOBJ"),
    (b"(ios\nsystem\nS'ls'\n.", "refused to unpickle os.system"),
    (b"\x80\x02\x8b" + struct.pack("<i", 5000) + bytes(5000) + b".", "LONG4 of 5000 bytes"),
    (b"I" + b"9" * 5000 + b"\n.", "INT that is not a number"),  # over 4300 digits
    (b"\x80\x06N.", "pickle protocol 6"),
    (b"\x80\x02N", "ends without STOP"),
    (b"\x80\x02NN.", "STOP with 2 values"),
    (b"\x80\x02" + glob("numpy", "ndarray") + b".", "a bare reference to numpy.ndarray"),
    (b"\x80\x02cnumpy\r\nx\xe2\x80\xa8\n.", "numpy\\r.x\\u2028"),  # one line, printable
]


@pytest.mark.parametrize("content, expected", REFUSED, ids=[e for _, e in REFUSED])
def test_structures_a_cifar_file_never_has_are_one_line(tmp_path, content, expected):
    assert expected in read_error(tmp_path, content)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_arrays_as_numpy_and_pickle_write_them(protocol):
    rng = np.random.default_rng(protocol)
    value = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
             "fortran": np.asfortranarray(rng.normal(size=(3, 5))),
             "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
             "empty": np.zeros((0, 3072), np.uint8), "labels": [1, 2, 99], "name": "x"}
    out = read_pickle_bytes(pickle.dumps(value, protocol=protocol), max_array_bytes=10_000)
    assert out.keys() == value.keys() and out["labels"] == [1, 2, 99] and out["name"] == "x"
    for key in ("data", "fortran", "big_endian", "empty"):
        assert out[key].dtype == value[key].dtype and out[key].shape == value[key].shape
        np.testing.assert_array_equal(out[key], value[key])
    py2 = read_pickle_bytes(py2_pickle_bytes({"data": value["data"], "n": ["a", "b"]}),
                            max_array_bytes=10_000)
    np.testing.assert_array_equal(py2["data"], value["data"])
    assert py2["n"] == ["a", "b"]


# ----------------------------------------------------------------------------- fuzzing

def _valid_files() -> list[bytes]:
    """Small valid split files as Python 2 numpy and modern pickle write them."""
    rng = np.random.default_rng(0)
    entry = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "fine_labels": [0, 5, 99],
             "coarse_labels": [0, 1, 19], "filenames": ["a.png", "b.png", "c.png"],
             "batch_label": "training batch 1 of 1"}
    files = [py2_pickle_bytes(entry)]
    for protocol in (2, 4, 5):
        files.append(pickle.dumps(entry, protocol=protocol))
        files.append(pickle.dumps({k.encode(): v for k, v in entry.items()}, protocol=protocol))
    return files


VALID = _valid_files()


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid file with bytes flipped, inserted or deleted, truncated, or spliced with
    another."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(VALID))
            data[at:] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data)


_SNIPPETS = [
    b"(", b")", b"]", b"}", b"t", b"l", b"d", b"a", b"e", b"s", b"u", b"0", b"1", b"2", b"N",
    b"R", b"b", b"\x85", b"\x86", b"\x87", b"\x88", b"\x89", b"\x8f", b"\x90", b"\x91", b"\x93",
    b"\x94", b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"h\x02", b"K\x00", b"K\x01", b"K\x63",
    b"K\xff", b"M\x00\x0c", int4(-1), int4(3), b"I01\n", b"F1.5\n", b"\x8a\x01\xff",
    py2str(b"data"), py2str(b"fine_labels"), py2str(b"b"), py2str(b"u1"), py2str(b"O8"),
    py2str(b"|"), py2str(b"<"), b"X\x06\x00\x00\x00latin1", b"\x8c\x01C", b"C\x01b",
    b"C\x08" + bytes(8), binstring(bytes(3072)), binstring(b"", claimed=2**31),
    glob("numpy.core.multiarray", "_reconstruct"), glob("numpy._core.numeric", "_frombuffer"),
    glob("numpy", "ndarray"), glob("numpy", "dtype"), glob("_codecs", "encode"),
    glob("__builtin__", "bytes"), glob("numpy.core.multiarray", "scalar"), glob("os", "system"),
    dtype(b"u1"), dtype(b"i8", b"<"), dtype(b"O8", flags=63), b"\x96\x01" + bytes(7) + b"x",
    b"\x95\x05" + bytes(7),
]


@st.composite
def opcode_streams(draw: st.DrawFn) -> bytes:
    """PROTO 2, a random sequence of opcodes with plausible arguments (or, less often, any
    bytes), STOP."""
    snippet = st.sampled_from(_SNIPPETS)
    parts = draw(st.lists(st.one_of(snippet, snippet, snippet, st.binary(min_size=1, max_size=3)),
                          max_size=40))
    return b"\x80\x02" + b"".join(parts) + draw(st.sampled_from([b".", b"s.", b"u.", b""]))


_DTYPES = ["u1", "i1", "<i4", ">i4", "<i8", "<f4", "?", "<c8", "O", "<U2", "S3", "V2"]
_leaves = st.one_of(st.integers(-2**80, 2**80), st.floats(), st.text(max_size=4),
                    st.binary(max_size=4), st.none(), st.booleans())


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """A small numpy array of any dtype (object, string and void ones too), any order."""
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    array = np.zeros(shape, dtype) if dtype.kind in "OUSV" else values.astype(dtype)
    return np.asfortranarray(array) if draw(st.booleans()) else array


@st.composite
def pickled_values(draw: st.DrawFn) -> bytes:
    """A split dict whose entries are random data, written by pickle (protocols 0 to 5) or
    the way Python 2 numpy wrote the official files."""
    images = draw(st.integers(0, 3))
    data = draw(st.one_of(st.just(np.zeros((images, 3072), np.uint8)), arrays(), _leaves))
    labels = draw(st.one_of(st.lists(st.integers(-1, 100), min_size=images, max_size=images),
                            arrays(), _leaves))
    extra = draw(st.recursive(st.one_of(_leaves, arrays()), lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=2), inner, max_size=2)), max_leaves=6))
    entry = {"data": data, "fine_labels": labels, "filenames": extra}
    protocol = draw(st.integers(-1, 5))
    if protocol >= 0:
        return pickle.dumps(entry, protocol=protocol)
    try:
        return py2_pickle_bytes(entry)
    except ValueError:  # the fixture writer knows only little-endian numbers
        return pickle.dumps(entry, protocol=2)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "train"


def _check(path: Path, data: bytes) -> None:
    """``data`` as a train file loads as valid images and labels, or ends in one UserError
    line; the generic reader (no arrays, as for checkpoints) returns or raises PickleError;
    either way the reader allocates little beyond the file."""
    path.write_bytes(data)
    tracemalloc.reset_peak()
    try:
        images, labels = cifar100.read_cifar100_file(path)
    except UserError as err:
        text = str(err)
        assert text and "\n" not in text and "\r" not in text and str(path) in text
    else:
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (32, 32, 3)
        assert labels.dtype == np.int64 and labels.shape == (len(images),)
        assert 0 < len(images) <= 50_000 and labels.min() >= 0 and labels.max() < 100
    try:
        read_pickle_bytes(data)
    except PickleError as err:
        assert "\n" not in str(err)
    _, peak = tracemalloc.get_traced_memory()
    assert peak < 8 * 2**20, peak


@pytest.fixture(scope="module")
def guarded() -> None:
    """faulthandler on (pytest turns it on already), so a crash would at least say where; the
    parser is there to make one impossible."""
    enabled = faulthandler.is_enabled()
    if not enabled:
        faulthandler.enable()
    yield
    if not enabled:
        faulthandler.disable()


@FUZZ
@given(data=st.one_of(mutated_files(), opcode_streams(), pickled_values()))
def test_fuzz_any_file_loads_or_ends_in_one_line(guarded, scratch, data):
    tracemalloc.start()
    try:
        _check(scratch, data)
    finally:
        tracemalloc.stop()


def test_fuzz_seeds_load():
    """The files the fuzzer mutates are valid to begin with."""
    for data in VALID:
        out = read_pickle_bytes(data, max_array_bytes=3 * 3072)
        keys = {k if isinstance(k, str) else k.decode() for k in out}
        assert keys == {"data", "fine_labels", "coarse_labels", "filenames", "batch_label"}
