"""Safe, atomic checkpoint I/O and clear errors for bad files."""
import argparse
import os
import pickle

import pytest
import torch
import torch.nn as nn

from helper.checkpoint import (describe_mismatch, extract_state_dict, load_checkpoint, load_weights,
                               num_classes_from_state_dict, rng_state, save_checkpoint, set_rng_state)
from helper.errors import UserError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/kdrefine_pwned_marker",))


def test_atomic_save_leaves_no_temporary_and_replaces(tmp_path):
    path = tmp_path / "a.pth"
    save_checkpoint({"x": torch.ones(2)}, str(path))
    save_checkpoint({"x": torch.zeros(2)}, str(path))
    assert torch.equal(load_checkpoint(str(path))["x"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["a.pth"]


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "a.pth"
    save_checkpoint({"x": torch.ones(2)}, str(path))

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        save_checkpoint({"x": torch.zeros(2)}, str(path))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(str(path))["x"], torch.ones(2))
    assert os.listdir(tmp_path) == ["a.pth"]


def test_code_running_pickle_is_refused_not_run(tmp_path):
    marker = "/tmp/kdrefine_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "payload": Evil()}, str(path))
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(str(path))
    assert not os.path.exists(marker)


def test_argparse_namespace_is_allowed(tmp_path):
    path = tmp_path / "kdrefine_student.pth"
    torch.save({"model": {"w": torch.ones(1)}, "opt": argparse.Namespace(model_s="represnet20")}, str(path))
    ckpt = load_checkpoint(str(path))
    assert ckpt["opt"].model_s == "represnet20"


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    path = tmp_path / "t.pth"
    torch.save({"model": {"w": torch.randn(100, 100)}}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(str(path))
    path.write_bytes(pickle.dumps([1, 2]) + b"garbage")
    with pytest.raises(UserError):
        load_checkpoint(str(path))


def test_extract_state_dict_variants():
    sd = {"module.fc.weight": torch.ones(2, 3), "module.fc.bias": torch.ones(2)}
    for ckpt in (sd, {"model": sd, "epoch": 3}, {"state_dict": sd}):
        out = extract_state_dict(ckpt)
        assert list(out) == ["fc.weight", "fc.bias"]
    with pytest.raises(UserError, match="no model weights"):
        extract_state_dict({"epoch": 3})
    assert num_classes_from_state_dict(extract_state_dict(sd)) == 2


def test_mismatch_message_names_file_and_difference():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert describe_mismatch(model, state) is None
    state["1.weight"] = torch.zeros(5, 4)
    state["extra"] = torch.zeros(1)
    del state["0.bias"]
    with pytest.raises(UserError) as err:
        load_weights(model, state, "f.pth", "tiny")
    text = str(err.value)
    assert "f.pth" in text and "tiny" in text
    assert "missing keys: 0.bias" in text and "unexpected keys: extra" in text
    assert "1.weight (5, 4) vs (10, 4)" in text


def test_hdf5_weights(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "w.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("fc/weight", data=torch.ones(2, 3).numpy())
        f.create_dataset("fc/bias", data=torch.zeros(2).numpy())
    state = extract_state_dict(load_checkpoint(str(path)))
    assert set(state) == {"fc.weight", "fc.bias"} and state["fc.weight"].shape == (2, 3)


def test_rng_state_roundtrip_through_safe_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    path = tmp_path / "rng.pth"
    save_checkpoint({"rng_state": rng_state()}, str(path))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(str(path))["rng_state"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
