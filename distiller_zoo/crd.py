"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

``CRDLoss(opt)`` (``opt``: a :class:`CRDConfig`, or any object with its attributes) embeds the
student and teacher penultimate features (``embed_s`` / ``embed_t``, trained with the student),
scores each positive and ``nce_k`` negatives drawn from a momentum memory bank
(``ContrastMemory``) and applies the NCE-style ``ContrastLoss`` in both directions (teacher as
anchor and student as anchor), as in the CRD code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .modules import Embed

EPS = 1e-7


class AliasSampler(nn.Module):
    """Walker's alias method for O(1) draws from a fixed discrete distribution (the CRD code's
    ``AliasMethod``, same float32 tables and draws); the tables are non-persistent buffers so
    they follow ``.to(device)``."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        probs = probs.float()
        if probs.sum() > 1:
            probs = probs / probs.sum()
        n = len(probs)
        prob = (np.float32(n) * probs.numpy().astype(np.float32)).astype(np.float32)
        alias = np.zeros(n, dtype=np.int64)
        smaller = [i for i in range(n) if prob[i] < 1.0]
        larger = [i for i in range(n) if prob[i] >= 1.0]
        while smaller and larger:
            small, large = smaller.pop(), larger.pop()
            alias[small] = large
            prob[large] = (prob[large] - np.float32(1.0)) + prob[small]
            (smaller if prob[large] < 1.0 else larger).append(large)
        for i in smaller + larger:
            prob[i] = 1.0
        self.register_buffer("prob", torch.from_numpy(prob), persistent=False)
        self.register_buffer("alias", torch.from_numpy(alias), persistent=False)

    def draw(self, n: int) -> torch.Tensor:
        """``n`` indices drawn from the distribution."""
        kk = torch.zeros(n, dtype=torch.long, device=self.prob.device).random_(0, self.alias.numel())
        keep = torch.bernoulli(self.prob.index_select(0, kk))
        return kk.mul(keep.long()) + self.alias.index_select(0, kk).mul((1 - keep).long())


#: What each normalization constant divides: the scores of one side's embeddings against the
#: other side's memory bank.
_Z_SCORES = {"Z_v1": "student embeddings scored against the teacher's memory bank",
             "Z_v2": "teacher embeddings scored against the student's memory bank"}


def z_message(name: str, value: float) -> str:
    """The line printed when the NCE normalization constant ``name`` (``Z_v1``/``Z_v2``) is
    estimated, once per run: what it is and its value."""
    return (f"CRD: NCE normalization constant {name} ({_Z_SCORES[name]}) estimated from the first "
            f"batch as mean exp-score x training images = {value:.1f}; kept for the run")


class ContrastMemory(nn.Module):
    """Memory bank of ``output_size`` embeddings per side, updated with momentum.

    ``forward(v1, v2, y, idx)`` scores student embeddings ``v1`` against the teacher bank and
    teacher embeddings ``v2`` against the student bank at rows ``idx`` (positive first), returns
    ``(out_v1, out_v2)`` of shape ``(bsz, K + 1, 1)`` divided by the normalisation constants Z
    (fixed at the first call), then writes the momentum update of rows ``y``.

    The ``params`` buffer keeps the CRD code's layout ``[K, T, Z_v1, Z_v2, momentum]`` (so its
    checkpoints load unchanged), but the per-step forward never reads it back to the host:

    * ``K``, ``T`` and ``momentum`` are mirrored as Python attributes, read from the buffer at
      construction, after ``load_state_dict`` and after a dtype change (``.double()``, ...),
      i.e. the values the CRD code would read with ``.item()`` on every step;
    * Z_v1 / Z_v2 stay on the device: every call computes
      ``where(Z < 0, mean(exp-scores) * n_data, Z)``, writes it into the buffer and divides by
      that tensor (same float value as dividing by the host copy), so an unset Z (-1, e.g. an
      old checkpoint saved before the first step) is filled from the next batch as before;
    * the one-time message of each Z (:func:`z_message`) is printed only on a call where a
      host-side flag says Z was unset (derived from the buffer at construction / load /
      dtype change, never per step); printing the value costs one host read on that call only.
      A Z reset by writing the buffer directly (without ``load_state_dict``) is re-estimated
      silently.

    In a data-parallel run, ``dist_context`` (set by
    :meth:`helper.distributed.DistContext.enable_sync`) makes every process apply the memory
    updates of all processes' batches, in rank order, and take Z from the mean of their
    estimates, so the banks stay the same everywhere; None (the default) keeps it local.
    """

    def __init__(self, input_size: int, output_size: int, K: int, T: float = 0.07,
                 momentum: float = 0.5) -> None:
        super().__init__()
        self.n_lem = output_size
        self.dist_context = None  # a helper.distributed.DistContext: share updates across processes
        self.multinomial = AliasSampler(torch.ones(output_size))
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        # host mirror of the buffer, built on the CPU so a default device (cuda, meta) costs no read
        self._set_host_params(torch.tensor([K, T, -1, -1, momentum], device="cpu").tolist())
        stdv = 1.0 / math.sqrt(input_size / 3)
        for key in ("memory_v1", "memory_v2"):
            self.register_buffer(key, torch.rand(output_size, input_size).mul_(2 * stdv).add_(-stdv))

    def _set_host_params(self, values: list[float]) -> None:
        K, T, z_v1, z_v2, momentum = values
        self.K = int(K)
        self.T = T
        self.momentum = momentum
        self._announce_z = (z_v1 < 0, z_v2 < 0)

    def _refresh_host_params(self) -> None:
        """Re-read ``K``, ``T``, ``momentum`` and the unset-Z flags from ``params`` (one host
        read; never called per step)."""
        if self.params.is_meta or self.params.numel() != 5:
            return
        self._set_host_params(self.params.detach().tolist())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if prefix + "params" in state_dict:
            self._refresh_host_params()

    def _apply(self, fn, recurse=True):
        dtype = self.params.dtype
        out = super()._apply(fn, recurse)
        if self.params.dtype != dtype:  # values were rounded to the new dtype (e.g. ``.half()``)
            self._refresh_host_params()
        return out

    @staticmethod
    def _scores(memory: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, T: float) -> torch.Tensor:
        bsz, dim = v.shape
        weight = torch.index_select(memory, 0, idx.reshape(-1)).detach().view(bsz, -1, dim)
        return torch.exp(torch.div(torch.bmm(weight, v.reshape(bsz, dim, 1)), T))

    @torch.no_grad()
    def _normalizers(self, out_v1: torch.Tensor, out_v2: torch.Tensor) -> torch.Tensor:
        """``[Z_v1, Z_v2]`` on the device: unset (negative) entries of ``params`` take this
        batch's estimate ``mean(out) * n_data`` (rounded to the buffer's dtype, as the CRD code's
        assignment does); the result is written back into ``params`` and returned as a fresh
        tensor (so later in-place writes to the buffer never touch a saved autograd input)."""
        z = self.params[2:4]
        estimate = torch.stack((out_v1.mean(), out_v2.mean())) * self.memory_v1.size(0)
        if self.dist_context is not None and (self._announce_z[0] or self._announce_z[1]):
            # the host flags are the same on every process: all of them take part
            estimate = self.dist_context.all_reduce_sum(estimate) / self.dist_context.world_size
        z_new = torch.where(z < 0, estimate.to(z.dtype), z)
        z.copy_(z_new)
        if self._announce_z[0] or self._announce_z[1]:
            values = z_new.tolist()  # one host read, on the call that sets Z only
            for name, unset, value in zip(("Z_v1", "Z_v2"), self._announce_z, values):
                if unset:
                    print(z_message(name, value))
            self._announce_z = (False, False)
        return z_new

    @torch.no_grad()
    def _update(self, memory: torch.Tensor, y: torch.Tensor, v: torch.Tensor, momentum: float) -> None:
        pos = torch.index_select(memory, 0, y.reshape(-1)).mul_(momentum).add_(v.detach() * (1 - momentum))
        memory.index_copy_(0, y.reshape(-1), pos.div(pos.pow(2).sum(1, keepdim=True).pow(0.5)))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor,
                idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        K, T, momentum = self.K, self.T, self.momentum
        bsz = v1.size(0)
        if idx is None:
            idx = self.multinomial.draw(bsz * (K + 1)).view(bsz, -1)
            idx.select(1, 0).copy_(y.data)
        idx = idx.reshape(bsz, K + 1)
        out_v2 = self._scores(self.memory_v1, idx, v2, T)
        out_v1 = self._scores(self.memory_v2, idx, v1, T)
        z = self._normalizers(out_v1, out_v2)
        out_v1 = torch.div(out_v1, z[0]).contiguous()
        out_v2 = torch.div(out_v2, z[1]).contiguous()
        if self.dist_context is not None:  # every process's rows, in rank order
            gather = self.dist_context.all_gather
            y, v1, v2 = gather(y.reshape(-1)), gather(v1.detach()), gather(v2.detach())
        self._update(self.memory_v1, y, v1, momentum)
        self._update(self.memory_v2, y, v2, momentum)
        return out_v1, out_v2


class ContrastLoss(nn.Module):
    """NCE loss of CRD's Eq. (18): positives against noise ``P_n = 1 / n_data``; returns a
    0-dim tensor (the CRD code returns a 1-element tensor of the same value)."""

    def __init__(self, n_data: int) -> None:
        super().__init__()
        self.n_data = n_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz = x.shape[0]
        m = x.size(1) - 1
        noise = m * (1 / float(self.n_data))
        p_pos = x.select(1, 0)
        log_d1 = torch.div(p_pos, p_pos.add(noise + EPS)).log()
        p_neg = x.narrow(1, 1, m)
        log_d0 = torch.div(torch.full_like(p_neg, noise), p_neg.add(noise + EPS)).log()
        return -(log_d1.sum() + log_d0.sum()) / bsz


@dataclass(frozen=True)
class CRDConfig:
    """What a :class:`CRDLoss` is built from: the pooled feature sizes ``s_dim`` / ``t_dim``,
    the training-set size ``n_data``, the embedding size ``feat_dim``, and ``nce_k`` negatives,
    temperature ``nce_t`` and memory momentum ``nce_m`` (the CRD code's option names)."""

    s_dim: int
    t_dim: int
    n_data: int
    feat_dim: int
    nce_k: int
    nce_t: float
    nce_m: float


class CRDLoss(nn.Module):
    """CRD loss; ``opt`` (a :class:`CRDConfig`, or the CRD code's options object) carries
    ``s_dim``, ``t_dim``, ``feat_dim``, ``nce_k``, ``nce_t``, ``nce_m`` and ``n_data`` (the
    memory bank holds ``n_data x feat_dim`` per side)."""

    def __init__(self, opt) -> None:
        super().__init__()
        self.embed_s = Embed(opt.s_dim, opt.feat_dim)
        self.embed_t = Embed(opt.t_dim, opt.feat_dim)
        self.contrast = ContrastMemory(opt.feat_dim, opt.n_data, opt.nce_k, opt.nce_t, opt.nce_m)
        self.criterion_t = ContrastLoss(opt.n_data)
        self.criterion_s = ContrastLoss(opt.n_data)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        f_s = self.embed_s(f_s)
        f_t = self.embed_t(f_t)
        out_s, out_t = self.contrast(f_s, f_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)
