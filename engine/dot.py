"""DOT, the distillation-oriented trainer (Zhao et al., "DOT: A Distillation-Oriented Trainer",
ICCV 2023): SGD whose momentum keeps the task gradient and the distillation gradient apart.

The paper's observation: adding a distillation loss to the task loss trades one off against the
other, and neither converges as well as alone. DOT takes the two gradients of one step apart
(two backward passes through one forward) and gives the distillation gradient the larger
momentum: with ``--momentum`` m and ``--dot_delta`` d, the task gradient's buffer decays with
``m - d`` and the distillation gradient's with ``m + d`` (m 0.9, d 0.075 in the authors' CIFAR
and Tiny-ImageNet configurations, d 0.09 on ImageNet). Here the task loss is the method's
weighted ``cls`` term and the distillation loss the weighted sum of its other terms (``div``,
``kd``), so DOT applies to every method.

What the step does, per parameter p with learning rate lr and weight decay wd (as the authors'
``mdistiller/engine/dot.py``, commit a08d46f, which :mod:`tests.test_dot` checks against):

* a parameter with both gradients: task buffer ``b_t <- (m - d) b_t + g_task + wd p``,
  distillation buffer ``b_d <- (m + d) b_d + g_distill``, then ``p <- p - lr b_t - lr b_d``
  (the weight decay enters the task buffer only);
* a parameter with one of the two (a method's regressor, embedding or temperature, which only
  the distillation loss reaches): its one buffer decays with the mean ``((m - d) + (m + d)) / 2``,
  plain SGD's momentum, and takes the weight decay;
* the first step of a buffer starts it at its gradient (SGD's rule). The authors' code starts a
  distillation buffer at the bare gradient, without weight decay, also for a parameter whose
  only gradient it is: such a parameter skips its weight decay on its first step. The step
  here does the same (one step of ``lr * wd * p``; equal to the authors' numbers is what
  is tested).

With d = 0 the step is SGD with momentum m, but for that first step (:mod:`tests.test_dot`). The optimizer's state per
parameter is ``momentum_buffer`` (task) and ``distillation_momentum_buffer``: both are in its
``state_dict``, so ``--resume`` continues them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

TASK_BUFFER = "momentum_buffer"
DISTILL_BUFFER = "distillation_momentum_buffer"

#: Averages the gradients of the given parameters over processes (torchrun), in place.
GradientSync = Callable[[Sequence[Tensor]], None]


@dataclass
class SplitLoss:
    """The two losses of one step, apart: ``task`` (the weighted ``cls`` term) and ``distill``
    (the weighted other terms), and, under torchrun, how their gradients are averaged over
    processes (``sync``; the step's forward ran without DDP's own synchronisation)."""

    task: Tensor
    distill: Tensor
    sync: GradientSync | None = None


class DistillationOrientedSGD(torch.optim.Optimizer):
    """SGD with separate momenta for the task and the distillation gradients (see the module
    docstring). Use :meth:`backward_and_step`, or by hand: backward the distillation loss
    (``retain_graph=True``), :meth:`hold_distillation_gradients`, backward the task loss,
    :meth:`step`.

    Args:
        params: the parameters (or parameter groups).
        lr: learning rate.
        momentum: m, the momentum of plain SGD that the two are spread around.
        delta: d, the distillation momentum is ``m + d`` and the task momentum ``m - d``;
            ``0 < m - d`` and ``m + d < 1``.
        weight_decay: L2 penalty, added to the task gradient (see the module docstring).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float, delta: float,
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or weight_decay < 0 or delta < 0:
            raise ValueError(f"lr {lr}, weight_decay {weight_decay} and delta {delta} must not be negative")
        if not (0 < momentum - delta and momentum + delta < 1):
            raise ValueError(f"momentum {momentum} - delta {delta} must be positive and their sum below 1")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay))
        self._held: dict[Tensor, Tensor] = {}  # the distillation gradients of the step under way

    def load_state_dict(self, state_dict: dict) -> None:
        """A DOT optimizer's state (``ValueError`` for another optimizer's, e.g. plain SGD's:
        its groups have no ``delta``)."""
        groups = state_dict.get("param_groups", [])
        if not groups or any("delta" not in group for group in groups):
            raise ValueError("the state is not a DOT optimizer's (its parameter groups have no delta)")
        super().load_state_dict(state_dict)

    def hold_distillation_gradients(self) -> None:
        """Take the parameters' current gradients as this step's distillation gradients (and
        clear them, for the task loss's backward)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._held[p] = p.grad
                    p.grad = None

    def held_gradients(self) -> list[Tensor]:
        """The distillation gradients held for the step under way."""
        return list(self._held.values())

    @torch.no_grad()
    def step(self, closure=None):
        """One update from the parameters' gradients (the task's) and the held distillation
        gradients; the held gradients are released."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        self._held = {}
        return loss

    def _step_group(self, group: dict) -> None:
        lr, wd, m, d = group["lr"], group["weight_decay"], group["momentum"], group["delta"]
        task_momentum, distill_momentum = m - d, m + d
        single_momentum = (distill_momentum + task_momentum) / 2.0  # the authors' expression
        task = [p for p in group["params"] if p.grad is not None]
        distill = [p for p in group["params"] if p in self._held]
        in_task = set(map(id, task))
        task_grads = [p.grad for p in task]
        if wd != 0 and task:
            task_grads = list(torch._foreach_add(task_grads, task, alpha=wd))
        task_bufs = self._accumulate(task, task_grads, TASK_BUFFER, [p in self._held for p in task],
                                     task_momentum, single_momentum, decay=0.0)
        distill_bufs = self._accumulate(distill, [self._held[p] for p in distill], DISTILL_BUFFER,
                                        [id(p) in in_task for p in distill],
                                        distill_momentum, single_momentum, decay=wd)
        for params, bufs in ((task, task_bufs), (distill, distill_bufs)):
            if params:
                torch._foreach_add_(params, bufs, alpha=-lr)

    def _accumulate(self, params: list[Tensor], grads: list[Tensor], key: str, paired: list[bool],
                    paired_momentum: float, single_momentum: float, decay: float) -> list[Tensor]:
        """Each parameter's buffer ``key`` after this step's gradient: started at the gradient
        the first time, else ``momentum * buffer + gradient``, the momentum ``paired_momentum``
        for a parameter that has the other gradient too, else ``single_momentum`` (whose
        gradient then takes ``decay * p``, the weight decay, first)."""
        groups: dict[bool, tuple[list[Tensor], list[Tensor]]] = {True: ([], []), False: ([], [])}
        bufs = []
        for p, g, both in zip(params, grads, paired):
            state = self.state[p]
            if key not in state:
                state[key] = torch.clone(g).detach()
            else:
                groups[both][0].append(state[key])
                groups[both][1].append(g if both or decay == 0 else g.add(p, alpha=decay))
            bufs.append(state[key])
        for both, (old, new_grads) in groups.items():
            if old:
                torch._foreach_mul_(old, paired_momentum if both else single_momentum)
                torch._foreach_add_(old, new_grads)
        return bufs

    def unscale_held(self, scaler: "torch.amp.GradScaler") -> None:
        """Divide the held (scaled) distillation gradients by ``scaler``'s scale, and when one
        is not finite put a NaN into a task gradient, so that the scaler's own check (over the
        task gradients, in ``scaler.step``) skips the step and lowers the scale for both. No
        host sync."""
        held = self.held_gradients()
        task = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not held or not task:
            return
        scale = scaler.scale(torch.ones((), device=held[0].device))
        inverse = scale.double().reciprocal().float()
        torch._foreach_mul_(held, inverse)
        bad = torch.stack([~torch.isfinite(g).all() for g in held]).any()
        task[0].add_(torch.where(bad, float("nan"), 0.0).to(task[0].dtype))

    def backward_and_step(self, loss: SplitLoss, scaler: "torch.amp.GradScaler | None" = None) -> None:
        """The whole DOT step of ``loss``: the distillation loss's backward (its graph kept),
        its gradients held, the task loss's backward, one :meth:`step` (through ``scaler``
        when given: both losses scaled alike, both gradients checked). Under torchrun each
        backward's gradients are averaged over processes (``loss.sync``) before they are
        used."""
        if loss is None:
            raise TypeError("DOT steps a loss given apart as task and distillation (a SplitLoss); "
                            "this step returned one total")
        params = [p for group in self.param_groups for p in group["params"]]
        scale = scaler.scale if scaler is not None else (lambda t: t)
        self.zero_grad(set_to_none=True)
        scale(loss.distill).backward(retain_graph=True)
        if loss.sync is not None:
            loss.sync(params)
        self.hold_distillation_gradients()
        scale(loss.task).backward()
        if loss.sync is not None:
            loss.sync(params)
        if scaler is None:
            self.step()
            return
        self.unscale_held(scaler)
        scaler.step(self)
        scaler.update()
        self._held = {}  # a skipped step leaves them


def average_gradients(params: Sequence[Tensor], all_reduce_sum: Callable[[Tensor], Tensor],
                      world_size: int) -> None:
    """What DDP's backward does, for a step whose forward ran without it: every parameter's
    gradient replaced by its mean over the ``world_size`` processes (a process on which it
    has none adds zeros; it stays None where no process has one), in one all-reduce
    (``all_reduce_sum``: :meth:`helper.distributed.DistContext.all_reduce_sum`) and one host
    sync (which parameters have a gradient). Every process must call it at the same point
    with the same parameters."""
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device,
                           dtype=grads[0].dtype)
    total = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads] + [present]))
    sums, counts = total[:-len(params)], total[-len(params):].tolist()
    offset = 0
    for p, count in zip(params, counts):
        n = p.numel()
        if count > 0:
            p.grad = sums[offset:offset + n].view_as(p).div_(world_size)
        offset += n
