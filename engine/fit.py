"""The training loop: :func:`fit` → :func:`run_epoch` → :func:`engine.loops.optimize`.

One model trains here, read top to bottom: each epoch its policy starts it (learning rate,
loader epoch), :func:`run_epoch` takes one optimizer step per batch on the run's loss
(``loss(batch, epoch) -> (loss, logits)``), and the policy ends it (evaluate, log, save). A
teacher (``train_teacher.py``), a student run and the init stage of AB/FT/FSP are each one
:class:`Member` with its loss; what differs between them is said by the **epoch policy**
(:class:`EvaluateAndSave` sets the scheduled learning rate, evaluates, logs and writes
checkpoints; :class:`InitStageLog` keeps the init stage's learning rate and only logs its loss),
never by branches in the loop. ``--trials N`` extends this loop to N members stepped together
(:func:`engine.trials.fit_trials`), from the same pieces.

The epoch is an argument of every step: nothing reaches the loss through a side channel.
Losses, accuracies and named loss terms accumulate on the device and are read once every
``print_freq`` steps (the only host sync; left out, 100 steps or a quarter of an epoch, whichever
is shorter: :func:`default_print_freq`): shown in the tqdm bar on a terminal, printed as a
RepDistiller-style line otherwise. A run whose loss becomes NaN/inf stops (its last good
checkpoint is left intact, and its message names it, or says that none was written yet), and
:func:`raise_failures` ends it with one line once whatever finished has written its results.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch

from engine.config import TrainingConfig
from engine.loops import (Batch, DeviceMeter, NonFiniteLossError, ProgressPrinter, check_finite,
                          loader_length, optimize, progress_bar, shows_bar, to_batch, validate)
from engine.trainer import Progress, Run, save_epoch
from helper.distributed import DistContext
from helper.util import adjust_learning_rate

#: ``(batch, epoch) -> (loss, logits)`` of one run (possibly a :class:`~engine.loops.StepOutput`
#: with the method's named terms).
LossFn = Callable[[Batch, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Member:
    """One model the loop trains: its run (modules, optimizer, save folder), its training
    loader, its configuration (learning-rate schedule, epochs, trial) and what the loop records
    of it."""

    config: TrainingConfig
    run: Run
    train_loader: Any
    label: str = ""                # prefix of its printed lines ("trial 2 | ")
    progress: Progress = field(default_factory=Progress)
    scaler: "torch.amp.GradScaler | None" = None
    writer: Any = None             # its TensorBoard writer (rank 0), or None
    eval_modules: tuple = ()       # held in eval mode while it trains (the init stage's student)
    last: dict[str, float] = field(default_factory=dict)
    failure: str | None = None     # why it stopped (its loss became NaN/inf), if it did

    def train_mode(self) -> None:
        """Eval mode for :attr:`eval_modules`, then train mode for the run's trained modules
        (each ``train()`` keeps its own eval-mode parts)."""
        for module in self.eval_modules:
            module.eval()
        modules_in_train_mode(self.run.train_modules)


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs, the same for every member."""

    print_freq: int | None = None  # steps between reads; None: default_print_freq; 0: only at the end
    amp: bool = False
    channels_last: bool = False
    desc: str = "train"
    terminal: bool | None = None   # show a tqdm bar; None: when stdout is a terminal

    @classmethod
    def from_config(cls, config: TrainingConfig, desc: str) -> "LoopSettings":
        """The settings of a training run's configuration (progress interval, mixed precision,
        memory format), its bar labelled ``desc``."""
        run = config.run
        return cls(print_freq=run.print_freq, amp=run.amp, channels_last=run.channels_last, desc=desc)


class EpochPolicy(Protocol):
    """What happens around one member's epoch."""

    def start(self, member: Member, epoch: int) -> float:
        """Prepare the epoch (learning rate, loader epoch); return the learning rate."""

    def end(self, member: Member, epoch: int, lr: float, train: dict[str, float],
            seconds: float) -> dict[str, float]:
        """After training ``epoch``: log and save; return the metrics to keep as ``last``."""

    def nothing_left(self, member: Member) -> dict[str, float]:
        """Metrics of a member resumed after its final epoch (no epoch left to train)."""


def fit(member: Member, loss: LossFn, policy: EpochPolicy, epochs: int, settings: LoopSettings,
        dist: DistContext) -> Member:
    """Train ``member`` on ``loss`` from its ``progress.start_epoch`` to ``epochs``; its last
    metrics land in ``last``, or, if its loss became NaN/inf, its ``failure``. Returns it."""
    for epoch in range(member.progress.start_epoch, epochs + 1):
        lr = policy.start(member, epoch)
        started = time.time()
        train = run_epoch(member, loss, epoch, settings, dist)
        if train is None:  # it failed; its last good checkpoint stays
            return member
        member.last = policy.end(member, epoch, lr, train, time.time() - started)
    if not member.last:
        member.last = policy.nothing_left(member)
    return member


def run_epoch(member: Member, loss: LossFn, epoch: int, settings: LoopSettings,
              dist: DistContext) -> dict[str, float] | None:
    """One pass over the member's loader, one optimizer step on ``loss`` per batch.

    Returns the mean loss, top-1/top-5 accuracy (percent) and the mean of each named loss term
    (``loss_<name>``), or None when the loss became NaN/inf (checked every ``print_freq`` steps
    and at the end; the member's ``failure`` says so). With ``dist`` the statistics, and so the
    check, are over all processes: every process stops at the same step."""
    member.train_mode()
    device, optimizer = dist.device, member.run.optimizer
    meter = DeviceMeter(device)
    total = loader_length(member.train_loader)
    print_freq = default_print_freq(total) if settings.print_freq is None else settings.print_freq
    bar_on = shows_bar(dist, settings.terminal)
    printer = ProgressPrinter(epoch, total, member.label) if dist.is_main and not bar_on else None
    bar = progress_bar(member.train_loader, f"{settings.desc} epoch {epoch}", bar_on, total)
    step = 0
    for step, data in enumerate(bar, 1):
        batch = to_batch(data, device, settings.channels_last)
        output = optimize(lambda: loss(batch, epoch), optimizer, member.scaler, device, settings.amp)
        meter.update(output[0], output[1].float(), batch.target, getattr(output, "terms", None))
        if print_freq and step % print_freq == 0:
            stats = read_stats(member, meter, epoch, step, dist, printer)
            if stats is None:
                return None
            if printer is None:
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
    return read_stats(member, meter, epoch, step, dist)


def read_stats(member: Member, meter: DeviceMeter, epoch: int, step: int, dist: DistContext | None,
               printer: ProgressPrinter | None = None) -> dict[str, float] | None:
    """The member's statistics so far (with ``printer``, also its progress line), or None and
    its ``failure`` when its loss is no longer finite."""
    totals = meter.totals(dist)
    try:
        stats = check_finite(meter.stats(totals), epoch, step)
    except NonFiniteLossError as err:
        member.failure = f"{err}; {kept_checkpoint(member.run, epoch)}; {NAN_ADVICE}"
        return None
    if printer is not None:
        printer.print(meter, totals, step)
    return stats


#: What to try after a NaN/inf loss.
NAN_ADVICE = "lower --learning_rate or check the loss weights"
#: Steps between progress reads when ``--print_freq`` is left out (at most).
PRINT_FREQ = 100


def default_print_freq(steps_per_epoch: int | None) -> int:
    """The steps between progress reads (lines, NaN checks) when ``--print_freq`` is left out:
    100, or a quarter of an epoch when that is shorter, so that a short epoch (digits: 23
    steps) still shows a few lines when piped; 100 when the epoch's length is unknown."""
    if not steps_per_epoch:
        return PRINT_FREQ
    return min(PRINT_FREQ, max(1, steps_per_epoch // 4))


def kept_checkpoint(run: Run, epoch: int) -> str:
    """What a run that stopped in ``epoch`` leaves behind: its last good checkpoint (that of
    the epoch before, the last one saved) by path, or that it had written none yet."""
    if epoch > 1 and os.path.exists(run.last_path):
        return f"it stopped, keeping its last good checkpoint {run.last_path} (epoch {epoch - 1})"
    return "it stopped before writing any checkpoint"


def raise_failures(members: list[Member]) -> None:
    """After the members that finished have written their results: one line naming those
    that stopped (their last good checkpoints left intact), as a non-zero exit."""
    failed = [m for m in members if m.failure]
    if len(members) == 1 and failed:
        raise NonFiniteLossError(failed[0].failure)
    if failed:
        names = ", ".join(m.config.run.trial for m in failed)
        raise NonFiniteLossError(f"trial(s) {names} stopped ({failed[0].failure}); "
                                 f"the other {len(members) - len(failed)} finished")


def test_metrics(test: dict[str, float], epoch: int) -> dict[str, float]:
    """The metrics a run keeps of one evaluation (the top-level keys of
    ``test_last_metrics.json``)."""
    return {"test_acc": test["acc"], "test_acc_top5": test["acc_top5"], "test_loss": test["loss"],
            "epoch": epoch}


@dataclass
class EvaluateAndSave:
    """The epoch policy of a training run: the scheduled learning rate (step decay, CRD), and
    after each epoch evaluation on the test split, a summary line, TensorBoard scalars
    (``train_loss``, ``train_acc``, ``train_loss_<term>``, ``test_loss``, ``test_acc``,
    ``test_acc_top5``, ``lr``) and the checkpoints (:func:`engine.trainer.save_epoch`)."""

    test_loader: Any
    dist: DistContext
    settings: LoopSettings

    def start(self, member: Member, epoch: int) -> float:
        lr = adjust_learning_rate(epoch, member.config.optim, member.run.optimizer)
        set_loader_epoch(member.train_loader, epoch)
        return lr

    def evaluate(self, member: Member) -> dict[str, float]:
        """Test metrics of the member's model, over the whole test split (buffers of rank 0
        copied to every process first, so that all evaluate the model rank 0 saves)."""
        self.dist.broadcast_buffers(*member.run.state_modules.values())
        return validate(member.run.eval_model, self.test_loader, self.dist.device, amp=self.settings.amp,
                        channels_last=self.settings.channels_last, dist=self.dist)

    def end(self, member: Member, epoch: int, lr: float, train: dict[str, float],
            seconds: float) -> dict[str, float]:
        run, progress = member.run, member.progress
        test = self.evaluate(member)
        is_best = test["acc"] > progress.best_acc or not os.path.exists(run.best_path)
        progress.best_acc = max(progress.best_acc, test["acc"])
        print(f"{member.label}epoch {epoch:3d}/{member.config.optim.epochs} lr {lr:.4g} | train loss "
              f"{train['loss']:.4f} acc {train['acc']:.2f} | test loss {test['loss']:.4f} acc "
              f"{test['acc']:.2f} top5 {test['acc_top5']:.2f} | best {progress.best_acc:.2f} | "
              f"{seconds:.1f}s", flush=True)
        terms = [(f"train_{key}", value) for key, value in train.items() if key.startswith("loss_")]
        log_scalars(member.writer, epoch, ("train_loss", train["loss"]), ("train_acc", train["acc"]),
                    *terms, ("test_loss", test["loss"]), ("test_acc", test["acc"]),
                    ("test_acc_top5", test["acc_top5"]), ("lr", lr))
        if self.dist.is_main:
            save_epoch(run, member.config, epoch, test["acc"], progress.best_acc, is_best)
        return test_metrics(test, epoch)

    def nothing_left(self, member: Member) -> dict[str, float]:
        epoch = member.progress.start_epoch - 1
        test = self.evaluate(member)
        print(f"{member.label}nothing left to train: epoch {epoch} of {member.config.optim.epochs} is saved; "
              f"its test accuracy {test['acc']:.2f}")
        return test_metrics(test, epoch)


@dataclass
class InitStageLog:
    """The epoch policy of the init stage of AB/FT/FSP (the CRD code's ``helper/pretrain.py``):
    a constant learning rate, and after each epoch its mean loss printed and written to
    TensorBoard as ``init_loss``; nothing is evaluated or saved."""

    learning_rate: float
    epochs: int                    # the init stage's length (--init_epochs)
    losses: list[float] = field(default_factory=list)  # each epoch's mean loss, in order

    def start(self, member: Member, epoch: int) -> float:
        set_loader_epoch(member.train_loader, epoch)
        return self.learning_rate

    def end(self, member: Member, epoch: int, lr: float, train: dict[str, float],
            seconds: float) -> dict[str, float]:
        print(f"{member.label}epoch {epoch:3d}/{self.epochs} | loss {train['loss']:.4f}",
              flush=True)
        log_scalars(member.writer, epoch, ("init_loss", train["loss"]))
        self.losses.append(train["loss"])
        return {"init_loss": train["loss"], "epoch": epoch}

    def nothing_left(self, member: Member) -> dict[str, float]:
        return {}


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell a loader that reshuffles per epoch (sharded, device loaders) which epoch starts."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def log_scalars(writer: Any, epoch: int, *scalars: tuple[str, float]) -> None:
    """``scalars`` (name, value) at step ``epoch`` in ``writer``, flushed; nothing without one."""
    if writer is None:
        return
    for name, value in scalars:
        writer.add_scalar(name, value, epoch)
    writer.flush()


def modules_in_train_mode(modules: Iterable[torch.nn.Module]) -> None:
    """Train mode for ``modules`` (each ``train()`` keeps its own eval-mode parts)."""
    for module in modules:
        module.train()
