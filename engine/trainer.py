"""What a training run is made of, around the loop of :mod:`engine.fit`: the optimizer, the
model's placement, the :class:`Run` (modules, optimizer, save folder), resuming it and
writing its checkpoints.

After each epoch ``<name>_best.pth`` is written on a new best, ``ckpt_epoch_<N>.pth`` every
``save_freq`` epochs and at the final epoch when asked, and always ``<name>_last.pth``, which is
what ``--resume`` continues from (weights, optimizer, epoch, best accuracy and RNG states).
All are written atomically.

Under torchrun (a multi-process :class:`~helper.distributed.DistContext`) rank 0 alone writes
checkpoints and TensorBoard scalars. The state dicts saved are those of the unwrapped
modules, so checkpoints do not depend on the number of processes and ``--resume`` may change it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

from engine.config import OptimConfig, TrainingConfig, config_dict
from helper.checkpoint import describe_mismatch, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from helper.distributed import DistContext
from helper.errors import UserError
from helper.logging_utils import add_config_text
from models import set_fused


def make_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay, as the CRD code: the fused kernel for CUDA
    parameters, the multi-tensor (foreach) one elsewhere (``optim``: an
    :class:`engine.config.OptimConfig`, or anything with its three fields)."""
    params = list(params)
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
        return os.path.join(self.save_folder, f"{self.name}_last.pth")

    @property
    def best_path(self) -> str:
        return os.path.join(self.save_folder, f"{self.name}_best.pth")


@dataclass
class Progress:
    start_epoch: int = 1
    best_acc: float = 0.0


def resume(run: Run, path: str) -> Progress:
    """Restore weights, optimizer, RNG state and counters from ``path``."""
    ckpt = load_checkpoint(path)
    recorded = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if isinstance(recorded, str) and recorded != run.extra_state.get("arch", recorded):
        raise UserError(f"cannot resume from {path}: it is a {recorded} run, this one trains "
                        f"{run.extra_state['arch']}; give this run's own <name>_last.pth")
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
        if resume_flag:
            path = resume_flag if resume_flag != "auto" else member.run.last_path
            member.progress = resume(member.run, path)
        if dist.is_main:
            os.makedirs(member.run.save_folder, exist_ok=True)
            member.writer = held.enter_context(SummaryWriter(member.config.tb_folder))
            add_config_text(member.writer, config)


def report_members(members: list) -> None:
    """After the last epoch: each member's best accuracy, or that it stopped."""
    for member in members:
        if member.failure:
            print(f"{member.label}stopped: its loss became NaN/inf (last good checkpoint kept)")
        else:
            print(f"{member.label}best accuracy: {member.progress.best_acc:.2f}")
