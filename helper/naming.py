"""Run-folder names of the CRD/RepDistiller/KDrefine save tree, made and parsed in one place.

A student run is saved in ``save/student_model/<name>`` with (KDrefine's ``train_student.py``)::

    S_<model_s>_T_<model_t>_<dataset>_<distill>_r_<gamma>_a_<alpha>_b_<beta>_<trial>

where ``gamma``/``alpha``/``beta`` are the ``-r``/``-a``/``-b`` loss weights printed as Python
prints floats (``-b 0`` gives ``0.0``). A student trained with a block type other than the
default AMBB adds it after the method, ``..._<distill>_t_<blocktype>_r_...``, a run with
``--logit_stand`` adds ``_ls`` (``..._dkd_ls_r_...``) and one with ``--dot`` (the
distillation-oriented trainer) ``_dot`` after it (``..._kd_dot_r_...``, ``..._kd_ls_dot_r_...``),
so that runs differing in block type, logit standardization or trainer never share a folder
(default runs keep the original name).

A teacher checkpoint lives in a folder whose name starts
with the teacher's architecture (``resnet56_vanilla``, ``wrn_40_2_cifar100_lr_0.05_...``).

Model names contain underscores (``wrn_40_2``), so names are parsed against the known model
names (longest match first); when none matches, the structural rules of the original code are
used (see each function).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from helper.errors import UserError

STUDENT_SAVE_ROOT = os.path.join("save", "student_model")
METRICS_FILE = "test_last_metrics.json"
DEFAULT_BLOCKTYPE = "AMBB"
_BLOCKTYPE_TAIL = re.compile(r"_t_(?P<blocktype>[A-Za-z0-9]+)$")
LOGIT_STAND_TAG = "_ls"
DOT_TAG = "_dot"
_WEIGHTS_AND_TRIAL = re.compile(
    r"_r_(?P<gamma>[^_]+)_a_(?P<alpha>[^_]+)_b_(?P<beta>[^_]+)_(?P<trial>[^_]+)$")


def _longest_prefix(text: str, known: Iterable[str], sep: str) -> str | None:
    """Longest ``name`` in ``known`` with ``text == name`` or ``text`` starting ``name + sep``."""
    for name in sorted(known, key=len, reverse=True):
        if text == name or text.startswith(name + sep):
            return name
    return None


def teacher_arch_from_path(path: str, known: Iterable[str] = ()) -> str:
    """Teacher architecture from the name of the folder holding the checkpoint ``path``.

    ``save/models/resnet56_vanilla/ckpt_epoch_240.pth`` -> ``resnet56``;
    ``.../wrn_40_2_cifar100_lr_0.05_decay_0.0005_trial_0/...`` -> ``wrn_40_2``. The longest known
    name that the folder name starts with wins; with none, RepDistiller's rule applies (the first
    ``_``-separated word, or the first three for ``wrn``).
    """
    folder = os.path.basename(os.path.dirname(os.path.normpath(path)))
    match = _longest_prefix(folder, known, "_")
    if match is not None:
        return match
    words = folder.split("_")
    if not folder or not words[0]:
        raise UserError(f"cannot tell the teacher architecture from {path}; put the checkpoint "
                        "in a folder named <arch>_... (e.g. resnet56_vanilla)")
    return "_".join(words[:3]) if words[0] == "wrn" else words[0]


def teacher_arch(path: str, known: Iterable[str] = ()) -> str:
    """Teacher architecture: the checkpoint's ``'arch'`` entry, else from its folder name.

    The checkpoint is read with ``weights_only=True``; an unreadable or absent file falls back
    to :func:`teacher_arch_from_path`.
    """
    if os.path.isfile(path):
        import torch  # here, so that the scripts using only the names start fast

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # old pickle format, non-tensor objects, ... -> use the folder name
            ckpt = None
        if isinstance(ckpt, dict) and isinstance(ckpt.get("arch"), str):
            return ckpt["arch"]
    return teacher_arch_from_path(path, known)


def format_weight(value: float | str) -> str:
    """A loss weight as argparse's ``type=float`` then ``str.format`` prints it (0 -> '0.0')."""
    return str(float(value))


#: The settings a student run's folder name is made of (:func:`student_run_name`).
RUN_NAME_KEYS = ("model_s", "model_t", "dataset", "distill", "gamma", "alpha", "beta", "trial",
                 "blocktype", "logit_stand", "dot")


def student_run_name(*, model_s: str, model_t: str, dataset: str, distill: str,
                     gamma: float | str, alpha: float | str, beta: float | str, trial: str,
                     blocktype: str = DEFAULT_BLOCKTYPE, logit_stand: bool = False, dot: bool = False) -> str:
    """Folder name of a student run (see the module docstring): the default block type (AMBB),
    no logit standardization and no DOT keep the original format."""
    method = distill + (LOGIT_STAND_TAG if logit_stand else "") + (DOT_TAG if dot else "")
    if blocktype != DEFAULT_BLOCKTYPE:
        method += f"_t_{blocktype}"
    return "S_{}_T_{}_{}_{}_r_{}_a_{}_b_{}_{}".format(
        model_s, model_t, dataset, method, format_weight(gamma), format_weight(alpha),
        format_weight(beta), trial)


def run_name_of(settings: Any) -> str:
    """:func:`student_run_name` of a mapping or an object holding :data:`RUN_NAME_KEYS`
    (``blocktype``, ``logit_stand`` and ``dot`` may be absent: AMBB, off, off)."""
    values = settings if isinstance(settings, dict) else vars(settings)
    return student_run_name(**{key: values[key] for key in RUN_NAME_KEYS if key in values})


def parse_student_run_name(name: str, known_models: Iterable[str] = ()) -> dict[str, Any]:
    """Inverse of :func:`student_run_name`.

    Returns ``{'model_s', 'model_t', 'dataset', 'distill', 'blocktype', 'gamma', 'alpha',
    'beta', 'trial'}`` with float weights, the trial as a string and the block type AMBB when
    the name carries none; a name with the ``_ls`` tag adds ``'logit_stand': True``, one with
    the ``_dot`` tag ``'dot': True``. Student
    and teacher are matched against
    ``known_models`` (longest first); without a match, the student ends at the first ``_T_``
    and the dataset and method are the last two ``_``-separated words before ``_r_``.
    Raises :class:`UserError` for a name not of that form.
    """
    bad = UserError(f"{name!r} is not a student run name "
                    "S_<student>_T_<teacher>_<dataset>_<method>_r_<r>_a_<a>_b_<b>_<trial>")
    tail = _WEIGHTS_AND_TRIAL.search(name)
    if not name.startswith("S_") or tail is None:
        raise bad
    try:
        weights = {k: float(tail.group(k)) for k in ("gamma", "alpha", "beta")}
    except ValueError:
        raise bad from None
    head = name[2:tail.start()]  # <student>_T_<teacher>_<dataset>_<method>[_t_<blocktype>]
    blocktype = DEFAULT_BLOCKTYPE
    block_tail = _BLOCKTYPE_TAIL.search(head)
    if block_tail is not None:
        blocktype, head = block_tail.group("blocktype"), head[:block_tail.start()]
    dot = head.endswith(DOT_TAG)
    head = head.removesuffix(DOT_TAG)
    logit_stand = head.endswith(LOGIT_STAND_TAG)
    head = head.removesuffix(LOGIT_STAND_TAG)
    known = list(known_models)

    model_s = _longest_prefix(head, known, "_T_") or head.split("_T_", 1)[0]
    if not model_s or not head.startswith(model_s + "_T_"):
        raise bad
    rest = head[len(model_s) + 3:]
    model_t = _longest_prefix(rest, known, "_")
    if model_t is not None:  # <dataset>_<method>; a method name may hold underscores
        parts = [model_t, *rest[len(model_t) + 1:].split("_", 1)]
    else:  # <teacher>_<dataset>_<method>, neither of the last two holding underscores
        parts = rest.rsplit("_", 2)
    if len(parts) != 3 or not all(parts):
        raise bad
    model_t, dataset, distill = parts
    parsed = {"model_s": model_s, "model_t": model_t, "dataset": dataset, "distill": distill,
              "blocktype": blocktype, **weights, "trial": tail.group("trial")}
    return {**parsed, **({"logit_stand": True} if logit_stand else {}), **({"dot": True} if dot else {})}
