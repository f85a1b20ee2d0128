"""The N students of ``--trials`` as one stacked model: every step a single forward and backward.

``torch.func.stack_module_state`` stacks the students' parameters and buffers along a new
leading dimension and ``torch.func.vmap`` runs the architecture once over all of them: a conv
over N students becomes one grouped conv with N times the channels, a batch norm one batch norm
over N times the channels (each student's statistics and running averages kept to itself), the
loss one call over ``(N, batch, classes)`` logits. It is the "fewer and larger kernels" idea of the
fast path applied across trials: at batch 64 a GPU is latency-bound, so N students cost about
what one costs. On a CPU the grouped kernels are slower than N plain ones (represnet20, 2 trials
at batch 64: 3.4 s vs 2.5 s per step), so ``--trials_mode auto`` stacks on CUDA only.

The students stay ordinary modules: after stacking, each student's parameters and buffers are
views of its slice of the stacked tensors, so its ``state_dict()`` (checkpoints, evaluation)
reads, and ``load_state_dict()`` (resume) writes, the stack. One SGD steps all stacked
parameters; :class:`TrialOptimizer` presents trial k's slice of its state as the state dict of a
separate run's optimizer, so each trial's checkpoint is exactly a separate run's checkpoint.

Stacking needs a method without parameters, buffers, init stage or sample indices whose loss
vmap can batch: kd, kdrefine, dkd, attention, similarity, pkt, nst and kdsvd. The others train
with a shared teacher forward and one step per trial (:mod:`engine.trials`).
"""
from __future__ import annotations

import copy
import warnings
from typing import Mapping

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from engine.distill import detached, weighted_sum
from engine.loops import Batch, StepOutput


def can_stack(method: nn.Module) -> bool:
    """Whether ``method`` can run under ``vmap`` for stacked students: its loss has batching
    rules (``stackable``), it owns no parameters or buffers (nothing per trial to stack) and
    needs no init stage, sample indices or strong view."""
    return (method.stackable and not any(True for _ in method.parameters())
            and not any(True for _ in method.buffers())
            and not method.has_init_stage and not method.needs_index and not method.needs_strong_view)


def _bind(student: nn.Module, stacked: Mapping[str, torch.Tensor], index: int, kind: str) -> None:
    """Point every parameter (``kind='_parameters'``) or buffer of ``student`` at slice ``index``
    of its stacked tensor (a plain view without autograd history)."""
    for name, tensor in stacked.items():
        owner_name, _, attr = name.rpartition(".")
        owner = student.get_submodule(owner_name)
        with torch.no_grad():
            view = tensor[index]
        if kind == "_parameters":
            view = nn.Parameter(view, requires_grad=False)  # still a view: shares the storage
        getattr(owner, kind)[attr] = view


class StackedStudents(nn.Module):
    """The students of all trials as one vmapped model (see the module docstring).

    Args:
        students: same architecture, same device; their current weights become the stack.
    """

    def __init__(self, students: list[nn.Module]) -> None:
        super().__init__()
        for student in students:
            student.train()  # stacking wants one mode; the stacked forward's mode is set by train()
        params, buffers = stack_module_state(students)
        self.names = list(params)
        self.stacked_params = nn.ParameterList([nn.Parameter(params[n]) for n in self.names])
        self.buffer_names = list(buffers)
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer{i}", buffers[name])
        self.template = [copy.deepcopy(students[0]).to("meta")]  # a list: not a submodule
        for k, student in enumerate(students):
            _bind(student, dict(zip(self.names, self.stacked_params)), k, "_parameters")
            _bind(student, self.stacked_buffers(), k, "_buffers")

    def train(self, mode: bool = True) -> "StackedStudents":
        """Train/eval mode of the stacked forward (the template's, which ``functional_call`` runs)."""
        super().train(mode)
        self.template[0].train(mode)
        return self

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"buffer{i}") for i, name in enumerate(self.buffer_names)}

    def functional(self, params: dict, buffers: dict, images: torch.Tensor, **kwargs):
        """One student's forward with the given (unstacked, inside vmap) tensors."""
        return functional_call(self.template[0], (params, buffers), (images,), kwargs)


class StackedStep:
    """``(batches of the N trials) -> (per-trial losses (N,), logits (N, B, classes))``: one
    teacher forward over all batches, one vmapped student forward and loss. A
    :class:`~engine.loops.StepOutput`: its ``terms`` are the method's per-trial terms, ``(N,)``
    each (unweighted, detached)."""

    def __init__(self, stacked: StackedStudents, teacher_step, method: nn.Module,
                 weights: Mapping[str, float]) -> None:
        self.stacked = stacked
        self.teacher_step = teacher_step  # a DistillStep: its teacher_outputs
        self.method = method
        self.weights = dict(weights)

    def _one(self, params, buffers, images, feat_t, logit_t, target, epoch):
        if self.method.needs_feats:
            feat_s, logit_s = self.stacked.functional(params, buffers, images, is_feat=True,
                                                      preact=self.method.needs_preact)
        else:
            feat_s, logit_s = None, self.stacked.functional(params, buffers, images)
        terms = self.method(feat_s, logit_s, feat_t, logit_t, target, epoch)
        return weighted_sum(terms, self.weights), logit_s, detached(terms)

    def __call__(self, batches: list[Batch], epoch: int) -> StepOutput:
        n, b = len(batches), batches[0].images.size(0)
        images = torch.stack([x.images for x in batches])
        target = torch.stack([x.target for x in batches])
        feat_t, logit_t = self.teacher_step.teacher_outputs(images.flatten(0, 1))
        logit_t = logit_t.unflatten(0, (n, b))
        if feat_t is not None:
            feat_t = [f.unflatten(0, (n, b)) for f in feat_t]
        params = dict(zip(self.stacked.names, self.stacked.stacked_params))
        in_dims = (0, 0, 0, None if feat_t is None else 0, 0, 0, None)
        with warnings.catch_warnings():  # kl_div has no batching rule: vmap loops over it, and says so
            warnings.filterwarnings("ignore", message="There is a performance drop")
            losses, logits, terms = vmap(self._one, in_dims=in_dims, randomness="different")(
                params, self.stacked.stacked_buffers(), images, feat_t, logit_t, target, epoch)
        return StepOutput(losses, logits, terms)


class TrialOptimizer:
    """Trial ``index``'s slice of an optimizer over stacked parameters, with the state-dict
    surface of the SGD a separate run would hold (``param_groups`` are the shared ones)."""

    def __init__(self, stacked_optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                 index: int) -> None:
        self.stacked_optimizer = stacked_optimizer
        self.params = params
        self.index = index

    @property
    def param_groups(self) -> list[dict]:
        return self.stacked_optimizer.param_groups

    def state_dict(self) -> dict:
        state = {}
        for i, p in enumerate(self.params):
            buf = self.stacked_optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                state[i] = {"momentum_buffer": buf[self.index].clone()}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": list(range(len(self.params)))} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        for i, p in enumerate(self.params):
            buf = state_dict["state"].get(i, {}).get("momentum_buffer")
            if buf is None:
                continue
            slot = self.stacked_optimizer.state[p]
            if slot.get("momentum_buffer") is None:
                slot["momentum_buffer"] = torch.zeros_like(p)
            with torch.no_grad():
                slot["momentum_buffer"][self.index].copy_(buf)
