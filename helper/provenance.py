"""What a run's ``test_last_metrics.json`` says about how it was made, and whether two runs
were made the same way.

``train_student.py`` writes, besides the metrics, ``planned_epochs``, ``reached_epoch``,
``config`` (the flat ``--print_config`` dict of the run), ``teacher`` (``path``, ``sha256``,
``test_acc``), ``versions`` and ``wall_time_s``. Files of the original code (and of older
versions of this one) hold only the metrics; they have *no provenance*.

Used by ``scripts/summarize.py`` (which runs may be pooled into one table cell) and
``scripts/run_trials.py`` (whether a trial folder holds the run a command would make).
Imports nothing of the project but :mod:`helper.errors` / :mod:`helper.naming`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

from helper.files import NotRegularFile, open_regular

# Options that do not change a run's results: where it logs, runs or saves, how it was started
# (resume/overwrite/print_config, several trials in one process and how they step) and the
# teacher's *path*: the teacher is identified by the sha256 of its file (TEACHER_KEY) instead,
# so that the same checkpoint under another path still counts as the same teacher.
BOOKKEEPING_KEYS = frozenset({
    "print_freq", "device", "num_workers", "resume", "overwrite", "print_config", "trials",
    "trials_mode", "data_folder", "save_folder", "path_t",
})
# Settings that differ between the trials of one table cell, by design.
TRIAL_KEYS = frozenset({"trial", "seed"})
# Key under which the teacher file's sha256 joins a run's settings.
TEACHER_KEY = "teacher.sha256"
# Metrics that are percentages: a value outside [0, 100] is not a real result.
PERCENT_METRICS = frozenset({"test_acc", "test_acc_top5"})


class _Absent:
    """Stands for a setting one of two configurations does not record."""

    def __repr__(self) -> str:
        return "(not recorded)"


ABSENT = _Absent()


#: The largest metrics file read: this project writes a few kB, so anything bigger is not one.
MAX_METRICS_BYTES = 1 << 20
#: The deepest JSON nesting read from a metrics file: this project writes 3 levels
#: (``config`` -> ``lr_decay_epochs`` -> a number); deeper files are refused before anything
#: walks them, so no reader of a metrics file can hit Python's recursion limit.
MAX_METRICS_DEPTH = 16


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of ``path``, read only when it is a regular file of at most ``limit`` bytes.

    A FIFO, device, socket or directory is refused (``ValueError`` saying what it is) without
    being opened, so nothing blocks; the file is opened with ``O_NONBLOCK`` and checked again
    on its descriptor, against a file swapped in between. ``OSError`` when it cannot be read.
    """
    try:
        with open_regular(path) as f:
            data = f.read(limit + 1)
    except NotRegularFile as err:
        raise ValueError(f"not a regular file (a {err.kind}); only regular files are read") from None
    size = len(data)
    if size > limit:
        raise ValueError(f"larger than {limit} bytes, which no metrics file is")
    return data


def json_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects, counted without recursion
    and at most up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_metrics(data: bytes) -> dict[str, Any]:
    """The JSON object in the bytes of a metrics file; ``ValueError`` (its message says why)
    when they are not UTF-8 JSON, nest deeper than :data:`MAX_METRICS_DEPTH` or hold no
    object. ``NaN``/``Infinity`` literals are read as floats."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"not valid JSON ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") \
            from None
    except RecursionError:
        raise ValueError(f"JSON nested deeper than Python can read (a metrics file nests at "
                         f"most {MAX_METRICS_DEPTH} levels)") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"not valid JSON ({str(err).splitlines()[0]})") from None
    if json_depth(parsed, MAX_METRICS_DEPTH) > MAX_METRICS_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_METRICS_DEPTH} levels, which no "
                         "metrics file is")
    if not isinstance(parsed, dict):
        raise ValueError(f"not a JSON object (a {type(parsed).__name__})")
    return parsed


def load_metrics(path: str) -> dict[str, Any]:
    """The JSON object of a metrics file (:func:`read_regular_file`, :func:`parse_metrics`):
    ``ValueError`` saying why for a FIFO, device or directory, a file over
    :data:`MAX_METRICS_BYTES`, invalid or too deeply nested JSON, or JSON that is no object;
    ``OSError`` when it cannot be read."""
    return parse_metrics(read_regular_file(path, MAX_METRICS_BYTES))


def metric_value(metrics: Mapping[str, Any], key: str) -> float:
    """``metrics[key]`` as a float; ``ValueError`` saying why when it is missing, not a number
    (booleans are not numbers here), not finite or, for an accuracy, outside [0, 100]."""
    if key not in metrics:
        raise ValueError(f"no {key}")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} is {json.dumps(value)}, not a number")
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{key} is not a finite number (too large)") from None
    if not math.isfinite(value):
        raise ValueError(f"{key} is {value}, not a finite number")
    if key in PERCENT_METRICS and not 0.0 <= value <= 100.0:
        raise ValueError(f"{key} is {value!r}, outside [0, 100]")
    if key not in PERCENT_METRICS and key.endswith("loss") and value < 0:
        raise ValueError(f"{key} is {value!r}, a negative loss")
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def run_config(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's recorded configuration, or None for a file without provenance."""
    config = metrics.get("config")
    return dict(config) if isinstance(config, dict) else None


def teacher_sha256(metrics: Mapping[str, Any]) -> str | None:
    """The recorded sha256 of the teacher file, or None."""
    teacher = metrics.get("teacher")
    sha = teacher.get("sha256") if isinstance(teacher, dict) else None
    return sha if isinstance(sha, str) and sha else None


def epochs(metrics: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(reached, planned) epochs of a run: ``reached_epoch``/``planned_epochs``, else
    ``epoch`` and the recorded config's ``epochs``; None where unknown."""
    config = run_config(metrics) or {}
    reached = _int(metrics.get("reached_epoch"))
    if reached is None:
        reached = _int(metrics.get("epoch"))
    planned = _int(metrics.get("planned_epochs"))
    if planned is None:
        planned = _int(config.get("epochs"))
    return reached, planned


def is_finished(metrics: Mapping[str, Any]) -> bool | None:
    """Whether the run reached its planned epochs; None when the file cannot tell."""
    reached, planned = epochs(metrics)
    if reached is None or planned is None:
        return None
    return reached >= planned


def result_settings(config: Mapping[str, Any], teacher_sha: str | None = None,
                    ignore: Iterable[str] = ()) -> dict[str, Any]:
    """The settings of ``config`` that can change a run's results: every key but
    :data:`BOOKKEEPING_KEYS` and ``ignore``, plus :data:`TEACHER_KEY` when ``teacher_sha``
    is given."""
    skip = BOOKKEEPING_KEYS | set(ignore)
    settings = {k: v for k, v in config.items() if k not in skip}
    if teacher_sha is not None:
        settings[TEACHER_KEY] = teacher_sha
    return settings


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 2 == 2.0 and [1, 2] == (1, 2), but True != 1 and "1" != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any],
                       ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """The result-relevant settings in which configurations ``a`` and ``b`` differ, as
    ``{key: (value in a, value in b)}`` in key order; :data:`BOOKKEEPING_KEYS` and ``ignore``
    do not count, a key only one of them records counts (its other value is :data:`ABSENT`).
    Put the teachers' hashes in with :func:`result_settings` to compare teachers."""
    skip = BOOKKEEPING_KEYS | set(ignore)
    out = {}
    for key in sorted((set(a) | set(b)) - skip, key=setting_order):
        va, vb = a.get(key, ABSENT), b.get(key, ABSENT)
        if va is ABSENT or vb is ABSENT:
            if va is not vb:
                out[key] = (va, vb)
        elif not _same(va, vb):
            out[key] = (va, vb)
    return out


# Settings shown first when listing differences; the others follow alphabetically.
_FIRST = ("epochs", "learning_rate", "lr_decay_epochs", "lr_decay_rate", "weight_decay",
          "momentum", "batch_size", TEACHER_KEY, "kd_T")


def setting_order(key: str) -> tuple[int, str]:
    """Sort key of settings: the common training settings first, then alphabetical."""
    return (_FIRST.index(key) if key in _FIRST else len(_FIRST), key)


def format_value(key: str, value: Any) -> str:
    """A setting's value as a label shows it: lists as ``150,180,210``, hashes shortened."""
    if value is ABSENT:
        return "(not recorded)"
    if key == TEACHER_KEY and isinstance(value, str):
        return value[:6]
    if isinstance(value, (list, tuple)):
        return ",".join(format_value("", v) for v in value)
    if value is None:
        return "none"
    return str(value)


def format_setting(key: str, value: Any) -> str:
    """``epochs=2``; the teacher as ``teacher sha 1a2b3c``."""
    if key == TEACHER_KEY:
        return f"teacher sha {format_value(key, value)}"
    return f"{key}={format_value(key, value)}"


def describe_differences(diffs: Mapping[str, tuple[Any, Any]], where_a: str = "in the folder",
                         where_b: str = "in the command") -> str:
    """``epochs: 2 in the folder, 240 in the command; kd_T: ...`` for :func:`config_differences`."""
    def show(key: str, value: Any) -> str:
        if key == TEACHER_KEY and isinstance(value, str):
            return f"sha256 {value[:12]}"
        return format_value(key, value)

    name = {TEACHER_KEY: "teacher"}
    return "; ".join(f"{name.get(k, k)}: {show(k, va)} {where_a}, {show(k, vb)} {where_b}"
                     for k, (va, vb) in diffs.items())


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def project_version() -> str:
    """The project's git commit (with ``-dirty`` when the tree has changes), or ``unknown``
    outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "") if commit else "unknown"
