"""The ways of taking one training step of the loop's members (:func:`engine.fit.run_epoch`).

* :class:`OwnSteps`: each member steps its own loss (a teacher; the init stage of AB/FT/FSP).
* :class:`SharedTeacher`: the frozen teacher runs once on the batches of all members together,
  then each member (student + method) takes its own optimizer step. A single distillation run
  is this with one member; with ``--trials N`` the teacher's forward is shared by N trials.
* :class:`Stacked`: the N students of ``--trials`` stacked into one vmapped model take one step
  for all (:mod:`engine.stacked`; ``--trials_mode stacked``, ``auto``'s choice on CUDA).

Each takes the epoch as an argument and hands it to the loss (DKD's warm-up reads it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from engine.distill import DistillStep, split_outputs  # noqa: F401  (split_outputs: tests import it here)
from engine.fit import Member, modules_in_train_mode
from engine.loops import Batch, StepOutput, autocast_context, optimize
from engine.stacked import StackedStep, StackedStudents

#: ``(batch, epoch) -> (loss, logits)`` of one member (possibly a :class:`StepOutput`).
LossFn = Callable[[Batch, int], tuple[torch.Tensor, torch.Tensor]]


def as_output(output) -> StepOutput:
    """A step's ``(loss, logits)`` as a :class:`StepOutput` (no named terms if it had none)."""
    return output if isinstance(output, StepOutput) else StepOutput(*output)


@dataclass
class OwnSteps:
    """Each member's own loss and optimizer step: ``losses[k](batch, epoch)`` for member k.
    ``eval_modules`` are put in eval mode before the members' ``train_modules`` are put in
    train mode (the init stage keeps the student in eval mode, as the CRD code does)."""

    losses: list[LossFn]
    eval_modules: tuple[nn.Module, ...] = ()
    channels_last: bool = True
    steps_all: bool = False

    def train_mode(self, members: list[Member]) -> None:
        for module in self.eval_modules:
            module.eval()
        for member in members:
            modules_in_train_mode(member.run.train_modules)

    def step(self, members: list[Member], batches: dict[int, Batch], epoch: int,
             amp: bool) -> dict[int, StepOutput]:
        outputs = {}
        for k, batch in batches.items():
            member, loss = members[k], self.losses[k]
            outputs[k] = as_output(optimize(lambda: loss(batch, epoch), member.run.optimizer,
                                            member.scaler, batch.images.device, amp))
        return outputs


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
