"""The ways of taking one training step of the N trials of ``--trials``
(:func:`engine.trials.run_trials_epoch`; a single run steps its own loss in
:func:`engine.fit.run_epoch`).

* :class:`SharedTeacher`: the frozen teacher runs once on the batches of all trials together,
  then each trial (student + method) takes its own optimizer step.
* :class:`Stacked`: the N students of ``--trials`` stacked into one vmapped model take one step
  for all (:mod:`engine.stacked`; ``--trials_mode stacked``, ``auto``'s choice on CUDA).

Each takes the epoch as an argument and hands it to the loss (DKD's warm-up reads it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from engine.distill import DistillStep, split_outputs  # noqa: F401  (split_outputs: tests import it here)
from engine.fit import Member, modules_in_train_mode
from engine.loops import Batch, StepOutput, autocast_context, optimize
from engine.stacked import StackedStep, StackedStudents


def as_output(output) -> StepOutput:
    """A step's ``(loss, logits)`` as a :class:`StepOutput` (no named terms if it had none)."""
    return output if isinstance(output, StepOutput) else StepOutput(*output)


class Stepping(Protocol):
    """One training step of the live trials (:func:`engine.trials.run_trials_epoch`)."""

    channels_last: bool  # whether its batches may be channels_last
    steps_all: bool      # whether a step needs a batch of every member, failed ones too

    def train_mode(self, members: list[Member]) -> None:
        """Put what trains in train mode (everything else keeps its mode)."""

    def step(self, members: list[Member], batches: dict[int, Batch], epoch: int,
             amp: bool) -> dict[int, StepOutput]:
        """Step the members ``batches`` names (index → batch); return the output of each
        member that has not failed."""


@dataclass
class SharedTeacher:
    """One teacher forward over the batches of all live members, then each member's own
    student forward, loss and optimizer step (``steps[k]``: member k's :class:`DistillStep`)."""

    steps: list[DistillStep]
    channels_last: bool = True
    steps_all: bool = False

    def train_mode(self, members: list[Member]) -> None:
        for member in members:
            modules_in_train_mode(member.run.train_modules)

    def step(self, members: list[Member], batches: dict[int, Batch], epoch: int,
             amp: bool) -> dict[int, StepOutput]:
        live = list(batches)
        teacher_step = self.steps[live[0]]
        with autocast_context(batches[live[0]].images.device, amp):
            teacher = teacher_step.teacher_for([batches[k] for k in live])
        outputs = {}
        for k, (feat_t, logit_t, strong_t) in zip(live, teacher):
            batch, step, member = batches[k], self.steps[k], members[k]
            strong = () if strong_t is None else (strong_t,)  # a strong view's, for a method reading it
            outputs[k] = as_output(optimize(lambda: step.student_loss(batch, feat_t, logit_t, epoch, *strong),
                                            member.run.optimizer, member.scaler, batch.images.device, amp))
        return outputs


@dataclass
class Stacked:
    """The members' students as one vmapped model (:class:`engine.stacked.StackedStudents`)
    stepped by one optimizer: every step one forward and one backward for all. Every member
    is stepped (a failed one is no longer counted or saved)."""

    model: StackedStudents
    step_fn: StackedStep
    optimizer: torch.optim.Optimizer
    scaler: "torch.amp.GradScaler | None" = None
    channels_last: bool = False  # the stacked images are (N, B, C, H, W)
    steps_all: bool = True

    def train_mode(self, members: list[Member]) -> None:
        for member in members:
            modules_in_train_mode(member.run.train_modules)
        self.model.train()

    def step(self, members: list[Member], batches: dict[int, Batch], epoch: int,
             amp: bool) -> dict[int, StepOutput]:
        every = [batches[k] for k in range(len(members))]
        losses, logits = output = optimize(lambda: self.step_fn(every, epoch), self.optimizer,
                                           self.scaler, every[0].images.device, amp)
        return {k: StepOutput(losses[k], logits[k], {name: v[k] for name, v in output.terms.items()})
                for k in batches if members[k].failure is None}
