"""CRD contrast memory without host syncs in the training step.

``ContrastMemory`` must not read its ``params`` buffer (K, T, Z_v1, Z_v2, momentum) back to the
host on every step, yet give bit-identical values to the CRD code (Tian et al., ICLR 2020),
whose memory reads every constant with ``.item()`` per step. ``RefCRD`` below restates that
code's maths (host scalars read from the buffer each step) as the reference.
"""
from __future__ import annotations

import argparse
import io

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import distiller_zoo as dz
from distiller_zoo.crd import z_message

N_DATA, S_DIM, T_DIM, FEAT, K, BSZ = 200, 16, 32, 16, 20, 6


def make_opt(**kw):
    base = dict(s_dim=S_DIM, t_dim=T_DIM, feat_dim=FEAT, n_data=N_DATA, nce_k=K, nce_t=0.07,
                nce_m=0.5)
    base.update(kw)
    return argparse.Namespace(**base)


def make_crd(seed=0, **kw):
    torch.manual_seed(seed)
    return dz.CRDLoss(make_opt(**kw))


def batches(n, seed=1, dtype=torch.float32):
    """``n`` batches (f_s, f_t, idx, contrast_idx) with random negatives, positive first."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        f_s = torch.randn(BSZ, S_DIM, generator=g).to(dtype)
        f_t = torch.randn(BSZ, T_DIM, generator=g).to(dtype)
        idx = torch.randperm(N_DATA, generator=g)[:BSZ]
        contrast_idx = torch.randint(0, N_DATA, (BSZ, K + 1), generator=g)
        contrast_idx[:, 0] = idx
        out.append((f_s, f_t, idx, contrast_idx))
    return out


class RefCRD:
    """The CRD code's forward/update maths on a copy of a ``CRDLoss``'s current state: every
    constant is read from ``params`` with ``.item()`` on each step, Z is set from the first
    batch when negative, the loss keeps the CRD code's 1-element shape."""

    def __init__(self, crd: dz.CRDLoss) -> None:
        sd = {k: v.detach().clone() for k, v in crd.state_dict().items()}
        self.w_s = sd["embed_s.linear.weight"].requires_grad_()
        self.b_s = sd["embed_s.linear.bias"].requires_grad_()
        self.w_t = sd["embed_t.linear.weight"].requires_grad_()
        self.b_t = sd["embed_t.linear.bias"].requires_grad_()
        self.params = sd["contrast.params"]
        self.memory_v1 = sd["contrast.memory_v1"]
        self.memory_v2 = sd["contrast.memory_v2"]
        self.n_data = crd.criterion_s.n_data
        self.messages = []

    def zero_grad(self):
        for p in (self.w_s, self.b_s, self.w_t, self.b_t):
            p.grad = None

    def grads(self):
        return [p.grad for p in (self.w_s, self.b_s, self.w_t, self.b_t)]

    @staticmethod
    def _embed(x, w, b):
        x = F.linear(x.view(x.shape[0], -1), w, b)
        return x.div(x.pow(2).sum(1, keepdim=True).pow(1.0 / 2))

    def _nce(self, x):
        bsz, m = x.shape[0], x.size(1) - 1
        pn = 1 / float(self.n_data)
        p_pos = x.select(1, 0)
        log_d1 = torch.div(p_pos, p_pos.add(m * pn + 1e-7)).log_()
        p_neg = x.narrow(1, 1, m)
        log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + 1e-7)).log_()
        return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz

    def _memory(self, v1, v2, y, idx):
        k = int(self.params[0].item())
        temp = self.params[1].item()
        z_v1 = self.params[2].item()
        z_v2 = self.params[3].item()
        momentum = self.params[4].item()
        bsz, dim = v1.shape
        n = self.memory_v1.size(0)
        w1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).detach().view(bsz, k + 1, dim)
        out_v2 = torch.exp(torch.div(torch.bmm(w1, v2.view(bsz, dim, 1)), temp))
        w2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).detach().view(bsz, k + 1, dim)
        out_v1 = torch.exp(torch.div(torch.bmm(w2, v1.view(bsz, dim, 1)), temp))
        with torch.no_grad():
            if z_v1 < 0:
                self.params[2] = out_v1.mean() * n
                z_v1 = self.params[2].item()
                self.messages.append(z_message("Z_v1", z_v1))  # the CRD code's value, our wording
            if z_v2 < 0:
                self.params[3] = out_v2.mean() * n
                z_v2 = self.params[3].item()
                self.messages.append(z_message("Z_v2", z_v2))  # the CRD code's value, our wording
        out_v1 = torch.div(out_v1, z_v1).contiguous()
        out_v2 = torch.div(out_v2, z_v2).contiguous()
        with torch.no_grad():
            for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                pos = torch.index_select(memory, 0, y.view(-1))
                pos.mul_(momentum)
                pos.add_(torch.mul(v, 1 - momentum))
                norm = pos.pow(2).sum(1, keepdim=True).pow(0.5)
                memory.index_copy_(0, y, pos.div(norm))
        return out_v1, out_v2

    def __call__(self, f_s, f_t, y, idx):
        v1 = self._embed(f_s, self.w_s, self.b_s)
        v2 = self._embed(f_t, self.w_t, self.b_t)
        out_s, out_t = self._memory(v1, v2, y, idx)
        return self._nce(out_s) + self._nce(out_t)


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def step(crd, batch, backward=True):
    crd.zero_grad()
    loss = crd(*batch)
    if backward:
        loss.backward()
    return loss.detach().clone(), [p.grad.clone() for p in crd.parameters()] if backward else []


def ref_step(ref, batch):
    ref.zero_grad()
    loss = ref(*batch)
    loss.backward()
    return loss.detach().view(()), [g.clone() for g in ref.grads()]


def assert_state_matches(crd, ref):
    c = crd.contrast
    assert bits_equal(c.params, ref.params)
    assert bits_equal(c.memory_v1, ref.memory_v1)
    assert bits_equal(c.memory_v2, ref.memory_v2)


def run_and_compare(crd, ref, data):
    for batch in data:
        loss, grads = step(crd, batch)
        ref_loss, ref_grads = ref_step(ref, batch)
        assert bits_equal(loss, ref_loss), (loss.item(), ref_loss.item())
        assert all(bits_equal(g, r) for g, r in zip(grads, ref_grads))
        assert_state_matches(crd, ref)


# ----- (1) same values, to the bit, as the CRD code's maths -----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_three_steps_match_reference_bitwise(dtype, capsys):
    crd = make_crd().to(dtype)
    ref = RefCRD(crd)
    assert bits_equal(crd.contrast.params[2:4], torch.tensor([-1.0, -1.0], dtype=dtype))
    run_and_compare(crd, ref, batches(3, dtype=dtype))
    assert crd.contrast.params[2].item() > 0 and crd.contrast.params[3].item() > 0
    # the one-time message, printed exactly once, as the CRD code prints it
    printed = capsys.readouterr().out.splitlines()
    assert printed == ref.messages and len(printed) == 2


def test_memory_outputs_match_reference_bitwise():
    crd = make_crd()
    ref = RefCRD(crd)
    for f_s, f_t, y, idx in batches(3):
        v1, v2 = crd.embed_s(f_s), crd.embed_t(f_t)
        out = crd.contrast(v1, v2, y, idx)
        ref_out = ref._memory(ref._embed(f_s, ref.w_s, ref.b_s), ref._embed(f_t, ref.w_t, ref.b_t),
                              y, idx)
        assert all(bits_equal(a.detach(), b.detach()) for a, b in zip(out, ref_out))
        assert_state_matches(crd, ref)


def test_sampled_negatives_match_reference_bitwise():
    """``contrast_idx=None``: negatives drawn by the alias sampler, same draws as the CRD code
    (the reference receives the indices the sampler drew under the same RNG state)."""
    crd = make_crd()
    ref = RefCRD(crd)
    for i, (f_s, f_t, y, _) in enumerate(batches(3)):
        torch.manual_seed(100 + i)
        drawn = crd.contrast.multinomial.draw(BSZ * (K + 1)).view(BSZ, -1)
        drawn.select(1, 0).copy_(y)
        torch.manual_seed(100 + i)
        loss, _ = step(crd, (f_s, f_t, y, None))
        ref_loss, _ = ref_step(ref, (f_s, f_t, y, drawn))
        assert bits_equal(loss, ref_loss)
        assert_state_matches(crd, ref)


def test_buffer_layout_unchanged():
    crd = make_crd()
    sd = crd.state_dict()
    assert [k for k in sd if k.startswith("contrast.")] == [
        "contrast.params", "contrast.memory_v1", "contrast.memory_v2"]
    assert sd["contrast.params"].shape == (5,) and sd["contrast.params"].dtype == torch.float32
    assert bits_equal(sd["contrast.params"], torch.tensor([K, 0.07, -1, -1, 0.5]))
    assert sd["contrast.memory_v1"].shape == sd["contrast.memory_v2"].shape == (N_DATA, FEAT)
    c = crd.contrast
    assert (c.K, c.T, c.momentum) == (K, torch.tensor(0.07).item(), 0.5)


# ----- (2) no host syncs after the first step -----

class _NoSyncMode(TorchDispatchMode):
    """Raises on the aten ops that read a tensor back to the host or need its values to size an
    output (what ``.item()``, ``bool(t)``, boolean masks, ``torch.equal`` dispatch to)."""

    BANNED = {"_local_scalar_dense", "is_nonzero", "item", "equal", "nonzero", "masked_select",
              "_unique", "_unique2", "unique_dim", "unique_consecutive", "allclose"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.BANNED:
            raise AssertionError(f"host sync: aten.{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


def _raise(*args, **kwargs):
    raise AssertionError("host sync")


def forbid_syncs(monkeypatch):
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__",
                 "__complex__", "numpy", "__array__", "__format__"):
        monkeypatch.setattr(torch.Tensor, name, _raise)


def test_detector_catches_item(monkeypatch):
    """The guards below do catch the per-step ``.item()`` reads of the CRD code's memory."""
    crd = make_crd()
    ref = RefCRD(crd)
    data = batches(2)
    ref(*data[0])
    with monkeypatch.context() as m:
        forbid_syncs(m)
        with pytest.raises(AssertionError, match="host sync"):
            ref(*data[1])
    with _NoSyncMode(), pytest.raises(AssertionError, match="host sync"):
        ref(*data[1])


@pytest.mark.parametrize("sampled", [False, True])
def test_no_host_sync_after_first_step(monkeypatch, capsys, sampled):
    crd = make_crd()
    ref = RefCRD(crd)
    data = batches(4)
    torch.manual_seed(7)
    first = step(crd, data[0] if not sampled else (*data[0][:3], None))
    results = []
    with monkeypatch.context() as m:
        forbid_syncs(m)
        with _NoSyncMode():
            for batch in data[1:]:
                crd.zero_grad()
                loss = crd(*batch) if not sampled else crd(*batch[:3], None)
                loss.backward()
                results.append((loss.detach().clone(), [p.grad.clone() for p in crd.parameters()]))
    assert capsys.readouterr().out.count("normalization constant") == 2  # first step only
    if not sampled:  # the guarded steps still compute the reference values
        expected = [ref_step(ref, b) for b in data]
        assert bits_equal(first[0], expected[0][0])
        for (loss, grads), (ref_loss, ref_grads) in zip(results, expected[1:]):
            assert bits_equal(loss, ref_loss)
            assert all(bits_equal(g, r) for g, r in zip(grads, ref_grads))
        assert_state_matches(crd, ref)


def test_losses_of_two_steps_backpropagate_together():
    """Z is divided as a fresh tensor, so writing ``params`` on the next step does not
    invalidate the previous step's graph (the CRD code divides by host floats)."""
    crd = make_crd()
    a, b = batches(2)
    total = crd(*a) + crd(*b)
    total.backward()
    assert all(p.grad is not None for p in crd.parameters())


# ----- (3) state dict round trip -----

def test_state_dict_round_trip_continues_identically(capsys):
    data = batches(4)
    crd = make_crd()
    for batch in data[:2]:
        step(crd, batch)
    buf = io.BytesIO()
    torch.save(crd.state_dict(), buf)
    buf.seek(0)
    capsys.readouterr()
    fresh = make_crd(seed=123)  # different memory and embeddings, Z unset
    fresh.load_state_dict(torch.load(buf))
    assert bits_equal(fresh.contrast.params, crd.contrast.params)
    assert fresh.contrast.params[2].item() > 0 and fresh.contrast._announce_z == (False, False)
    ref = RefCRD(crd)
    for batch in data[2:]:
        loss_a, grads_a = step(crd, batch)
        loss_b, grads_b = step(fresh, batch)
        ref_loss, ref_grads = ref_step(ref, batch)
        assert bits_equal(loss_a, loss_b) and bits_equal(loss_b, ref_loss)
        assert all(bits_equal(x, y) for x, y in zip(grads_b, ref_grads))
        assert all(bits_equal(x, y) for x, y in zip(grads_a, grads_b))
    assert bits_equal(fresh.contrast.params, crd.contrast.params)
    assert capsys.readouterr().out == ""  # Z was loaded, not re-estimated


def test_old_state_dict_with_unset_z_initializes_on_next_step(capsys, monkeypatch):
    data = batches(3)
    crd = make_crd()
    step(crd, data[0])  # Z set, host flags cleared
    old = {k: v.clone() for k, v in make_crd(seed=5).state_dict().items()}  # Z still -1
    assert bits_equal(old["contrast.params"][2:4], torch.tensor([-1.0, -1.0]))
    crd.load_state_dict(old)
    assert bits_equal(crd.contrast.params[2:4], torch.tensor([-1.0, -1.0]))
    assert crd.contrast._announce_z == (True, True)
    capsys.readouterr()
    ref = RefCRD(crd)
    run_and_compare(crd, ref, data[1:2])  # Z estimated from this batch
    assert (crd.contrast.params[2:4] > 0).all()
    assert capsys.readouterr().out.splitlines() == ref.messages and len(ref.messages) == 2
    with monkeypatch.context() as m:  # later steps are sync-free again
        forbid_syncs(m)
        with _NoSyncMode():
            loss = crd(*data[2])
            loss.backward()
    ref_loss = ref(*data[2])
    assert bits_equal(loss.detach(), ref_loss.detach().view(()))


def test_partially_unset_z_only_fills_that_entry(capsys):
    data = batches(2)
    crd = make_crd()
    step(crd, data[0])
    sd = crd.state_dict()
    sd["contrast.params"] = sd["contrast.params"].clone()
    sd["contrast.params"][3] = -1
    crd.load_state_dict(sd)
    assert crd.contrast._announce_z == (False, True)
    capsys.readouterr()
    ref = RefCRD(crd)
    run_and_compare(crd, ref, data[1:])
    out = capsys.readouterr().out.splitlines()
    assert out == ref.messages and len(out) == 1 and "Z_v2" in out[0]


def test_loaded_constants_are_used():
    """K, T and momentum come from the loaded buffer (the CRD code reads them from it each
    step), and a dtype change re-reads them as rounded to the new dtype."""
    src = make_crd(seed=3, nce_t=0.1, nce_m=0.7)
    crd = make_crd()
    crd.load_state_dict(src.state_dict())
    c = crd.contrast
    assert (c.K, c.T, c.momentum) == (K, torch.tensor(0.1).item(), torch.tensor(0.7).item())
    run_and_compare(crd, RefCRD(crd), batches(2))
    crd.to(torch.bfloat16)
    assert c.T == torch.tensor(0.1, dtype=torch.bfloat16).item()
    crd.to(torch.float32)
    assert c.T == torch.tensor(0.1, dtype=torch.bfloat16).item()  # the buffer keeps bf16 values
