"""What a training run is made of, around the loop of :mod:`engine.fit`: the optimizer, the
model's placement, the :class:`Run` (modules, optimizer, save folder), resuming it and
writing its checkpoints.

After each epoch ``<name>_best.pth`` is written on a new best, ``ckpt_epoch_<N>.pth`` every
``save_freq`` epochs and at the final epoch when asked, and always ``<name>_last.pth``, which is
what ``--resume`` continues from (weights, optimizer, epoch, best accuracy and RNG states).
All are written atomically.

A resume continues exactly one run: the checkpoint's recorded configuration (its ``config``
entry) is compared with the command's before anything is restored
(:func:`check_continuation`), and every difference in what the run computes
(:func:`result_keys`) stops it with one line naming each. ``--epochs`` given explicitly may
move the planned end (not before the epoch reached); the change is kept with the run
(``epochs_changed``, in its checkpoints and metrics).

Under torchrun (a multi-process :class:`~helper.distributed.DistContext`) rank 0 alone writes
checkpoints and TensorBoard scalars. The state dicts saved are those of the unwrapped
modules, so checkpoints do not depend on the number of processes and ``--resume`` may change it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

from distiller_zoo.methods import Params, unread_flags
from engine.config import MethodConfig, OptimConfig, RunConfig, StudentOptim, TrainingConfig, config_dict
from engine.dot import DistillationOrientedSGD
from engine.options import counted
from helper.checkpoint import (check_fields, describe_mismatch, load_checkpoint, rng_state, save_checkpoint,
                               set_rng_state)
from helper.distributed import DistContext
from helper.errors import UserError
from helper.logging_utils import add_config_text
from helper.provenance import config_differences, describe_differences
from models import set_fused


def make_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, as the CRD code: the fused kernel for CUDA
    parameters, the multi-tensor (foreach) one elsewhere (``optim``: an
    :class:`engine.config.OptimConfig`, or anything with its three fields); a student's
    ``--dot``: DOT's SGD (:class:`engine.dot.DistillationOrientedSGD`)."""
    params = list(params)
    if isinstance(optim, StudentOptim) and optim.dot:
        return DistillationOrientedSGD(params, lr=optim.learning_rate, momentum=optim.momentum,
                                       delta=optim.dot_delta, weight_decay=optim.weight_decay)
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.SGD(params, lr=optim.learning_rate, momentum=optim.momentum,
                           weight_decay=optim.weight_decay, **kernel)


def place_model(model: nn.Module, dist: DistContext, sync_bn: bool = False,
                channels_last: bool = False) -> nn.Module:
    """``model`` on this process's device (channels_last when asked) and, with ``sync_bn`` in
    a multi-process run, with its BatchNorm layers turned into ``SyncBatchNorm`` (same
    parameters and state-dict keys; statistics over the global batch).

    Re-parameterizable blocks then train with separate branches (``set_fused(model, False)``):
    their fused training path normalises all branches in one ``F.batch_norm`` call, which would
    bypass the synchronised layers.
    """
    if sync_bn and dist.enabled:
        if dist.device.type != "cuda":
            raise UserError("--sync_bn needs CUDA devices (SyncBatchNorm runs over NCCL); "
                            "leave it out for CPU runs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(set_fused(model, False))
    model = model.to(dist.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def last_path_of(save_folder: str, name: str) -> str:
    """``<save_folder>/<name>_last.pth``: what ``--resume`` alone continues from."""
    return os.path.join(save_folder, f"{name}_last.pth")


@dataclass
class Run:
    """What one training run needs besides the data."""

    name: str                      # file prefix: <name>_best.pth, <name>_last.pth
    save_folder: str
    train_modules: list[nn.Module]  # put in train mode each epoch
    eval_model: nn.Module           # evaluated on the test split
    optimizer: torch.optim.Optimizer
    state_modules: dict[str, nn.Module]  # saved and restored (e.g. 'model', 'method')
    extra_state: dict[str, Any] = field(default_factory=dict)
    save_freq: int = 0              # 0: no ckpt_epoch_<N>.pth files

    @property
    def last_path(self) -> str:
        return last_path_of(self.save_folder, self.name)

    @property
    def best_path(self) -> str:
        return os.path.join(self.save_folder, f"{self.name}_best.pth")


@dataclass
class Progress:
    start_epoch: int = 1
    best_acc: float = 0.0


#: Fields of the model, method, optimization and data sections that do not decide what a run
#: computes: where the teacher file and the data lie (the teacher is compared by its
#: architecture, ``model_t``, and by its file's sha256, :data:`TEACHER_SHA`), how many loader
#: workers run, and what the number of processes derives (``--resume`` may change it: the rate
#: one process is given, ``base_learning_rate``, is compared, as ``learning_rate``; its multiple
#: ``learning_rate`` is not).
NOT_RESULT_FIELDS = frozenset({"path_t", "data_folder", "num_workers", "learning_rate",
                               "base_learning_rate", "world_size", "schedule_defaults"})
#: The checkpoint entry of a student run's teacher file: its sha256, compared on resume.
TEACHER_SHA = "teacher_sha256"

#: The fields of the run section (how a run is carried out: device, processes, speed switches,
#: logging, resuming) that do decide what it computes (``plugin``: the modules whose
#: registrations it used; compared where the checkpoint records it).
RUN_RESULT_FIELDS = ("trial", "seed", "plugin")


def used_params(method: MethodConfig) -> list[Params]:
    """The method parameters a run of ``method`` reads: its method's own (``--distill``'s
    ``params_class``, which also holds the flags of the sample loader a method may read, its
    ``sample_flags``)."""
    return [method.params] if method.params is not None else []


def result_keys(config: TrainingConfig) -> list[str]:
    """The flags whose values decide what ``config``'s run computes, derived from its sections:
    every field of the model, method, optimization and data sections but
    :data:`NOT_RESULT_FIELDS` and the flags the method never reads (``--init_epochs`` of a
    method without an init stage: :func:`distiller_zoo.methods.unread_flags`), of the methods'
    own parameters those the run reads (:func:`used_params`), of the run section
    :data:`RUN_RESULT_FIELDS`, and ``learning_rate`` (one process's rate). What ``--resume``
    may not change."""
    keys = ["learning_rate"]
    for section in config.sections():
        if isinstance(section, RunConfig):
            keys += RUN_RESULT_FIELDS
        elif isinstance(section, MethodConfig):
            unread = unread_flags(section.distill)
            keys += [f.name for f in fields(section) if f.name != "own" and f.name not in unread]
            keys += [f.name for params in used_params(section) for f in fields(params)]
        else:
            keys += [name for name, _ in section.items() if name not in NOT_RESULT_FIELDS]
    return list(dict.fromkeys(keys))


def result_settings(recorded: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The ``keys`` of a flat configuration (a checkpoint's ``config`` entry, or
    :func:`engine.config.config_dict`) that it records; ``learning_rate`` is one process's rate
    (``base_learning_rate`` where recorded)."""
    values = dict(recorded)
    if "base_learning_rate" in values:
        values["learning_rate"] = values["base_learning_rate"]
    return {key: values[key] for key in keys if key in values}


def check_architecture(ckpt: Mapping[str, Any], path: str, arch: str | None) -> None:
    """One line when ``ckpt`` (loaded from ``path``) records another architecture than ``arch``."""
    recorded = ckpt.get("arch")
    if isinstance(recorded, str) and arch is not None and recorded != arch:
        raise UserError(f"cannot resume from {path}: it is a {recorded} run, this one trains "
                        f"{arch}; give this run's own <name>_last.pth")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def recorded_epoch_changes(ckpt: Mapping[str, Any]) -> list[dict[str, int]]:
    """The changes of the planned epochs a checkpoint records (``epochs_changed``: a list of
    ``{"at_epoch", "from", "to"}``); entries of another form are left out."""
    changes = ckpt.get("epochs_changed")
    keys = ("at_epoch", "from", "to")
    if not isinstance(changes, list):
        return []
    return [{k: c[k] for k in keys} for c in changes
            if isinstance(c, Mapping) and all(_is_int(c.get(k)) for k in keys)]


def check_continuation(ckpt: Mapping[str, Any], path: str, config: TrainingConfig,
                       arch: str | None, teacher_sha: str | None = None) -> list[dict[str, int]]:
    """Whether this command (``config``, training ``arch``) continues the run of ``ckpt``
    (loaded from ``path``): one line naming every setting of :func:`result_keys` in which they
    differ (``learning_rate: 0.05 in the checkpoint, 0.9 in the command``). Settings the
    checkpoint does not record (added since it was written) are not differences, and a
    checkpoint without a ``config`` entry (older files) is not compared at all. A student's
    teacher is compared by its file's sha256 (``teacher_sha``, the command's; the checkpoint's
    :data:`TEACHER_SHA`), where both are known.

    ``--epochs`` given explicitly may differ, down to the epoch the checkpoint reached. Returns
    the run's changes of its planned epochs (the checkpoint's ``epochs_changed``, plus this
    one: ``{"at_epoch", "from", "to"}``)."""
    check_architecture(ckpt, path, arch)
    check_teacher(ckpt, path, teacher_sha)
    recorded = ckpt.get("config")
    history = recorded_epoch_changes(ckpt)
    if not isinstance(recorded, Mapping):
        return history
    keys = result_keys(config)
    before = result_settings(recorded, keys)
    diffs = config_differences(before, {k: v for k, v in result_settings(config_dict(config), keys).items()
                                        if k in before})
    reached, planned = ckpt.get("epoch"), config.optim.epochs
    hint = ""
    if "epochs" in diffs:
        explicit = "epochs" not in config.optim.schedule_defaults
        if explicit and _is_int(reached) and _is_int(diffs["epochs"][0]) and planned >= reached:
            history.append({"at_epoch": reached, "from": diffs.pop("epochs")[0], "to": planned})
        elif explicit:
            hint = f" (it reached epoch {reached}: --epochs may extend a run, not end it before that)"
        else:
            hint = " (give --epochs to extend the run)"
    if diffs:
        raise UserError(f"cannot resume from {path}: it belongs to a run with other settings ("
                        f"{describe_differences(diffs, 'in the checkpoint', 'in the command')}){hint}; "
                        "give the flags that run was started with, or leave out --resume to "
                        "train a new run")
    return history


def check_teacher(ckpt: Mapping[str, Any], path: str, teacher_sha: str | None) -> None:
    """One line when the checkpoint was distilled from another teacher file than the command's
    (sha256 ``teacher_sha``): the same architecture and flags with other teacher weights is
    another run. Not compared where either is unknown (a teacher run, an older checkpoint)."""
    recorded = ckpt.get(TEACHER_SHA)
    if teacher_sha is None or not isinstance(recorded, str) or recorded == teacher_sha:
        return
    raise UserError(f"cannot resume from {path}: its run was distilled from another teacher file "
                    f"(sha256 {recorded[:12]}; this command's --path_t has sha256 {teacher_sha[:12]}); "
                    "give the teacher that run was started with, or leave out --resume to train a new run")


def resume_source(flag: str | None, save_folder: str, name: str) -> str | None:
    """The checkpoint ``--resume`` (``flag``) continues from: the file it names, or the run's
    own ``<save_folder>/<name>_last.pth`` for ``--resume`` alone; None without it."""
    if not flag:
        return None
    return last_path_of(save_folder, name) if flag == "auto" else flag


def check_resume(config: TrainingConfig, name: str, teacher_sha: str | None = None) -> None:
    """Before a run claims its folder (on every process): one line when its ``--resume`` cannot
    continue it: no checkpoint to continue, or one of another run (:func:`check_continuation`;
    ``name``: the run's file prefix and architecture; ``teacher_sha``: a student's teacher file).
    :func:`resume` checks again, under the folder's lock."""
    path = resume_source(config.run.resume, config.save_folder, name)
    if path is None:
        return
    if config.run.resume == "auto" and not os.path.lexists(path):
        raise UserError(f"--resume: {config.save_folder} holds no {name}_last.pth, so there is no "
                        "run to continue; leave out --resume to start it")
    check_continuation(load_checkpoint(path), path, config, name, teacher_sha)


def resume(run: Run, path: str, config: TrainingConfig) -> Progress:
    """Restore weights, optimizer, RNG state and counters from ``path``, once it is known to
    continue this run (:func:`check_continuation`, against ``config``)."""
    ckpt = load_checkpoint(path)
    check_fields(ckpt, path)  # epoch, accuracies and RNG states of the right types and ranges
    changes = check_continuation(ckpt, path, config, run.extra_state.get("arch"),
                                 run.extra_state.get(TEACHER_SHA))
    if not isinstance(ckpt.get("config"), Mapping):
        print(f"warning: {path} records no configuration (an older file): this command's settings "
              "are taken to be the run's, unchecked")
    if changes:
        run.extra_state["epochs_changed"] = changes
    missing = [k for k in ("epoch", "optimizer", "rng_state", *run.state_modules) if k not in ckpt]
    if missing:
        raise UserError(f"cannot resume from {path}: it lacks {', '.join(missing)} "
                        f"(resume needs a <name>_last.pth written by this code)")
    for key, module in run.state_modules.items():
        problem = describe_mismatch(module, ckpt[key]) if isinstance(ckpt[key], Mapping) else "not a state dict"
        if problem:
            raise UserError(f"cannot resume from {path}: its {key!r} does not fit this run "
                            f"({problem}); give this run's own <name>_last.pth")
        module.load_state_dict(ckpt[key])
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"cannot resume from {path}: its optimizer state does not fit this run "
                        f"({str(err).splitlines()[0]})") from None
    set_rng_state(ckpt["rng_state"])
    print(f"resumed from {path} at epoch {ckpt['epoch']} (best accuracy {ckpt.get('best_acc', 0):.2f})")
    if len(changes) > len(recorded_epoch_changes(ckpt)):
        print(f"--epochs {config.optim.epochs}: the run planned {counted(changes[-1]['from'], 'epoch')}; the change "
              "is recorded in its checkpoints and metrics (epochs_changed)")
    return Progress(start_epoch=int(ckpt["epoch"]) + 1, best_acc=float(ckpt.get("best_acc", 0.0)))


def save_epoch(run: Run, config: TrainingConfig, epoch: int, accuracy: float, best_acc: float,
               is_best: bool) -> None:
    """Write the epoch's checkpoints: best, periodic and last (see the module doc), each with
    the run's whole configuration (:func:`engine.config.config_dict`) as ``config``."""
    state = {key: module.state_dict() for key, module in run.state_modules.items()}
    state.update(run.extra_state, epoch=epoch, accuracy=accuracy, best_acc=best_acc,
                 config=config_dict(config), optimizer=run.optimizer.state_dict())
    if is_best:
        save_checkpoint(state, run.best_path)
    if run.save_freq and (epoch % run.save_freq == 0 or epoch == config.optim.epochs):
        save_checkpoint(state, os.path.join(run.save_folder, f"ckpt_epoch_{epoch}.pth"))
    save_checkpoint({**state, "rng_state": rng_state()}, run.last_path)


def start_members(members: list, resume_flag: str | None, dist: DistContext,
                  configs: list[dict], held: contextlib.ExitStack) -> None:
    """Before the first epoch: resume each member (``--resume``: from ``resume_flag``, a path,
    for a single member, else from its own ``<name>_last.pth``), and on rank 0 open its
    TensorBoard writer (held open by ``held``) with its resolved configuration (``configs``)
    as the ``config`` text."""
    for member, config in zip(members, configs):
        path = resume_source(resume_flag, member.run.save_folder, member.run.name)
        if path:
            member.progress = resume(member.run, path, member.config)
        if dist.is_main:
            os.makedirs(member.run.save_folder, exist_ok=True)
            member.writer = held.enter_context(SummaryWriter(member.config.tb_folder))
            add_config_text(member.writer, config)


def report_members(members: list) -> None:
    """After the last epoch: each member's best accuracy, or that it stopped."""
    for member in members:
        if member.failure:
            print(f"{member.label}stopped: {member.failure}")  # names the checkpoint kept, if any
        else:
            print(f"{member.label}best accuracy: {member.progress.best_acc:.2f}")
