"""The one epoch loop and the one fit loop of the project.

Everything that trains goes through :func:`fit` → :func:`run_epoch` → a stepping strategy
(:mod:`engine.stepping`): a teacher (``train_teacher.py``), a student run, the N trials of
``--trials`` (shared teacher forward or stacked students) and the init stage of AB/FT/FSP. A
single run is a run of one :class:`Member`.

What differs between those is said by two small objects, never by branches in the loops:

* the **stepping** (how one step of all live members is taken: :class:`engine.stepping.OwnSteps`,
  :class:`~engine.stepping.SharedTeacher`, :class:`~engine.stepping.Stacked`);
* the **epoch policy** (what happens around an epoch: :class:`EvaluateAndSave` sets the
  scheduled learning rate, evaluates, logs and writes checkpoints; :class:`InitStageLog` keeps
  the init stage's learning rate and only logs its loss).

The epoch is an argument of every step: nothing reaches the loss through a side channel.
Losses, accuracies and named loss terms accumulate on the device and are read once every
``print_freq`` steps (the only host sync; left out, 100 steps or a quarter of an epoch, whichever
is shorter: :func:`default_print_freq`): shown in the tqdm bar on a terminal, printed as a
RepDistiller-style line otherwise. A member whose loss becomes NaN/inf stops (its last good
checkpoint is left intact, and its message names it, or says that none was written yet); the
others go on, and :func:`raise_failures` ends the run with one line once the finished members
have written their results.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch

from engine.config import TrainingConfig
from engine.loops import (DeviceMeter, NonFiniteLossError, ProgressPrinter, StepOutput, check_finite,
                          loader_length, progress_bar, shows_bar, to_batch, validate)
from engine.trainer import Progress, Run, save_epoch
from helper.distributed import DistContext
from helper.util import adjust_learning_rate


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
    last: dict[str, float] = field(default_factory=dict)
    failure: str | None = None     # why it stopped (its loss became NaN/inf), if it did


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


class Stepping(Protocol):
    """One training step of the live members (see :mod:`engine.stepping`)."""

    channels_last: bool  # whether its batches may be channels_last
    steps_all: bool      # whether a step needs a batch of every member, failed ones too

    def train_mode(self, members: list[Member]) -> None:
        """Put what trains in train mode (everything else keeps its mode)."""

    def step(self, members: list[Member], batches: dict[int, Any], epoch: int,
             amp: bool) -> dict[int, StepOutput]:
        """Step the members ``batches`` names (index → batch); return the output of each
        member that has not failed."""


class EpochPolicy(Protocol):
    """What happens around one member's epoch."""

    def start(self, member: Member, epoch: int) -> float:
        """Prepare the epoch (learning rate, loader epoch); return the learning rate."""

    def end(self, member: Member, epoch: int, lr: float, train: dict[str, float],
            seconds: float) -> dict[str, float]:
        """After training ``epoch``: log and save; return the metrics to keep as ``last``."""

    def nothing_left(self, member: Member) -> dict[str, float]:
        """Metrics of a member resumed after its final epoch (no epoch left to train)."""


def fit(members: list[Member], stepping: Stepping, policy: EpochPolicy, epochs: int,
        settings: LoopSettings, dist: DistContext) -> list[Member]:
    """Train every member from its own ``progress.start_epoch`` to ``epochs`` (members resumed
    at different epochs join when their epoch comes); each one's last metrics land in
    ``last``, a member whose loss became NaN/inf gets ``failure``. Returns ``members``."""
    for epoch in range(min((m.progress.start_epoch for m in members), default=1), epochs + 1):
        started = [m for m in members if m.progress.start_epoch <= epoch]
        if all(m.failure is not None for m in started):
            break
        rates = [None if m.failure else policy.start(m, epoch) for m in started]
        start = time.time()
        stats = run_epoch(started, stepping, epoch, settings, dist)
        seconds = time.time() - start
        for member, lr, train in zip(started, rates, stats):
            if train is not None:  # None: it failed; its last good checkpoint stays
                member.last = policy.end(member, epoch, lr, train, seconds)
    for member in members:
        if not member.last and member.failure is None:
            member.last = policy.nothing_left(member)
    return members


def run_epoch(members: list[Member], stepping: Stepping, epoch: int, settings: LoopSettings,
              dist: DistContext) -> list[dict[str, float] | None]:
    """One pass over the members' loaders, step by step together (one batch of each per step).

    Returns each member's mean loss, top-1/top-5 accuracy (percent) and the mean of each named
    loss term (``loss_<name>``), or None for a member whose loss became NaN/inf (checked every
    ``print_freq`` steps and at the end; it is no longer stepped unless the stepping steps all
    members together; a member that failed before is passed as such). With ``dist`` the
    statistics, and so the check, are over all processes: every process stops at the same step.
    """
    stepping.train_mode(members)
    device = dist.device
    meters = [DeviceMeter(device) for _ in members]
    total = min((loader_length(m.train_loader) or 0 for m in members), default=0) or None
    print_freq = default_print_freq(total) if settings.print_freq is None else settings.print_freq
    bar_on = shows_bar(dist, settings.terminal)
    lines = dist.is_main and not bar_on
    suffix = f" x{len(members)} trials" if len(members) > 1 else ""
    bar = progress_bar(zip(*(m.train_loader for m in members)), f"{settings.desc} epoch {epoch}{suffix}",
                       bar_on, total)
    printers = [ProgressPrinter(epoch, total, m.label) for m in members] if lines else None
    step = 0
    for step, datas in enumerate(bar, 1):
        live = [k for k, m in enumerate(members) if m.failure is None]
        if not live:
            break
        wanted = range(len(members)) if stepping.steps_all else live
        batches = {k: to_batch(datas[k], device, settings.channels_last and stepping.channels_last)
                   for k in wanted}
        for k, output in stepping.step(members, batches, epoch, settings.amp).items():
            loss, logits = output
            meters[k].update(loss, logits.float(), batches[k].target, output.terms)
        if print_freq and step % print_freq == 0:
            stats = checked_stats(members, meters, epoch, step, dist, printers)
            if not lines:
                bar.set_postfix(loss=" ".join("-" if s is None else f"{s['loss']:.4f}" for s in stats))
    return checked_stats(members, meters, epoch, step, dist)


def checked_stats(members: list[Member], meters: list[DeviceMeter], epoch: int, step: int,
                  dist: DistContext | None, printers: list[ProgressPrinter] | None = None
                  ) -> list[dict[str, float] | None]:
    """Each live member's statistics (and, with ``printers``, its progress line); a member
    whose loss is no longer finite gets its ``failure`` and None."""
    stats: list[dict[str, float] | None] = []
    for k, (member, meter) in enumerate(zip(members, meters)):
        if member.failure is not None:
            stats.append(None)
            continue
        totals = meter.totals(dist)
        try:
            stats.append(check_finite(meter.stats(totals), epoch, step))
        except NonFiniteLossError as err:
            member.failure = f"{err}; {kept_checkpoint(member.run, epoch)}; {NAN_ADVICE}"
            stats.append(None)
            if len(members) > 1:
                print(f"{member.label}{member.failure}; the other trials go on", flush=True)
            continue
        if printers is not None:
            printers[k].print(meter, totals, step)
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
