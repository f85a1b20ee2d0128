"""The epoch loop shared by ``train_teacher.py`` and ``train_student.py``.

Each epoch: set the learning rate, train, evaluate, log (one summary line, TensorBoard scalars),
then save atomically — ``<name>_best.pth`` on a new best, ``ckpt_epoch_<N>.pth`` every
``save_freq`` epochs and at the final epoch when asked, and always ``<name>_last.pth``, which is
what ``--resume`` continues from (weights, optimizer, epoch, best accuracy and RNG states).

Under torchrun (a multi-process :class:`~helper.distributed.DistContext`) every process trains
on its shard; statistics are summed over processes, rank 0's buffers are copied to all before
evaluating (so every process evaluates, and rank 0 saves, the same model), and rank 0 alone
writes checkpoints and TensorBoard scalars. The state dicts saved are those of the unwrapped
modules, so checkpoints do not depend on the number of processes and ``--resume`` may change it.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter

from helper.checkpoint import describe_mismatch, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from helper.distributed import DistContext
from helper.errors import UserError
from helper.logging_utils import add_config_text
from engine.loops import Batch, make_grad_scaler, train_epoch, validate
from helper.util import adjust_learning_rate
from models import set_fused


def make_optimizer(params: Iterable[torch.nn.Parameter], opt) -> torch.optim.SGD:
    """SGD with momentum and weight decay, as the CRD code: the fused kernel for CUDA
    parameters, the multi-tensor (foreach) one elsewhere."""
    params = list(params)
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                           weight_decay=opt.weight_decay, **kernel)


def place_model(model: nn.Module, opt, dist: DistContext) -> nn.Module:
    """``model`` on this process's device (channels_last when ``opt.channels_last``) and, with
    ``opt.sync_bn`` in a multi-process run, with its BatchNorm layers turned into
    ``SyncBatchNorm`` (same parameters and state-dict keys; statistics over the global batch).

    Re-parameterizable blocks then train with separate branches (``set_fused(model, False)``):
    their fused training path normalises all branches in one ``F.batch_norm`` call, which would
    bypass the synchronised layers.
    """
    if getattr(opt, "sync_bn", False) and dist.enabled:
        if dist.device.type != "cuda":
            raise UserError("--sync_bn needs CUDA devices (SyncBatchNorm runs over NCCL); "
                            "leave it out for CPU runs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(set_fused(model, False))
    model = model.to(dist.device)
    if getattr(opt, "channels_last", False):
        model.to(memory_format=torch.channels_last)
    return model


def config_dict(opt) -> dict[str, Any]:
    """The run's configuration as plain values (loadable with ``weights_only=True``)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opt).items()
            if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}


@dataclass
class Run:
    """What one training run needs besides the data."""

    name: str                      # file prefix: <name>_best.pth, <name>_last.pth
    save_folder: str
    train_modules: list[nn.Module]  # put in train mode each epoch
    eval_model: nn.Module           # evaluated on the test split
    optimizer: torch.optim.Optimizer
    compute_loss: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
    state_modules: dict[str, nn.Module]  # saved and restored (e.g. 'model', 'method')
    extra_state: dict[str, Any] = field(default_factory=dict)
    save_freq: int = 0              # 0: no ckpt_epoch_<N>.pth files
    on_epoch_start: Callable[[int], None] | None = None

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


def fit(run: Run, opt, train_loader, test_loader, device: torch.device, writer=None,
        progress: Progress | None = None, desc: str = "train",
        dist: DistContext | None = None) -> dict[str, float]:
    """Train from ``progress.start_epoch`` to ``opt.epochs``; returns the last test metrics
    (over the whole test split, also when ``dist`` spreads it over processes)."""
    progress = progress or Progress()
    dist = dist or DistContext(device)
    amp = getattr(opt, "amp", False)
    scaler = make_grad_scaler(device, amp)
    last: dict[str, float] = {}
    for epoch in range(progress.start_epoch, opt.epochs + 1):
        lr = start_epoch(run, opt, train_loader, epoch)
        start = time.time()
        train = train_epoch(run.train_modules, train_loader, run.optimizer, run.compute_loss, device,
                            epoch, print_freq=opt.print_freq, amp=amp, scaler=scaler,
                            channels_last=getattr(opt, "channels_last", False), desc=desc,
                            dist=dist)
        last = end_epoch(run, opt, epoch, lr, train, time.time() - start, test_loader, progress,
                         writer, dist)
    return last


def start_epoch(run: Run, opt, train_loader, epoch: int) -> float:
    """Set the epoch's learning rate (returned) and tell the loader and the run which epoch starts."""
    lr = adjust_learning_rate(epoch, opt, run.optimizer)
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(epoch)
    if run.on_epoch_start:
        run.on_epoch_start(epoch)
    return lr


def end_epoch(run: Run, opt, epoch: int, lr: float, train: dict[str, float], seconds: float,
              test_loader, progress: Progress, writer, dist: DistContext, label: str = "") -> dict[str, float]:
    """After training epoch ``epoch``: evaluate, print the summary line (prefixed by ``label``),
    log TensorBoard scalars (``train_loss``, ``train_acc``, ``train_loss_<term>`` for each named
    loss term of ``train``, ``test_loss``, ``test_acc``, ``test_acc_top5``, ``lr``), save the
    checkpoints; returns the test metrics."""
    dist.broadcast_buffers(*run.state_modules.values())
    test = validate(run.eval_model, test_loader, dist.device, amp=getattr(opt, "amp", False),
                    channels_last=getattr(opt, "channels_last", False), dist=dist)
    is_best = test["acc"] > progress.best_acc or not os.path.exists(run.best_path)
    progress.best_acc = max(progress.best_acc, test["acc"])
    print(f"{label}epoch {epoch:3d}/{opt.epochs} lr {lr:.4g} | train loss {train['loss']:.4f} "
          f"acc {train['acc']:.2f} | test loss {test['loss']:.4f} acc {test['acc']:.2f} "
          f"top5 {test['acc_top5']:.2f} | best {progress.best_acc:.2f} | {seconds:.1f}s", flush=True)
    if writer is not None:
        terms = [(f"train_{key}", value) for key, value in train.items() if key.startswith("loss_")]
        for key, value in (("train_loss", train["loss"]), ("train_acc", train["acc"]), *terms,
                           ("test_loss", test["loss"]), ("test_acc", test["acc"]),
                           ("test_acc_top5", test["acc_top5"]), ("lr", lr)):
            writer.add_scalar(key, value, epoch)
        writer.flush()
    if dist.is_main:
        save_epoch(run, opt, epoch, test["acc"], progress.best_acc, is_best)
    return {"test_acc": test["acc"], "test_acc_top5": test["acc_top5"], "test_loss": test["loss"],
            "epoch": epoch}


def save_epoch(run: Run, opt, epoch: int, accuracy: float, best_acc: float, is_best: bool) -> None:
    """Write the epoch's checkpoints: best, periodic and last (see the module doc)."""
    state = {key: module.state_dict() for key, module in run.state_modules.items()}
    state.update(run.extra_state, epoch=epoch, accuracy=accuracy, best_acc=best_acc,
                 config=config_dict(opt), optimizer=run.optimizer.state_dict())
    if is_best:
        save_checkpoint(state, run.best_path)
    if run.save_freq and (epoch % run.save_freq == 0 or epoch == opt.epochs):
        save_checkpoint(state, os.path.join(run.save_folder, f"ckpt_epoch_{epoch}.pth"))
    save_checkpoint({**state, "rng_state": rng_state()}, run.last_path)


def train_run(run: Run, opt, train_loader, test_loader, dist, headline: str,
              desc: str = "train", config: dict | None = None) -> tuple[dict[str, float], Progress]:
    """What both entry scripts do once their run is built and its folder held
    (:func:`helper.run_folder.claimed`): resume if ``--resume``, open the TensorBoard writer
    (rank 0), print ``headline``, :func:`fit`, print the best accuracy; ``config`` (the
    resolved configuration) is written to TensorBoard as the ``config`` text. (The entry script
    tees what is printed into ``train.log``: :func:`helper.logging_utils.tee_to`.)"""
    progress = Progress()
    if opt.resume:
        progress = resume(run, run.last_path if opt.resume == "auto" else opt.resume)
    with SummaryWriter(opt.tb_folder) if dist.is_main else contextlib.nullcontext() as writer:
        add_config_text(writer, config)
        processes = f" x {dist.world_size} processes" if dist.enabled else ""
        print(f"{headline} on {dist.device}{processes}; saving to {opt.save_folder}")
        last = fit(run, opt, train_loader, test_loader, dist.device, writer, progress, desc=desc, dist=dist)
        if not last:  # resumed after its final epoch was saved: evaluate what was saved
            last = evaluate_saved(run, opt, test_loader, dist, progress.start_epoch - 1)
        print(f"best accuracy: {progress.best_acc:.2f}")
    return last, progress


def evaluate_saved(run: Run, opt, test_loader, dist: DistContext, epoch: int) -> dict[str, float]:
    """The test metrics of the model as it stands after ``epoch`` (a run resumed with no epoch
    left to train still reports, so that its metrics file is written)."""
    test = validate(run.eval_model, test_loader, dist.device, amp=getattr(opt, "amp", False),
                    channels_last=getattr(opt, "channels_last", False), dist=dist)
    print(f"nothing left to train: epoch {epoch} of {opt.epochs} is saved; its test accuracy "
          f"{test['acc']:.2f}")
    return {"test_acc": test["acc"], "test_acc_top5": test["acc_top5"], "test_loss": test["loss"],
            "epoch": epoch}
