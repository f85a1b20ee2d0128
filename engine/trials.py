"""Several trials of one table cell in one process (``train_student.py --trials N``).

The published table reports the mean of 5 runs per cell. ``--trials N`` trains the N students of
trials ``t, t+1, ..., t+N-1`` (``t`` = ``--trial``) side by side against one teacher: each step
draws one batch per trial (every trial its own loader, seeded by its own seed), runs the frozen
teacher once on all of them together, then takes each trial's optimizer step. Each trial keeps
everything a separate run has — student, method, optimizer, grad scaler, best accuracy, save
folder, TensorBoard folder, checkpoints — so trial ``t+k`` of a ``--trials`` run computes what
``--trial t+k --seed s+k`` computes alone (with ``--seed s``; unseeded, its data order comes
from its trial number, see :func:`helper.util.data_seed`), and any trial can be resumed or
evaluated on its own afterwards.

What is always shared is the teacher's forward: one call on ``N x batch`` images instead of N
calls. On a GPU at batch 64 the teacher is bound by per-call latency, so the N-fold batch costs
little more than one; on a CPU the work is arithmetic and nothing is saved (README figures).
With ``--trials_mode stacked`` (``auto``'s choice on CUDA, where the method allows) the students
are stacked too and take one step for all (:mod:`engine.stacked`).

The trials train in :func:`fit_trials`, the loop of :mod:`engine.fit` extended to several
members: the same epoch policy per trial, one batch of each trial per step, and a trial whose
loss becomes NaN/inf stops while the others go on.
"""
from __future__ import annotations

import time

import torch

from engine.config import StudentConfig, StudentRun, with_section
from engine.distill import StudentParts, loss_weights
from engine.fit import EpochPolicy, LoopSettings, Member, default_print_freq, read_stats
from engine.loops import (DeviceMeter, ProgressPrinter, loader_length, make_grad_scaler, progress_bar, shows_bar,
                          to_batch)
from engine.stacked import StackedStep, StackedStudents, TrialOptimizer, can_stack
from engine.stepping import SharedTeacher, Stacked, Stepping
from engine.trainer import make_optimizer
from helper.distributed import DistContext
from helper.errors import UserError


def check_trials_flags(run: StudentRun, world_size: int = 1) -> None:
    """One clear line for ``--trials``/``--trial``/``--resume`` combinations that cannot run
    (checked when the flags are parsed, before anything loads)."""
    n = run.trials
    if n < 1:
        raise UserError(f"--trials must be at least 1, got {n}")
    if n == 1:
        return
    if not str(run.trial).isdigit():
        raise UserError(f"--trials {n} numbers its trials from --trial, which must then be an "
                        f"integer such as 1; got --trial {run.trial}")
    if run.resume not in (None, "auto"):
        raise UserError("--resume CKPT names one checkpoint; with --trials give --resume alone "
                        "(each trial continues from its own <model>_last.pth)")
    if world_size > 1:
        raise UserError("--trials runs its trials in one process; under torchrun give each "
                        "trial its own run (scripts/run_trials.py)")


def trial_configs(config: StudentConfig) -> list[StudentConfig]:
    """One configuration per trial: ``config`` itself for one trial, else copies made with
    :func:`dataclasses.replace` whose ``trial`` is ``--trial + k`` and ``seed`` ``--seed + k``
    (None stays None); their folders follow (:meth:`engine.config.StudentConfig.folders`)."""
    run = config.run
    if run.trials == 1:
        return [config]
    return [with_section(config, "run", trial=str(int(run.trial) + k),
                         seed=None if run.seed is None else run.seed + k)
            for k in range(run.trials)]


def stepping_for(parts: list[StudentParts], mode: str, device: torch.device,
                 amp: bool = False) -> tuple[SharedTeacher | Stacked, list]:
    """The stepping of the trials and each one's optimizer: with ``mode`` 'stacked' (or
    'auto' on CUDA, for a method :func:`can_stack` accepts) the students stacked
    (:class:`Stacked`, each trial's optimizer a :class:`TrialOptimizer` slice of the stack's,
    the stack's grad scaler for ``amp``);
    else, and always with ``--dot`` (two backward passes per trial), :class:`SharedTeacher`
    (each trial its own SGD over student and method). One trial is the shared-teacher
    stepping of one member. The trials differ only in trial and seed,
    so the first one's configuration says the method and the optimization of all."""
    method, config = parts[0].method, parts[0].config
    if config.optim.dot or not stacks(mode, method, device, len(parts), config.method.distill):
        optimizers = [make_optimizer(part.trained_parameters(), part.config.optim) for part in parts]
        return SharedTeacher([part.step for part in parts]), optimizers
    model = StackedStudents([part.student for part in parts])
    optimizer = make_optimizer(model.stacked_params, config.optim)
    step = StackedStep(model, parts[0].step, method, loss_weights(config.method))
    slices = [TrialOptimizer(optimizer, list(model.stacked_params), k) for k in range(len(parts))]
    return Stacked(model, step, optimizer, make_grad_scaler(device, amp)), slices


def stacks(mode: str, method: torch.nn.Module, device: torch.device, n: int, name: str) -> bool:
    """Whether ``n`` trials of ``method`` train stacked under ``--trials_mode mode``."""
    if mode == "shared_teacher" or n < 2:
        return False
    if not can_stack(method):
        if mode == "stacked":
            raise UserError(f"--trials_mode stacked needs a method without parameters, buffers, init "
                            f"stage, sample indices or strong view whose loss vmap can batch; --distill "
                            f"{name} is not one: use --trials_mode shared_teacher")
        return False
    return mode == "stacked" or device.type == "cuda"  # auto: measured slower on CPU (engine.stacked)


def check_stacked_start(stepping, members: list) -> None:
    """Stacked trials train together: all must resume at one epoch."""
    if isinstance(stepping, Stacked) and len({m.progress.start_epoch for m in members}) > 1:
        raise UserError("the trials resumed at different epochs, which stacked trials cannot "
                        "train together: resume with --trials_mode shared_teacher")


def fit_trials(members: list[Member], stepping: Stepping, policy: EpochPolicy, epochs: int,
               settings: LoopSettings, dist: DistContext) -> list[Member]:
    """:func:`engine.fit.fit` for the trials of ``--trials``: every member from its own
    ``progress.start_epoch`` to ``epochs`` (members resumed at different epochs join when their
    epoch comes), stepped together by ``stepping``; each one's last metrics land in ``last``,
    a member whose loss became NaN/inf gets ``failure``. Returns ``members``."""
    for epoch in range(min(m.progress.start_epoch for m in members), epochs + 1):
        started = [m for m in members if m.progress.start_epoch <= epoch]
        if all(m.failure is not None for m in started):
            break
        rates = [None if m.failure else policy.start(m, epoch) for m in started]
        start = time.time()
        stats = run_trials_epoch(started, stepping, epoch, settings, dist)
        seconds = time.time() - start
        for member, lr, train in zip(started, rates, stats):
            if train is not None:  # None: it failed; its last good checkpoint stays
                member.last = policy.end(member, epoch, lr, train, seconds)
    for member in members:
        if not member.last and member.failure is None:
            member.last = policy.nothing_left(member)
    return members


def run_trials_epoch(members: list[Member], stepping: Stepping, epoch: int, settings: LoopSettings,
                     dist: DistContext) -> list[dict[str, float] | None]:
    """:func:`engine.fit.run_epoch` of several members, step by step together (one batch of
    each per step). Returns each member's statistics, or None for one whose loss became NaN/inf
    (it is no longer stepped unless the stepping steps all members together; a member that
    failed before is passed as such)."""
    stepping.train_mode(members)
    device = dist.device
    meters = [DeviceMeter(device) for _ in members]
    total = min(loader_length(m.train_loader) or 0 for m in members) or None
    print_freq = default_print_freq(total) if settings.print_freq is None else settings.print_freq
    bar_on = shows_bar(dist, settings.terminal)
    lines = dist.is_main and not bar_on
    bar = progress_bar(zip(*(m.train_loader for m in members)),
                       f"{settings.desc} epoch {epoch} x{len(members)} trials", bar_on, total)
    printers = [ProgressPrinter(epoch, total, m.label) if lines else None for m in members]
    step = 0
    for step, datas in enumerate(bar, 1):
        live = [k for k, m in enumerate(members) if m.failure is None]
        if not live:
            break
        wanted = range(len(members)) if stepping.steps_all else live
        batches = {k: to_batch(datas[k], device, settings.channels_last and stepping.channels_last)
                   for k in wanted}
        for k, output in stepping.step(members, batches, epoch, settings.amp).items():
            meters[k].update(output[0], output[1].float(), batches[k].target, output.terms)
        if print_freq and step % print_freq == 0:
            stats = trial_stats(members, meters, epoch, step, dist, printers)
            if not lines:
                bar.set_postfix(loss=" ".join("-" if s is None else f"{s['loss']:.4f}" for s in stats))
    return trial_stats(members, meters, epoch, step, dist)


def trial_stats(members: list[Member], meters: list[DeviceMeter], epoch: int, step: int,
                dist: DistContext, printers: list[ProgressPrinter | None] | None = None
                ) -> list[dict[str, float] | None]:
    """Each live member's statistics (:func:`engine.fit.read_stats`); None for a failed one,
    and for one failing now a line saying that the other trials go on."""
    printers = printers or [None] * len(members)
    stats: list[dict[str, float] | None] = []
    for member, meter, printer in zip(members, meters, printers):
        if member.failure is not None:
            stats.append(None)
            continue
        stats.append(read_stats(member, meter, epoch, step, dist, printer))
        if member.failure is not None:
            print(f"{member.label}{member.failure}; the other trials go on", flush=True)
    return stats
