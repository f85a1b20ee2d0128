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

from dataclasses import dataclass

import torch

from engine.config import StudentConfig, StudentRun, with_section
from engine.distill import DistillStep, loss_weights
from engine.loops import make_grad_scaler
from engine.stacked import StackedStep, StackedStudents, TrialOptimizer, can_stack
from engine.stepping import SharedTeacher, Stacked
from engine.trainer import make_optimizer
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


@dataclass
class TrialParts:
    """What one trial trains, before its run is assembled: its configuration, student, method,
    the distillation step and the training loader."""

    config: StudentConfig
    student: torch.nn.Module
    method: torch.nn.Module
    step: DistillStep
    train_loader: object


def stepping_for(parts: list[TrialParts], mode: str, device: torch.device,
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
        optimizers = [make_optimizer((p for m in trainable(part) for p in m.parameters()), part.config.optim)
                      for part in parts]
        return SharedTeacher([part.step for part in parts]), optimizers
    model = StackedStudents([part.student for part in parts])
    optimizer = make_optimizer(model.stacked_params, config.optim)
    step = StackedStep(model, parts[0].step, method, loss_weights(config.method))
    slices = [TrialOptimizer(optimizer, list(model.stacked_params), k) for k in range(len(parts))]
    return Stacked(model, step, optimizer, make_grad_scaler(device, amp)), slices


def trainable(part: TrialParts) -> list[torch.nn.Module]:
    """What a trial's optimizer steps: the student and the method's trained modules."""
    return [part.student, *part.method.trainable_modules()]


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
