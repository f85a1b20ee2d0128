"""Reading and writing checkpoints safely.

* Every load goes through ``torch.load(weights_only=True)``: a file whose pickle would run code
  is refused, never run. The ``argparse.Namespace`` that KDrefine's train-form files carry under
  ``'opt'`` is the one class allow-listed.
* Every save is atomic: written to a temporary file in the same folder, flushed to disk, then
  renamed over the target, so a crash or a failed run leaves the last good checkpoint intact.
* Problems a user can fix (missing, truncated, unsafe or mismatched files) raise
  :class:`~helper.errors.UserError` with one line naming the file and what differs.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from typing import IO, Any, Callable, Mapping

import torch

from helper.errors import UserError

#: Classes besides tensors and containers that may appear in a checkpoint's pickle.
SAFE_GLOBALS = [argparse.Namespace]


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, flush it to disk, then rename
    it over ``path``; on any failure the temporary file is removed and ``path`` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] or ".tmp"
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def save_checkpoint(state: Mapping[str, Any], path: str) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    atomic_write(path, lambda f: torch.save(dict(state), f))


def write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically, like :func:`save_checkpoint`."""
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=2).encode()))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pth``/``.pt`` file with ``weights_only=True`` or an ``.hdf5`` weight file.

    Raises :class:`UserError` for a missing, truncated or unsafe file.
    """
    if not path:
        raise UserError("no checkpoint file given")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    if path.endswith((".hdf5", ".h5")):
        return _load_hdf5(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(
                f"refused to load {path}: its pickle would run code or build objects that are not "
                f"weights ({_unsafe_global_name(str(err))}); only tensors and plain containers "
                f"are accepted") from None
        raise UserError(f"{path} is not a readable checkpoint (corrupt or truncated: {first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable checkpoint (corrupt or truncated: {first})") from None


def _unsafe_global_name(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line:
            return line.strip().split("Unsupported global:")[-1].strip().rstrip(".") or "unknown class"
    return "unsupported content"


def _load_hdf5(path: str) -> "OrderedDict[str, torch.Tensor]":
    import h5py

    try:
        state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    state[name.replace("/", ".")] = torch.from_numpy(obj[()]).clone() if obj.shape \
                        else torch.tensor(obj[()])
            f.visititems(visit)
        return state
    except OSError as err:
        raise UserError(f"{path} is not a readable HDF5 weight file ({err})") from None


def extract_state_dict(checkpoint: Any, path: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """The model weights of a checkpoint: its ``'model'`` or ``'state_dict'`` entry, or the raw
    state dict itself; a ``'module.'`` prefix (DataParallel/DDP) is stripped."""
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            if key in checkpoint and isinstance(checkpoint[key], Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()) or not checkpoint:
        raise UserError(f"{path} holds no model weights (expected a state dict, or a dict with "
                        f"a 'model' or 'state_dict' entry)")
    state = OrderedDict()
    for key, value in checkpoint.items():
        state[key[len("module."):] if key.startswith("module.") else key] = value
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
    """Load ``state`` into ``model`` strictly, or raise one line naming the file and the difference."""
    problem = describe_mismatch(model, state)
    if problem:
        raise UserError(f"{path} does not match architecture {arch}: {problem}{hint}")
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
    import random

    import numpy as np

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
    import random

    import numpy as np

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
