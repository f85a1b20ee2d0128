"""Checkpoint integrity (issue 18): the digest covers every entry of a file we wrote, tensors by
their stored bytes; a loaded file's tensors are bounded by its size before anything expands
them; training fields (epoch, accuracies, RNG states) are type- and range-checked; HDF5 files
cannot read other files, load plugins or allocate gigabytes; and fuzzed .pth and .h5 files
either load correctly or end in one line."""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import trainer
from helper import checkpoint as C
from helper.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
V1 = ROOT / "tests" / "fixtures" / "checkpoint_v1"
FUZZ = settings(max_examples=int(os.environ.get("KD_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_error(path, load=C.load_checkpoint) -> str:
    with pytest.raises(UserError) as err:
        load(str(path))
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and str(path) in text, text
    return text


def training_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    return {"model": model.state_dict(), "epoch": 3, "accuracy": 40.0, "best_acc": 41.5,
            "arch": "resnet8", "config": {"model_t": "wrn_40_2", "learning_rate": 0.05},
            "opt": argparse.Namespace(trial="t7"), "rng_state": C.rng_state()}


def flip(path: Path, needle: bytes, bit: int = 0, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    assert data.count(needle) == 1, needle
    data[data.index(needle) + offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- the digest

def test_a_flipped_bit_in_any_entry_is_refused(tmp_path):
    path = tmp_path / "resnet8_last.pth"
    for needle in (struct.pack(">d", 41.5), b"resnet8", b"wrn_40_2", b"trial", struct.pack(">d", 0.05)):
        C.save_checkpoint(training_state(), str(path))  # best_acc, arch, config, the Namespace
        assert C.load_checkpoint(str(path))["best_acc"] == 41.5
        flip(path, needle, offset=len(needle) - 1)
        text = load_error(path)
        assert "digest mismatch: the file is corrupted (its content differs" in text, text


def test_digest_covers_a_raw_state_dicts_attributes(tmp_path):
    path = tmp_path / "deploy.pth"
    state = torch.nn.Linear(3, 4).state_dict()
    torch.save(C.with_digest(state, attributes={"arch": "repvgg8", "blocktype": None}), path)
    loaded = C.load_checkpoint(str(path))
    assert loaded.arch == "repvgg8" and loaded._metadata == state._metadata
    torch.nn.Linear(3, 4).load_state_dict(loaded)
    flip(path, b"repvgg8", offset=6)
    assert "digest mismatch" in load_error(path)


def test_a_damaged_digest_is_refused(tmp_path):
    path = tmp_path / "a.pth"
    C.save_checkpoint(training_state(), str(path))
    flip(path, b"v2:sha256:", offset=1)  # the digest is no longer well formed
    assert "its digest 'v3:sha256:" in load_error(path)
    C.save_checkpoint(training_state(), str(path))
    flip(path, b"digest", offset=5)  # its key is
    assert "a digest is stored under 'digesu' instead of 'digest'" in load_error(path)


def test_old_tensor_only_digests_are_still_verified(tmp_path):
    checkpoint = C.load_checkpoint(str(V1 / "train_last.ckpt"))
    assert checkpoint["digest"].startswith("sha256:") and checkpoint["epoch"] == 3
    assert C.compute_digest(checkpoint, version=1) == checkpoint["digest"]
    deploy = C.load_checkpoint(str(V1 / "deploy.ckpt"))
    assert deploy.arch == "represnet8" and C.recorded_digest(deploy) == deploy.digest
    for name in ("train_last.ckpt", "deploy.ckpt"):
        copy = tmp_path / name
        shutil.copy(V1 / name, copy)
        weight = C.load_checkpoint(str(copy))["0.weight" if name == "deploy.ckpt" else "model"]
        weight = weight if isinstance(weight, torch.Tensor) else weight["0.weight"]
        flip(copy, weight.numpy().tobytes(), offset=5)
        assert "digest mismatch: the file is corrupted (its tensors differ" in load_error(copy)
    # what version 1 did not cover stays uncovered in its files: they load as they did
    copy = tmp_path / "edited.ckpt"
    shutil.copy(V1 / "train_last.ckpt", copy)
    flip(copy, struct.pack(">d", 41.5), offset=7)
    assert C.load_checkpoint(str(copy))["best_acc"] != 41.5


def test_digest_is_of_stored_bytes_and_keeps_sharing(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    state = {"a": base[2:8].view(2, 3), "b": base, "c": base.view(3, 4).t(),
             "d": torch.ones(1).expand(1000), "e": torch.tensor([1 + 2j]).conj()}
    path = tmp_path / "views.pth"
    C.save_checkpoint(state, str(path))
    loaded = C.load_checkpoint(str(path))
    assert loaded["c"].stride() == (1, 4) and loaded["a"].untyped_storage().nbytes() == 48
    assert C.compute_digest(loaded) == loaded.digest == C.with_digest(state).digest


# ----------------------------------------------------------------------------- bounded memory

PEAK_SCRIPT = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from helper.checkpoint import load_checkpoint
from helper.errors import UserError
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
out = {}
for path in sys.argv[2:]:
    before, start = peak(), time.time()
    try:
        load_checkpoint(path)
        message = None
    except UserError as err:
        message = str(err)
    out[path] = [message, peak() - before, time.time() - start]
print(json.dumps(out))
"""


def peak_growth(paths: list[Path]) -> dict[str, list]:
    """For each file, loaded in turn in a fresh process: [error line, peak RSS growth in MiB,
    seconds]."""
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(ROOT), *map(str, paths)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_small_files_cannot_allocate_gigabytes(tmp_path):
    h5py = pytest.importorskip("h5py")
    expanded = torch.ones(1).expand(2**29)  # 4 stored bytes, 2 GiB as a view
    files = {}
    for name, digest in [("v1", "sha256:" + "0" * 64), ("v2", "v2:sha256:" + "0" * 64), ("none", None)]:
        files[name] = tmp_path / f"{name}.pth"
        torch.save({"model": {"fc.weight": expanded}, **({"digest": digest} if digest else {})},
                   files[name])
    files["h5"] = tmp_path / "unwritten.h5"
    with h5py.File(files["h5"], "w") as f:
        f.create_dataset("fc/weight", data=np.ones((4, 3), np.float32))
        f.create_dataset("fc/bias", (2**28,), np.float32, chunks=(2**16,))  # 1 GiB never written
    files["h5gz"] = tmp_path / "unwritten_gzip.h5"
    with h5py.File(files["h5gz"], "w") as f:
        f.create_dataset("fc/bias", (2**28,), np.float32, chunks=(2**16,), compression="gzip")
    results = peak_growth(list(files.values()))
    for name, path in files.items():
        message, growth, seconds = results[str(path)]
        assert message is not None and str(path) in message and "\n" not in message, (name, message)
        expected = "never written" if name == "h5" else "more than a"
        assert expected in message and "damaged or crafted" in message, message
        assert growth < 100 and seconds < 5, (name, growth, seconds)


def test_expanded_views_within_the_files_size_load(tmp_path):
    path = tmp_path / "ids.pth"
    C.save_checkpoint({"position_ids": torch.arange(64).expand(1, -1), "w": torch.ones(1000)}, str(path))
    assert C.load_checkpoint(str(path))["position_ids"].shape == (1, 64)
    assert C.size_limit(1000) == 64 * 1000 + 2**20


def test_a_classifier_without_weights_cannot_size_the_model():
    state = {"conv.weight": torch.ones(2, 3, 3, 3), "fc.weight": torch.ones(10**9, 0)}
    text = load_error("x.pth", lambda p: C.num_classes_from_state_dict(state, p))
    assert "its classifier fc.weight has shape (1000000000, 0), no weights" in text


def test_meta_tensors_are_one_line(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"model": {"fc.weight": torch.empty(4, 3, device="meta")}}, path)
    assert "tensor model/fc.weight is a meta-device tensor" in load_error(path)
    C.save_checkpoint({"model": {"fc.weight": torch.empty(4, 3, device="meta")}, "epoch": 1}, str(path))
    assert "meta-device tensor" in load_error(path)


def test_views_past_their_storage_are_one_line(tmp_path):
    class Crafted:  # pickles as a tensor of 8 elements over a storage of 1
        def __reduce_ex__(self, protocol):
            storage = torch.storage.TypedStorage(wrap_storage=torch.zeros(1).untyped_storage(),
                                                 dtype=torch.float32, _internal=True)
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (8,), (1,), False, OrderedDict()))

    path = tmp_path / "past.pth"
    torch.save({"model": {"fc.weight": Crafted()}}, path)
    assert "corrupt or truncated" in load_error(path)


def test_self_holding_deep_and_empty_checkpoints_are_one_line(tmp_path):
    path = tmp_path / "deep.pth"
    deep: list = []
    for _ in range(300):
        deep = [deep]
    torch.save({"model": {"w": torch.ones(1)}, "x": deep, "digest": "v2:sha256:" + "0" * 64}, path)
    assert "nest more than 100 levels deep" in load_error(path)
    key: tuple = ()
    for _ in range(150):
        key = (key,)
    torch.save({"model": {key: torch.ones(1)}}, path)  # no digest: the keys are walked too
    assert "nest more than 100 levels deep" in load_error(path)
    cyclic: list = [torch.ones(1)]
    cyclic.append(cyclic)
    torch.save({"model": {"w": torch.ones(1)}, "x": cyclic}, path)
    assert "holds itself" in load_error(path)
    torch.save({}, path)  # what a flipped bit in a checkpoint's pickle can leave
    assert "holds an empty dict, no weights" in load_error(path)


# ----------------------------------------------------------------------------- training fields

def rng_with(**changes) -> dict:
    state = C.rng_state()
    for where, value in changes.items():
        part, _, key = where.partition("__")
        if key:
            state[part] = {**state[part], key: value}
        elif value is None:
            del state[part]
        else:
            state[part] = value
    return state


@pytest.mark.parametrize("field, value, expected", [
    ("epoch", "x", "its 'epoch' is the str 'x', not a whole number in 0..1000000"),
    ("epoch", float("nan"), "its 'epoch' is the float nan"),
    ("epoch", -3, "its 'epoch' is the int -3"),
    ("epoch", True, "its 'epoch' is the bool True"),
    ("epoch", 10**7, "its 'epoch' is the int 10000000"),
    ("best_acc", "41.5", "its 'best_acc' is the str '41.5', not an accuracy in [0, 100] percent"),
    ("best_acc", float("inf"), "its 'best_acc' is the float inf"),
    ("best_acc", 180.0, "its 'best_acc' is the float 180.0"),
    ("accuracy", torch.tensor(40.0), "its 'accuracy' is a torch.float32 tensor of shape ()"),
    ("rng_state", [1, 2], "its 'rng_state' is malformed (rng_state is the list [1, 2], not a dict)"),
    ("rng_state", rng_with(numpy=None), "rng_state lacks 'numpy'"),
    ("rng_state", rng_with(torch=torch.zeros(7, dtype=torch.uint8)), "'rng_state' does not restore"),
    ("rng_state", rng_with(torch=torch.zeros(5056)), "torch is a torch.float32 tensor of shape (5056,)"),
    ("rng_state", rng_with(numpy__keys=torch.zeros(3, dtype=torch.int64)),
     "numpy keys is a torch.int64 tensor of shape (3,), not a 1-D tensor of 624"),
    ("rng_state", rng_with(numpy__keys=torch.full((624,), -1)), "numpy keys are outside 0..2^32-1"),
    ("rng_state", rng_with(numpy__pos=700), "numpy pos is the int 700, not a whole number in 0..624"),
    ("rng_state", rng_with(numpy__cached_gaussian="x"), "numpy cached_gaussian is the str 'x'"),
    ("rng_state", rng_with(python__internal=torch.cat([torch.zeros(624, dtype=torch.int64), torch.tensor([10**6])])),
     "'rng_state' does not restore (ValueError"),
    ("rng_state", rng_with(python__version="3"), "python version is the str '3'"),
    ("rng_state", rng_with(python__gauss=[1]), "python gauss is the list [1]"),
    ("rng_state", rng_with(cuda="x"), "cuda is the str 'x', not a list of device states"),
])
def test_bad_training_fields_are_one_line(tmp_path, field, value, expected):
    path = tmp_path / "resnet8_last.pth"
    C.save_checkpoint({**training_state(), field: value}, str(path))  # a valid digest
    checkpoint = C.load_checkpoint(str(path))
    text = load_error(path, lambda p: C.check_fields(checkpoint, p))
    assert expected in text and "start the run again without --resume" in text, text


def test_good_training_fields_pass_and_restore(tmp_path):
    path = tmp_path / "resnet8_last.pth"
    C.save_checkpoint({**training_state(), "best_acc": 100, "accuracy": 0.0}, str(path))
    checkpoint = C.load_checkpoint(str(path))
    C.check_fields(checkpoint, str(path))
    C.check_fields({"model": {}}, "released.pth")  # fields a file lacks are not checked
    expected = (torch.rand(2), np.random.rand(2), random.random())
    C.set_rng_state(checkpoint["rng_state"])
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]


def test_resume_checks_the_fields_first(tmp_path):
    model = torch.nn.Linear(3, 4)
    run = trainer.Run(name="resnet8", save_folder=str(tmp_path), train_modules=[model], eval_model=model,
                      optimizer=None, state_modules={"model": model})  # type: ignore[arg-type]
    path = tmp_path / "resnet8_last.pth"
    C.save_checkpoint({"model": model.state_dict(), "optimizer": {}, "epoch": float("nan"),
                       "rng_state": C.rng_state()}, str(path))
    # before anything else reads the checkpoint (the configuration is not even looked at)
    assert "its 'epoch' is the float nan" in load_error(path, lambda p: trainer.resume(run, p, None))


# ----------------------------------------------------------------------------- HDF5

def write_h5(path: Path, **kwargs) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("fc/weight", data=np.ones((4, 3), np.float32))
        for name, spec in kwargs.items():
            f.create_dataset(f"fc/{name}", **spec)


def test_hdf5_external_storage_is_refused_before_any_read(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"root:x:0:0:" * 4)
    path = tmp_path / "w.h5"
    write_h5(path, bias={"shape": (4,), "dtype": np.float32, "external": [(str(secret), 0, 16)]})
    reads = []
    monkeypatch.setattr(C, "_hdf5_array", lambda *args: reads.append(args))
    assert "dataset fc/bias keeps its data in another file (HDF5 external storage)" in load_error(path)
    assert reads == []  # not even fc/weight: every dataset is checked before any is read


def test_hdf5_virtual_datasets_and_plugin_filters_are_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    source = tmp_path / "source.h5"
    write_h5(source)
    layout = h5py.VirtualLayout(shape=(4,), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(source), "fc/weight", shape=(4, 3))[:, 0]
    path = tmp_path / "virtual.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("fc/bias", layout)
    assert "dataset fc/bias is a virtual dataset (it maps other files)" in load_error(path)
    plugin = tmp_path / "plugin.h5"
    with h5py.File(plugin, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4,))
        dcpl.set_filter(307, h5py.h5z.FLAG_OPTIONAL, ())  # unknown here: stored unfiltered
        h5py.h5d.create(f.id, b"bias", h5py.h5t.NATIVE_FLOAT, h5py.h5s.create_simple((4,)), dcpl=dcpl)
    assert "dataset bias uses HDF5 filter 307, which is not built in" in load_error(plugin)


def test_hdf5_unwritten_and_empty_datasets_are_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "late.h5"
    write_h5(path, bias={"shape": (4,), "dtype": np.float32})  # contiguous, never written
    assert "dataset fc/bias declares 16 bytes but only 0 are stored" in load_error(path)
    write_h5(path, bias={"data": h5py.Empty(np.float32)})
    assert "dataset fc/bias has no dataspace" in load_error(path)
    write_h5(path, bias={"data": np.arange(4, dtype=np.float32), "compression": "gzip", "shuffle": True,
                         "fletcher32": True})
    assert C.load_checkpoint(str(path))["fc.bias"].tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- fuzzing

edits = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 2**20)),
    st.tuples(st.just("splice"), st.integers(0, 2**20), st.integers(0, 2**20), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
), min_size=1, max_size=4)


def damaged(data: bytes, changes) -> bytes:
    out = bytearray(data)
    for change in changes:
        n = max(len(out), 1)
        if change[0] == "flip":
            if out:
                out[change[1] % n] ^= 1 << change[2]
        elif change[0] == "cut":
            del out[change[1] % n:]
        elif change[0] == "splice":
            src, dst, size = change[1] % n, change[2] % n, change[3]
            out[dst:dst + size] = out[src:src + size]
        else:
            out[change[1] % n:change[1] % n] = change[2]
    return bytes(out)


def loads_correctly_or_one_line(path: Path, data: bytes, check) -> None:
    path.write_bytes(data)
    try:
        loaded = C.load_checkpoint(str(path))
    except UserError as err:
        text = str(err)
        assert text and "\n" not in text and str(path) in text, text
        return
    check(loaded)


@pytest.fixture
def peak_stays_bounded():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert growth_mib < 256, growth_mib


def test_fuzzed_checkpoints_load_correctly_or_end_in_one_line(tmp_path, peak_stays_bounded):
    source = tmp_path / "good.pth"
    state = {k: v for k, v in training_state().items() if k != "rng_state"}  # 2 KB, not 17
    C.save_checkpoint(state, str(source))
    original, path = source.read_bytes(), tmp_path / "fuzzed.pth"

    def check(loaded) -> None:  # anything that loads is what was written: the digest held
        assert loaded.keys() == {*state, "digest"} and vars(loaded["opt"]) == {"trial": "t7"}
        assert all(loaded[k] == state[k] for k in ("epoch", "accuracy", "best_acc", "arch", "config"))
        assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
        C.check_fields(loaded, str(path))

    @FUZZ
    @given(changes=edits)
    def run(changes) -> None:
        loads_correctly_or_one_line(path, damaged(original, changes), check)

    run()


def test_fuzzed_hdf5_files_load_or_end_in_one_line(tmp_path, peak_stays_bounded):
    pytest.importorskip("h5py")
    source = tmp_path / "good.h5"
    write_h5(source, bias={"data": np.arange(4, dtype=np.float32)})
    original, path = source.read_bytes(), tmp_path / "fuzzed.h5"

    def check(loaded) -> None:  # HDF5 has no digest: values may differ, sizes may not
        assert all(isinstance(v, torch.Tensor) for v in loaded.values())
        assert sum(v.numel() * v.element_size() for v in loaded.values()) <= C.size_limit(path.stat().st_size)

    @FUZZ
    @given(changes=edits)
    def run(changes) -> None:
        loads_correctly_or_one_line(path, damaged(original, changes), check)

    run()
