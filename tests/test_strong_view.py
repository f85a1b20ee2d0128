"""MLKD's strong view (:mod:`dataset.strong_augment`): batched on the device, pixel-identical to
the authors' PIL pipeline for the same draws (``tests/fixtures/peer_reference/mlkd_strong_view.json``,
made by running their transform; README there) and to Pillow for every operation; the loaders'
weak/strong pairs."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import dataset as D
from dataset import strong_augment as S
from dataset.device_loader import DeviceLoader, augment_batch, crop_flip, normalize_batch, strong_batch

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "peer_reference",
                       "mlkd_strong_view.json")


def fixture_images(n: int) -> np.ndarray:
    """The fixture's images (its ``images`` entry says how they are made)."""
    x = np.random.RandomState(0).randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    x[::3] = (x[::3] // 16 * 16 + 40).astype(np.uint8)
    x[1::5] = np.linspace(0, 255, 32).astype(np.uint8)[None, :, None]
    return x


def plan_of(crop, flips, ops, magnitudes, cutout) -> S.StrongPlan:
    ops, magnitudes = torch.as_tensor(ops), torch.as_tensor(magnitudes, dtype=torch.float64)
    derived = S.resampling(ops.numpy(), magnitudes.numpy(), 32, 32)
    return S.StrongPlan(torch.as_tensor(crop), torch.as_tensor(flips), ops, magnitudes,
                        torch.as_tensor(cutout, dtype=torch.float64), *(torch.from_numpy(a) for a in derived))


def test_strong_view_equals_the_authors_pipeline():
    """For the draws the authors' transform made (crop, flip, two RandAugment operations and
    their magnitudes, Cutout), the batched strong view is their normalized tensor bit for bit;
    every operation occurs."""
    ref = json.load(open(FIXTURE))
    entries = ref["entries"]
    assert {op for e in entries for op in e["ops"]} == set(range(len(S.OPS)))
    plan = plan_of([e["crop"] for e in entries], [e["flip"] for e in entries], [e["ops"] for e in entries],
                   [e["magnitudes"] for e in entries], [e["cutout"] for e in entries])
    images = torch.from_numpy(fixture_images(len(entries))).permute(0, 3, 1, 2).contiguous()
    ours = strong_batch(images, plan, ref["mean"], ref["std"])
    for k, entry in enumerate(entries):
        assert hashlib.sha256(ours[k].contiguous().numpy().tobytes()).hexdigest() == entry["sha256"], k


@pytest.mark.parametrize("op", [name for name, _, _ in S.OPS])
def test_each_operation_matches_pillow(op):
    """Every operation, first or second, on images with many, few and one level(s) per channel
    and on a ramp (a padded crop's black border included), equals Pillow's pixel for pixel."""
    n = 24
    gen = torch.Generator().manual_seed(S.OP_INDEX[op])
    images = torch.from_numpy(fixture_images(n)).permute(0, 3, 1, 2).contiguous()
    images[2] = 77  # one level
    plan = S.draw_strong_plan(n, gen, 32, 32)
    ops, magnitudes = plan.ops.clone(), plan.magnitudes.clone()
    _, low, high = S.OPS[S.OP_INDEX[op]]
    forced = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
    ops[: n // 2, 0] = ops[n // 2:, 1] = S.OP_INDEX[op]
    magnitudes[: n // 2, 0], magnitudes[n // 2:, 1] = forced[: n // 2], forced[n // 2:]
    plan = plan_of(plan.crop_offsets, plan.flip_mask, ops, magnitudes, plan.cutout)
    cropped = crop_flip(images, plan.crop_offsets, plan.flip_mask)
    ours = S.strong_images(cropped, plan)
    for k in range(n):
        pil = Image.fromarray(cropped[k].permute(1, 2, 0).numpy())
        ref = S.strong_view_pil(pil, plan.ops[k].tolist(), plan.magnitudes[k].tolist(), plan.cutout[k].tolist())
        assert np.array_equal(np.asarray(ref).transpose(2, 0, 1), ours[k].numpy()), (k, plan.ops[k].tolist())


def test_draws_follow_the_authors_distributions():
    n = 14000
    plan = S.draw_strong_plan(n, torch.Generator().manual_seed(0), 32, 32)
    counts = torch.bincount(plan.ops.flatten(), minlength=len(S.OPS)).double()
    expected = 2 * n / len(S.OPS)
    assert float(((counts - expected) ** 2 / expected).sum()) < 40  # 13 dof: P(chi2 > 40) ~ 1e-4
    low = torch.tensor([lo for _, lo, _ in S.OPS], dtype=torch.float64)[plan.ops]
    high = torch.tensor([hi for _, _, hi in S.OPS], dtype=torch.float64)[plan.ops]
    assert ((plan.magnitudes >= low) & (plan.magnitudes < high)).all()
    fraction, cx, cy = plan.cutout.unbind(1)
    assert 0 <= float(fraction.min()) and float(fraction.max()) < S.CUTOUT_MAX
    assert 1 < float(cx.min()) and float(cx.max()) <= 32 and 1 < float(cy.min()) and float(cy.max()) <= 32
    assert abs(float(plan.flip_mask.double().mean()) - 0.5) < 0.02
    assert not S.draw_strong_plan(100, torch.Generator(), 32, 32, flip=False).flip_mask.any()


def test_device_loader_yields_weak_and_strong_views():
    """With ``strong`` each batch's images are ``(weak, strong)``: the weak view as without it,
    the strong one that of the epoch's strong plan (its own crop and flip); both replay for an
    epoch and a seed, sharded ranks together give the unsharded epoch."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(40) % 7
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = DeviceLoader(images, labels, batch_size=16, mean=mean, std=std, seed=5, strong=True,
                          with_indices=True)
    plain = DeviceLoader(images, labels, batch_size=16, mean=mean, std=std, seed=5, with_indices=True)
    batches, plain_batches = list(loader), list(plain)
    weak = torch.cat([b[0][0] for b in batches])
    strong = torch.cat([b[0][1] for b in batches])
    assert torch.equal(weak, torch.cat([b[0] for b in plain_batches]))
    order = loader.epoch_plan(0).order
    assert torch.equal(torch.cat([b[2] for b in batches]), order)
    plan = loader.strong_plan(0)
    assert torch.equal(strong, strong_batch(images[order], plan, mean, std))
    assert not torch.equal(plan.crop_offsets, loader.epoch_plan(0).crop_offsets)
    loader.set_epoch(0)
    assert torch.equal(next(iter(loader))[0][1], strong[:16])
    assert not torch.equal(next(iter(loader))[0][1], strong[:16])  # epoch 1: other draws
    shards = [DeviceLoader(images, labels, batch_size=16, mean=mean, std=std, seed=5, strong=True,
                           shard=D.sharding.Shard(r, 2), with_indices=True) for r in range(2)]
    got = {int(i): s for sh in shards for b in sh for i, s in zip(b[2], b[0][1])}
    for pos, i in enumerate(order.tolist()):
        assert torch.equal(got[i], strong[pos])


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_loaders_give_the_pair(kind):
    """Both loader kinds yield (weak, strong) image pairs when asked, of the same shapes, and the
    test loader stays plain; the strong views differ from the weak ones more than crops do."""
    train, test, _ = D.get_dataloaders("digits", 64, 0, loader=kind, strong_view=True, seed=0,
                                       channels_last=True)
    (weak, strong), y, *_ = next(iter(train))
    assert weak.shape == strong.shape == (64, 3, 32, 32) and len(y) == 64
    assert strong.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(next(iter(test))[0], torch.Tensor)
    assert float((weak - strong).abs().mean()) > 0.1


def test_normalized_strong_view_is_to_tensor_and_normalize():
    """The strong view's last step is torchvision's ToTensor + Normalize of its uint8 pixels."""
    import torchvision.transforms.functional as TF

    images = torch.from_numpy(fixture_images(4)).permute(0, 3, 1, 2).contiguous()
    plan = S.draw_strong_plan(4, torch.Generator().manual_seed(3), 32, 32)
    u8 = S.strong_images(crop_flip(images, plan.crop_offsets, plan.flip_mask), plan)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    ours = strong_batch(images, plan, mean, std)
    for k in range(4):
        pil = Image.fromarray(u8[k].permute(1, 2, 0).numpy())
        assert torch.equal(ours[k], TF.normalize(TF.to_tensor(pil), mean, std))
    assert torch.equal(normalize_batch(crop_flip(images, plan.crop_offsets, plan.flip_mask), mean, std),
                       augment_batch(images, plan.crop_offsets, plan.flip_mask, mean, std))


def test_imagenet_has_no_strong_view(tmp_path):
    from helper.errors import UserError

    with pytest.raises(UserError, match="no strong view"):
        D.get_dataloaders("imagenet", 8, 0, tmp_path, loader="torchvision", strong_view=True)
