"""Hostile and damaged files: rigged CIFAR pickles never run code, and every bad CIFAR file or
checkpoint (directory, text, plain pickle, list, truncated, flipped byte, odd HDF5, wrong
architecture, full disk) ends in one line naming the file; checkpoints carry a verified digest,
get the user's umask, and temporary leftovers can be cleaned up."""
from __future__ import annotations

import argparse
import builtins
import errno
import os
import pickle
import stat
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.model_io import read_teacher
import validation
from dataset import cifar100
from helper import checkpoint as C
from helper.errors import UserError
from helper.pickle_reader import PickleError, RefusedGlobal, read_pickle_bytes
from models import model_dict
from tests.cifar_fixtures import py2_pickle_bytes, write_fake_cifar100

ROOT = Path(__file__).resolve().parent.parent


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and text, repr(text)
    return text


# ----------------------------------------------------------------------------- rigged pickles

class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpensFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def rigged_bytes(kind: str, marker: Path) -> bytes:
    good = {"data": np.zeros((4, 3072), np.uint8), "fine_labels": [0, 1, 2, 3]}
    if kind == "system":
        return pickle.dumps(RunsShell(marker), protocol=2)
    if kind == "open":
        return pickle.dumps(OpensFile(marker), protocol=4)
    # hidden inside an otherwise valid split dict, the way a tampered download would look
    return pickle.dumps({**good, "filenames": [RunsShell(marker)]}, protocol=2)


@pytest.mark.parametrize("kind, refused", [("system", "posix.system" if os.name == "posix" else "system"),
                                           ("open", "io.open"), ("nested", "system")])
def test_rigged_cifar_file_is_refused_and_never_run(tmp_path, kind, refused):
    folder = write_fake_cifar100(tmp_path, n_train=100, n_test=100)
    marker = tmp_path / "pwned"
    (folder / "train").write_bytes(rigged_bytes(kind, marker))
    with pytest.raises(UserError) as err:
        cifar100.read_cifar100_file(folder / "train")
    text = one_line(err)
    assert text.startswith(f"{folder / 'train'}: refused to unpickle ") and refused in text
    assert "only dicts, lists, bytes, str, numbers and numpy arrays" in text
    assert not marker.exists()


def test_rigged_cifar_file_through_train_teacher(tmp_path):
    folder = write_fake_cifar100(tmp_path / "data", n_train=100, n_test=100)
    marker = tmp_path / "pwned"
    (folder / "train").write_bytes(rigged_bytes("system", marker))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train_teacher.py"), "--dataset", "cifar100",
                           "--data_folder", str(tmp_path / "data"), "--epochs", "1",
                           "--model", "resnet8", "--device", "cpu", "--num_workers", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "refused to unpickle posix.system" in lines[0]
    assert str(folder / "train") in lines[0]
    assert not marker.exists()


def test_pickle_reader_builds_only_plain_data_and_numeric_arrays():
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    plain = {b"k": [1, 2.5, "s", b"b", None, True, (1,)], "e": b"", 7: {None: (-2**70, ())}}
    for protocol in range(6):
        assert read_pickle_bytes(pickle.dumps(plain, protocol=protocol)) == plain
    sets = [{1, "a"}, frozenset({2.5, b"b"})]
    assert read_pickle_bytes(pickle.dumps(sets, protocol=4)) == sets
    with pytest.raises(PickleError, match="a tuple as a dict key"):  # hashing walks a tuple
        read_pickle_bytes(pickle.dumps({(1, 2): 3}))
    for protocol in (2, 3, 4, 5):
        out = read_pickle_bytes(pickle.dumps({"a": array, "f": np.asfortranarray(array)},
                                             protocol=protocol), max_array_bytes=24)
        for key in "af":
            np.testing.assert_array_equal(out[key], array)
        assert out["a"].dtype == np.int16
    with pytest.raises(RefusedGlobal) as err:
        read_pickle_bytes(pickle.dumps(OrderedDict(a=1)), max_array_bytes=24)
    assert err.value.qualname == "collections.OrderedDict"
    with pytest.raises(RefusedGlobal):  # numpy scalars are objects numpy builds: refused
        read_pickle_bytes(pickle.dumps(np.float32(3)), max_array_bytes=24)
    with pytest.raises(RefusedGlobal):  # no array budget: plain containers only
        read_pickle_bytes(pickle.dumps(array))
    with pytest.raises(PickleError, match="more than the 23 bytes"):
        read_pickle_bytes(pickle.dumps(array), max_array_bytes=23)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_good_cifar_files_still_load(tmp_path, protocol):
    folder = write_fake_cifar100(tmp_path, n_train=120, n_test=100)  # Python 2 layout
    images, labels = cifar100.read_cifar100_file(folder / "train")
    assert images.shape == (120, 32, 32, 3) and labels.dtype == np.int64
    assert cifar100.read_cifar100_meta(tmp_path)["fine_label_names"][5] == "fine_005"
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    for labels_value in ([1, 2, 99], np.array([1, 2, 99], np.int32)):
        entry = {b"data": data, b"fine_labels": labels_value, b"filenames": [b"a.png"] * 3}
        (folder / "test").write_bytes(pickle.dumps(entry, protocol=protocol))
        images, labels = cifar100.read_cifar100_file(folder / "test")
        np.testing.assert_array_equal(images[1][..., 0].ravel(), data[1, :1024])
        assert labels.tolist() == [1, 2, 99]


@pytest.mark.parametrize("damage, expected", [
    ("string_labels", "'fine_labels' are not integers (found the str '3')"),
    ("float_labels", "'fine_labels' are not integers (found the float 1.5)"),
    ("bool_labels", "'fine_labels' are not integers"),
    ("nested_labels", "'fine_labels' are not integers (found the list"),
    ("label_count", "3 fine labels for 4 images"),
    ("label_range", "fine labels outside 0..99"),
    ("float_data", "'data' is float32 (4, 3072), expected uint8 (N, 3072)"),
    ("list_data", "'data' is a list, expected a uint8 numpy array"),
    ("no_images", "holds no images"),
    ("top_list", "holds a list, not a dict"),
    ("truncated", "truncated or not a CIFAR-100 python file"),
    ("garbage", "truncated or not a CIFAR-100 python file"),
    ("empty", "truncated or not a CIFAR-100 python file"),
])
def test_bad_cifar_content_is_one_line(tmp_path, damage, expected):
    folder = write_fake_cifar100(tmp_path, n_train=100, n_test=100)
    path = folder / "train"
    data = np.zeros((4, 3072), np.uint8)
    entries = {
        "string_labels": {"data": data, "fine_labels": ["3", "1", "2", "0"]},
        "float_labels": {"data": data, "fine_labels": [1.5, 1.0, 2.0, 0.0]},
        "bool_labels": {"data": data, "fine_labels": [True, False, True, False]},
        "nested_labels": {"data": data, "fine_labels": [[0], [1], [2], [3]]},
        "label_count": {"data": data, "fine_labels": [0, 1, 2]},
        "label_range": {"data": data, "fine_labels": [0, 1, 2, 300]},
        "float_data": {"data": data.astype(np.float32), "fine_labels": [0, 1, 2, 3]},
        "list_data": {"data": data.tolist(), "fine_labels": [0, 1, 2, 3]},
        "no_images": {"data": data[:0], "fine_labels": []},
        "top_list": [data, [0, 1, 2, 3]],
    }
    if damage in entries:
        path.write_bytes(py2_pickle_bytes(entries[damage]))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "garbage":
        path.write_bytes(b"<html><body>503 Service Unavailable</body></html>")
    else:
        path.write_bytes(b"")
    with pytest.raises(UserError) as err:
        cifar100.read_cifar100_file(path)
    text = one_line(err)
    assert str(path) in text and expected in text, text
    if damage == "string_labels":
        assert "fine labels for" not in text


def test_bad_meta_is_one_line(tmp_path):
    folder = write_fake_cifar100(tmp_path, n_train=100, n_test=100)
    (folder / "meta").write_bytes(py2_pickle_bytes({"fine_label_names": [1, 2],
                                                    "coarse_label_names": ["a"] * 20}))
    with pytest.raises(UserError, match="'fine_label_names' is not a list of names") as err:
        cifar100.read_cifar100_meta(tmp_path)
    assert str(folder / "meta") in one_line(err)


# ----------------------------------------------------------------------------- checkpoint files

def small_model():
    torch.manual_seed(0)
    return model_dict["resnet8"](num_classes=10)


def load_error(path) -> str:
    with pytest.raises(UserError) as err:
        C.load_checkpoint(str(path))
    text = one_line(err)
    assert str(path) in text, text
    return text


def test_directory_empty_text_and_lfs_files(tmp_path):
    folder = tmp_path / "resnet8_vanilla.pth"
    folder.mkdir()
    assert "is a directory" in load_error(folder) and "not found" not in load_error(folder)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "is empty" in load_error(empty)
    readme = tmp_path / "README.pth"
    readme.write_text("# KDrefine\n\nA re-implementation of KDrefine...\n")
    text = load_error(readme)
    assert "text file" in text and "not a PyTorch checkpoint" in text and "'# KDrefine'" in text
    assert "run code" not in text
    lfs = tmp_path / "lfs.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n")
    assert "Git LFS pointer" in load_error(lfs)


def test_list_and_tensor_files_are_not_checkpoints(tmp_path, capsys):
    teacher = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir()
    torch.save([torch.ones(2), torch.zeros(3)], teacher)
    assert "holds a list, not a state dict or a checkpoint dict" in load_error(teacher)
    # the caller stops there: it does not go on to take 'resnet8' from the folder name
    with pytest.raises(UserError, match="holds a list") as err:
        read_teacher(str(teacher), "cifar100", "./data")
    assert "architecture" not in str(err.value)
    torch.save(torch.ones(3), teacher)
    assert "holds a Tensor" in load_error(teacher)
    with pytest.raises(UserError, match="holds a list"):
        C.extract_state_dict([1, 2], "x.pth")


def test_plain_pickles_are_named_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    assert "plain Python pickle of a list" in load_error(path)
    path.write_bytes(pickle.dumps({"fc.weight": [1.0]}, protocol=2))
    assert "plain Python pickle of a dict" in load_error(path)
    for protocol in (2, 5):
        path.write_bytes(pickle.dumps({"model": RunsShell(marker)}, protocol=protocol))
        text = load_error(path)
        assert "refused to load" in text and "posix.system" in text
    assert not marker.exists()


def test_torch_file_with_code_names_the_refused_global(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "x": RunsShell(marker)}, path)
    text = load_error(path)
    assert "refused to load" in text and "posix.system" in text and not marker.exists()
    torch.save({"model": {"w": torch.ones(1)}, "x": subprocess.Popen}, path)
    assert "subprocess.Popen" in load_error(path)


def test_truncated_and_corrupted_files(tmp_path):
    source = tmp_path / "good.pth"
    C.save_checkpoint({"model": small_model().state_dict(), "epoch": 3}, str(source))
    data = source.read_bytes()
    path = tmp_path / "bad.pth"
    for cut in (10, 200, len(data) // 3, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        assert "corrupt or truncated" in load_error(path), cut
    pkl = data.index(b"data.pkl") + 60  # inside the pickle of the zip's first entry
    broken = bytearray(data)
    broken[pkl:pkl + 40] = os.urandom(40)
    path.write_bytes(bytes(broken))
    with pytest.raises(UserError) as err:
        C.load_checkpoint(str(path))
    assert str(path) in one_line(err)
    path.write_bytes(bytes(range(256)) * 4)
    assert "not a PyTorch checkpoint (unknown format" in load_error(path)


def flip_byte_inside(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(tensor.numpy().tobytes())
    data[at + tensor.numel() * tensor.element_size() // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_digest_of_written_checkpoints(tmp_path):
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
             "opt": argparse.Namespace(model_s="resnet8"), "rng_state": C.rng_state(),
             "extra": [torch.ones(2, 3).t(), torch.tensor(1.5, dtype=torch.bfloat16),
                       torch.zeros(0), torch.tensor([True, False])]}
    path = tmp_path / "resnet8_last.pth"
    C.save_checkpoint(state, str(path))
    raw = torch.load(path, weights_only=False)
    assert raw[C.DIGEST_KEY].startswith("v2:sha256:") and len(raw[C.DIGEST_KEY]) == 10 + 64
    assert raw[C.DIGEST_KEY] == C.compute_digest(state)  # the whole content, as it was saved
    loaded = C.load_checkpoint(str(path))
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["fc.weight"], model.fc.weight)
    # neither the other entries (dropping 'epoch') nor the tensors may be edited
    edited = dict(raw)
    del edited["epoch"]
    torch.save(edited, path)
    assert "digest mismatch: the file is corrupted" in load_error(path)
    raw["model"]["fc.bias"] = raw["model"]["fc.bias"] + 1
    torch.save(raw, path)
    assert "digest mismatch: the file is corrupted" in load_error(path)


def test_flipped_byte_in_a_tensor_is_refused(tmp_path):
    weights = torch.linspace(-1, 1, 4096).reshape(64, 64)
    path = tmp_path / "ckpt.pth"
    C.save_checkpoint({"model": {"fc.weight": weights}, "epoch": 1}, str(path))
    flip_byte_inside(path, weights)
    assert "digest mismatch: the file is corrupted" in load_error(path)
    # a raw state dict (what convert.py writes) carries its digest as an attribute
    deploy = tmp_path / "deploy.pth"
    C.save_checkpoint(OrderedDict([("weight", weights), ("bias", torch.ones(64))]), str(deploy))
    loaded = torch.load(deploy, weights_only=True)
    assert list(loaded) == ["weight", "bias"] and loaded.digest.startswith("v2:sha256:")
    lin = torch.nn.Linear(64, 64)
    lin.load_state_dict(C.load_checkpoint(str(deploy)), strict=True)
    flip_byte_inside(deploy, weights)
    assert "digest mismatch" in load_error(deploy)
    # files without a digest (released checkpoints, torch.save'd state dicts) load as before
    released = tmp_path / "released.pth"
    torch.save({"model": {"fc.weight": weights}, "epoch": 240}, released)
    flip_byte_inside(released, weights)
    assert C.load_checkpoint(str(released))["epoch"] == 240


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_digest_of_channels_last_and_device_tensors_verifies(tmp_path, device):
    model = small_model().to(device=device, memory_format=torch.channels_last)
    assert not model.conv1.weight.is_contiguous()
    path = tmp_path / "cl.pth"
    C.save_checkpoint({"model": model.state_dict(), "epoch": 1}, str(path))
    loaded = C.load_checkpoint(str(path))  # on the CPU, strides as saved
    assert loaded["digest"] == C.compute_digest(loaded)
    assert torch.equal(loaded["model"]["conv1.weight"], model.conv1.weight.detach().cpu())


def test_state_dict_metadata_is_kept_and_files_load_strictly(tmp_path):
    model = small_model()
    path = tmp_path / "sd.pth"
    C.save_checkpoint(model.state_dict(), str(path))
    loaded = torch.load(path, weights_only=True)
    assert loaded._metadata == model.state_dict()._metadata
    small_model().load_state_dict(loaded, strict=True)


def test_hdf5_string_compound_and_big_endian(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "w.hdf5"
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    with h5py.File(path, "w") as f:
        f.create_dataset("fc/weight", data=weight.astype(">f4"))
        f.create_dataset("fc/bias", data=np.array([1, 2], dtype=">i8"))
        f.create_dataset("bn/num_batches_tracked", data=np.array(5, dtype=">i8"))
    state = C.extract_state_dict(C.load_checkpoint(str(path)))
    assert state["fc.weight"].dtype == torch.float32 and state["fc.weight"].tolist() == weight.tolist()
    assert state["fc.bias"].tolist() == [1, 2] and state["bn.num_batches_tracked"].shape == ()
    for name, data, what in [("names", np.array([b"cat", b"dog"]), "holds strings"),
                             ("vlen", ["cat", "dog"], "holds strings"),
                             ("pairs", np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
                              "compound dtype")]:
        bad = tmp_path / f"{name}.hdf5"
        with h5py.File(bad, "w") as f:
            f.create_dataset("fc/weight", data=weight)
            if name == "vlen":
                f.create_dataset(f"meta/{name}", data=data, dtype=h5py.string_dtype())
            else:
                f.create_dataset(f"meta/{name}", data=data)
        text = load_error(bad)
        assert f"dataset meta/{name}" in text and what in text, text
    truncated = tmp_path / "cut.hdf5"
    truncated.write_bytes(path.read_bytes()[:1000])
    assert "HDF5" in load_error(truncated) or "corrupt" in load_error(truncated)
    text_file = tmp_path / "notes.h5"
    text_file.write_text("not hdf5\n")
    assert "not a readable HDF5 weight file" in load_error(text_file)


def test_wrong_architecture_names_counts_and_recorded_arch(tmp_path):
    path = tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    C.save_checkpoint({"model": small_model().state_dict(), "config": {"model": "resnet8"}},
                      str(path))
    state = C.extract_state_dict(C.load_checkpoint(str(path)), str(path))
    with pytest.raises(UserError) as err:
        C.load_weights(model_dict["resnet14"](num_classes=10), state, str(path), "resnet14")
    text = one_line(err)
    assert str(path) in text and "does not match architecture resnet14" in text
    assert "56 tensors in the file, 92 in resnet14" in text
    assert "the file says it is for resnet8" in text and "missing keys: " in text


def test_validation_cli_one_line_for_bad_files(tmp_path, capsys):
    readme = tmp_path / "README.pth"
    readme.write_text("# not weights\n")
    flipped = tmp_path / "resnet8_best.pth"
    model = small_model()
    C.save_checkpoint({"model": model.state_dict(), "arch": "resnet8"}, str(flipped))
    flip_byte_inside(flipped, model.state_dict()["layer1.0.conv1.weight"])
    for path, expected in ((readme, "text file"), (flipped, "digest mismatch")):
        with pytest.raises(SystemExit) as err:
            validation.main(["--model", "resnet8", "--model_path", str(path), "--device", "cpu"])
        assert err.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], lines


# ----------------------------------------------------------------------------- writing

def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        C.save_checkpoint({"w": torch.ones(1)}, str(tmp_path / "a.pth"))
        C.write_json_atomic(str(tmp_path / "a.json"), {"x": 1})
    finally:
        os.umask(old)
    for name in ("a.pth", "a.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name


def test_remove_stale_temp_files(tmp_path):
    leftovers = []
    for suffix in (".pth", ".json", ".tmp"):
        fd, name = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=tmp_path)
        os.close(fd)
        leftovers.append(name)
    keep = [tmp_path / "a.pth", tmp_path / ".tmp_notes", tmp_path / ".tmp_abc.pth",
            tmp_path / "x.tmp_abcdefgh.pth"]
    for path in keep:
        path.write_bytes(b"x")
    (tmp_path / ".tmp_abcdefgh.pth").mkdir()
    assert C.remove_stale_temp_files(str(tmp_path), min_age_s=3600) == []
    assert C.remove_stale_temp_files(str(tmp_path)) == sorted(leftovers)
    assert all(p.exists() for p in keep) and (tmp_path / ".tmp_abcdefgh.pth").is_dir()
    assert C.remove_stale_temp_files(str(tmp_path / "missing")) == []


def test_leftover_of_a_killed_writer_is_removed(tmp_path):
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); from helper.checkpoint import atomic_write;"
            "atomic_write(sys.argv[2], lambda f: (f.write(b'partial'), f.flush(), os._exit(9)))")
    target = tmp_path / "run" / "resnet8_last.pth"
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(target)], timeout=120)
    assert proc.returncode == 9
    left = [p.name for p in target.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp_") and left[0].endswith(".pth")
    assert C.remove_stale_temp_files(str(target.parent)) == [str(target.parent / left[0])]
    assert list(target.parent.iterdir()) == []


class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, f, room: int) -> None:
        self._f, self.room = f, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("where", ["write", "write_json", "fsync"])
def test_full_disk_keeps_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch, where):
    path = tmp_path / ("a.json" if where == "write_json" else "a.pth")
    if where == "write_json":
        C.write_json_atomic(str(path), {"ok": 1})
    else:
        C.save_checkpoint({"x": torch.ones(2)}, str(path))
    before = path.read_bytes()
    real_fdopen = os.fdopen
    if where == "fsync":
        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(C.os, "fsync", no_space)
    else:
        monkeypatch.setattr(C.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode), 100))
    with pytest.raises(UserError) as err:
        if where == "write_json":
            C.write_json_atomic(str(path), {"big": "y" * 1000})
        else:
            C.save_checkpoint({"x": torch.zeros(1000)}, str(path))
    monkeypatch.undo()
    text = one_line(err)
    assert text.startswith(f"cannot write {path}: no space left on the device")
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]
