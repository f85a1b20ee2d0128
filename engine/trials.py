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
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time
from dataclasses import dataclass, field

import torch
from torch.utils.tensorboard import SummaryWriter

from engine.distill import DistillStep
from helper.distributed import DistContext
from helper.errors import UserError
from helper.logging_utils import add_config_text
from engine.loops import (DeviceMeter, NonFiniteLossError, ProgressPrinter, autocast_context, check_finite,
                          make_grad_scaler, optimize, progress_bar, shows_bar, step_terms, to_batch)
from helper.naming import STUDENT_SAVE_ROOT
from engine.stacked import StackedStep, StackedStudents, TrialOptimizer, can_stack
from engine.trainer import Progress, Run, end_epoch, make_optimizer, resume, start_epoch


def check_trials_flags(opt: argparse.Namespace, world_size: int = 1) -> None:
    """One clear line for ``--trials``/``--trial``/``--resume`` combinations that cannot run
    (checked when the flags are parsed, before anything loads)."""
    n = opt.trials
    if n < 1:
        raise UserError(f"--trials must be at least 1, got {n}")
    if n == 1:
        return
    if not str(opt.trial).isdigit():
        raise UserError(f"--trials {n} numbers its trials from --trial, which must then be an "
                        f"integer such as 1; got --trial {opt.trial}")
    if opt.resume not in (None, "auto"):
        raise UserError("--resume CKPT names one checkpoint; with --trials give --resume alone "
                        "(each trial continues from its own <model>_last.pth)")
    if world_size > 1:
        raise UserError("--trials runs its trials in one process; under torchrun give each "
                        "trial its own run (scripts/run_trials.py)")


def trial_options(opt: argparse.Namespace, run_name) -> list[argparse.Namespace]:
    """One options object per trial: ``opt`` itself when ``opt.trials`` is 1, else copies with
    ``trial`` = ``opt.trial + k`` and ``seed`` = ``opt.seed + k`` (None stays None), and each
    trial's ``model_name``, ``save_folder`` and ``tb_folder`` (``run_name(opt)`` names the run)."""
    n = opt.trials
    trials = []
    for k in range(n):
        one = opt if n == 1 else copy.copy(opt)
        if n > 1:
            one.trial = str(int(opt.trial) + k)
            one.seed = None if opt.seed is None else opt.seed + k
        one.model_name = run_name(one)
        one.save_folder = os.path.join(STUDENT_SAVE_ROOT, one.model_name)
        one.tb_folder = os.path.join("save", "student_tensorboards", one.model_name)
        trials.append(one)
    return trials


@dataclass
class StackedTrials:
    """The trials' students stacked into one model, stepped by one optimizer (:mod:`engine.stacked`)."""

    model: StackedStudents
    step: StackedStep
    optimizer: torch.optim.Optimizer
    scaler: "torch.amp.GradScaler | None" = None


def stack_trials(trials: list[Trial], mode: str, device: torch.device, opt) -> StackedTrials | None:
    """With ``mode`` 'stacked' (or 'auto' on CUDA, for a method :func:`can_stack` accepts),
    stack the trials' students and give each trial its :class:`TrialOptimizer` slice; else None
    (each trial steps on its own after the shared teacher forward)."""
    method = trials[0].step.method
    if mode == "shared_teacher" or len(trials) < 2:
        return None
    if not can_stack(method):
        if mode == "stacked":
            raise UserError(f"--trials_mode stacked needs a method without parameters, buffers, init "
                            f"stage or sample indices whose loss vmap can batch; --distill "
                            f"{opt.distill} is not one: use --trials_mode shared_teacher")
        return None
    if mode == "auto" and device.type != "cuda":
        return None  # measured slower on CPU (see engine.stacked)
    students = [trial.step.loss.student for trial in trials]
    model = StackedStudents(students)
    optimizer = make_optimizer(model.stacked_params, opt)
    for k, trial in enumerate(trials):
        trial.run.optimizer = TrialOptimizer(optimizer, list(model.stacked_params), k)
    step = StackedStep(model, trials[0].step, method, trials[0].step.loss.weights)
    return StackedTrials(model, step, optimizer)


@dataclass
class Trial:
    """One trial's run, step, training loader and counters."""

    opt: argparse.Namespace
    run: Run
    step: DistillStep
    train_loader: object
    progress: Progress = field(default_factory=Progress)
    scaler: "torch.amp.GradScaler | None" = None
    writer: object = None
    last: dict[str, float] = field(default_factory=dict)
    failure: str | None = None  # why the trial stopped (its loss became NaN/inf), if it did

    @property
    def label(self) -> str:
        return f"trial {self.opt.trial} | "


def split_outputs(feat_t, logit_t: torch.Tensor, sizes: list[int]):
    """Per-trial ``(feat_t, logit_t)`` of teacher outputs computed on the concatenated batches."""
    logits = logit_t.split(sizes)
    if feat_t is None:
        return [(None, logit) for logit in logits]
    feats = list(zip(*(f.split(sizes) for f in feat_t)))
    return [(list(f), logit) for f, logit in zip(feats, logits)]


def train_trials_epoch(trials: list[Trial], device: torch.device, epoch: int, print_freq: int = 100,
                       amp: bool = False, channels_last: bool = False, desc: str = "train",
                       dist: DistContext | None = None, stacked: StackedTrials | None = None,
                       terminal: bool | None = None) -> list[dict[str, float] | None]:
    """One epoch of every trial, step by step together: one teacher forward for all trials'
    batches, then each trial's own optimizer step — or, with ``stacked``, one step of the
    stacked students. Returns each trial's mean loss, top-1/5 and named loss terms
    (``loss_<name>``, as :func:`engine.loops.train_epoch`).

    Every ``print_freq`` steps the trials' device sums are read: on a terminal (``terminal``;
    None: stdout's) the tqdm bar shows the losses, otherwise each live trial prints a progress
    line (prefixed by its label). A trial whose loss becomes NaN/inf (checked then and at the
    end) gets its ``failure`` set and None as its statistics and is no longer counted (nor,
    unstacked, stepped); the others go on.
    """
    for trial in trials:
        for module in trial.run.train_modules:
            module.train()
    if stacked is not None:
        stacked.model.train()
    meters = [DeviceMeter(device) for _ in trials]
    loaders = [trial.train_loader for trial in trials]
    total = min(len(loader) for loader in loaders)
    bar_on = shows_bar(dist, terminal)
    lines = (dist is None or dist.is_main) and not bar_on
    bar = progress_bar(zip(*loaders), f"{desc} epoch {epoch} x{len(trials)} trials", bar_on, total)
    printers = [ProgressPrinter(epoch, total, trial.label) for trial in trials] if lines and print_freq else None
    step = 0
    for step, datas in enumerate(bar, 1):
        live = [k for k, trial in enumerate(trials) if trial.failure is None]
        if not live:
            break
        if stacked is not None:
            batches = [to_batch(data, device) for data in datas]
            output = optimize(lambda: stacked.step(batches), stacked.optimizer, stacked.scaler,
                              device, amp)
            losses, logits = output
            terms = step_terms(output)
            for k in live:
                meters[k].update(losses[k], logits[k].float(), batches[k].target,
                                 {name: value[k] for name, value in terms.items()})
        else:
            batches = [to_batch(datas[k], device, channels_last) for k in live]
            with autocast_context(device, amp):
                teacher = trials[live[0]].step.teacher_outputs(torch.cat([b.images for b in batches]))
            per_trial = split_outputs(*teacher, [b.images.size(0) for b in batches])
            for k, batch, outputs in zip(live, batches, per_trial):
                trial = trials[k]
                output = optimize(lambda: trial.step.student_loss(batch, *outputs),
                                  trial.run.optimizer, trial.scaler, device, amp)
                loss, logits = output
                meters[k].update(loss, logits.float(), batch.target, step_terms(output))
        if print_freq and step % print_freq == 0:
            stats = _checked_trials(trials, meters, epoch, step, dist, printers=printers)
            if not lines:
                bar.set_postfix(loss=" ".join("-" if s is None else f"{s['loss']:.3f}" for s in stats))
    return _checked_trials(trials, meters, epoch, step, dist)


def _checked_trials(trials: list[Trial], meters: list[DeviceMeter], epoch: int, step: int,
                    dist: DistContext | None, printers: list[ProgressPrinter] | None = None
                    ) -> list[dict[str, float] | None]:
    """Each live trial's statistics (and, with ``printers``, its progress line); a trial whose
    loss is no longer finite is marked failed."""
    stats = []
    for k, (trial, meter) in enumerate(zip(trials, meters)):
        if trial.failure is None:
            totals = meter.totals(dist)
            try:
                stats.append(check_finite(meter.stats(totals), epoch, step))
            except NonFiniteLossError as err:
                trial.failure = str(err)
                print(f"{trial.label}{err}; the other trials go on", flush=True)
            else:
                if printers is not None:
                    printers[k].print(meter, totals, step)
                continue
        stats.append(None)
    return stats


def fit_trials(trials: list[Trial], epochs: int, test_loader, dist: DistContext,
               desc: str = "train", stacked: StackedTrials | None = None) -> None:
    """Train every trial from its own ``progress.start_epoch`` to ``epochs`` (trials resumed at
    different epochs join when their epoch comes; stacked trials must all be at one epoch);
    each trial's last metrics land in ``last``."""
    opt = trials[0].opt
    amp = getattr(opt, "amp", False)
    for trial in trials:
        trial.scaler = make_grad_scaler(dist.device, amp)
    if stacked is not None:
        stacked.scaler = make_grad_scaler(dist.device, amp)
        if len({t.progress.start_epoch for t in trials}) > 1:
            raise UserError("the trials resumed at different epochs, which stacked trials cannot "
                            "train together: resume with --trials_mode shared_teacher")
    for epoch in range(min(t.progress.start_epoch for t in trials), epochs + 1):
        active = [t for t in trials if t.progress.start_epoch <= epoch and t.failure is None]
        if not active:
            break
        if stacked is not None:
            stacked.step.epoch = epoch
            active = trials  # the stack steps every trial; failed ones are no longer saved
        rates = [start_epoch(t.run, t.opt, t.train_loader, epoch) for t in active]
        start = time.time()
        stats = train_trials_epoch(active, dist.device, epoch, print_freq=opt.print_freq, amp=amp,
                                   channels_last=getattr(opt, "channels_last", False), desc=desc,
                                   dist=dist, stacked=stacked)
        seconds = time.time() - start
        for trial, lr, train in zip(active, rates, stats):
            if train is None:
                continue  # failed this epoch: nothing saved, its last good checkpoint stays
            trial.last = end_epoch(trial.run, trial.opt, epoch, lr, train, seconds, test_loader,
                                   trial.progress, trial.writer, dist, label=trial.label)


def train_trials(trials: list[Trial], test_loader, dist: DistContext, headline: str,
                 desc: str = "train", stacked: StackedTrials | None = None,
                 configs: list[dict] | None = None) -> None:
    """What ``train_run`` does for one run, for all trials: resume each (``--resume``), open
    each one's TensorBoard writer (rank 0) with its resolved configuration (``configs``, one
    per trial) as the ``config`` text, print ``headline``, :func:`fit_trials`, print each
    trial's best accuracy. (The entry script tees what is printed into every trial's
    ``train.log``: :func:`helper.logging_utils.tee_to`.)"""
    opt = trials[0].opt
    for trial in trials:
        if opt.resume:
            trial.progress = resume(trial.run, trial.run.last_path)
        if dist.is_main:
            os.makedirs(trial.opt.save_folder, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if dist.is_main:
            for k, trial in enumerate(trials):
                trial.writer = stack.enter_context(SummaryWriter(trial.opt.tb_folder))
                add_config_text(trial.writer, configs[k] if configs else None)
        folders = ", ".join(t.opt.save_folder for t in trials)
        how = "stacked students" if stacked else "one step per trial"
        print(f"{headline} on {dist.device}, {len(trials)} trials in one process ({how}); "
              f"saving to {folders}")
        fit_trials(trials, opt.epochs, test_loader, dist, desc=desc, stacked=stacked)
    for trial in trials:
        if trial.failure:
            print(f"{trial.label}stopped: its loss became NaN/inf (last good checkpoint kept)")
        else:
            print(f"{trial.label}best accuracy: {trial.progress.best_acc:.2f}")


def raise_failures(trials: list[Trial]) -> None:
    """After the trials that finished have written their results: one line naming the trials
    that stopped (their last good checkpoints left intact), as a non-zero exit."""
    failed = [t for t in trials if t.failure]
    if failed:
        names = ", ".join(t.opt.trial for t in failed)
        raise NonFiniteLossError(f"trial(s) {names} stopped ({failed[0].failure}); "
                                 f"the other {len(trials) - len(failed)} finished")
