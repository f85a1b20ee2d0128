"""Data-parallel training: torchrun detection, data sharding, exact gathered evaluation, and the
entry scripts under ``torchrun --nproc_per_node=2`` on the CPU (gloo), compared with one process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import train_student
import train_teacher
import validation
from dataset.device_loader import DeviceLoader
from dataset.sharding import Shard, ShardSampler
from dataset.torchvision_loader import TorchvisionLoader
from helper.distributed import DistContext, context_from_env, env_world_size
from helper.errors import UserError
from engine.loops import DeviceMeter, validate
from engine.config import optimization_config
from tests.cifar_fixtures import write_fake_cifar100

ROOT = Path(__file__).resolve().parents[1]
TEACHER = os.path.join("save", "models", "resnet8_cifar100_lr_0.05_decay_0.0005_trial_0",
                       "resnet8_last.pth")
FAST = ["--batch_size", "16", "--print_freq", "4", "--seed", "0", "--num_workers", "0"]
CPU = torch.device("cpu")


# ---- torchrun detection and the learning-rate rule ------------------------------------------

def test_context_from_env():
    single = context_from_env("cpu", {})
    assert (single.rank, single.world_size, single.enabled, single.is_main) == (0, 1, False, True)
    assert env_world_size({}) == 1 and env_world_size({"WORLD_SIZE": "4"}) == 4
    ctx = context_from_env("auto" if not torch.cuda.is_available() else "cpu",
                           {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.device) == (1, 2, 1, CPU)
    assert ctx.enabled and not ctx.is_main
    with pytest.raises(UserError, match="torchrun"):
        context_from_env("cpu", {"WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="cuda:LOCAL_RANK"):
        context_from_env("cuda:1", {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match="WORLD_SIZE"):
        context_from_env("cpu", {"WORLD_SIZE": "two"})


def test_single_process_context_is_a_no_op():
    ctx = DistContext(CPU)
    x = torch.arange(4.0)
    total = ctx.all_reduce_sum(x)
    assert torch.equal(total, x) and total is not x  # a copy: running sums stay untouched
    assert ctx.all_gather(x) is x
    model = nn.Linear(2, 2)
    assert ctx.wrap(model) is model and ctx.enable_sync(model) is model
    ctx.broadcast_buffers(model)
    ctx.barrier()


def test_learning_rate_scales_linearly_with_processes():
    def lr(world_size, **flags):
        defaults = vars(train_teacher.build_parser().parse_args([]))  # every flag left out
        optim = optimization_config({**defaults, **flags}, "resnet8", world_size)
        return optim.base_learning_rate, optim.learning_rate

    assert lr(1) == (0.05, 0.05)
    assert lr(4) == (0.05, 0.2)
    assert lr(4, no_lr_scale=True) == (0.05, 0.05)
    assert lr(2, learning_rate=0.3) == (0.3, 0.6)
    # ImageNet: 0.1 per 256 images of the global batch, applied once
    assert lr(4, dataset="imagenet", batch_size=64) == (0.025, 0.1)
    assert lr(8, dataset="imagenet") == (0.1, 0.8)
    assert lr(8, dataset="imagenet", no_lr_scale=True) == (0.1, 0.1)


def test_sync_bn_conversion_keeps_the_checkpoint_layout():
    from engine.trainer import place_model
    from models import model_dict

    model = model_dict["represnet8"](num_classes=10)
    keys = list(model.state_dict())
    assert place_model(model, DistContext(CPU), sync_bn=True) is model  # one process: nothing to sync
    with pytest.raises(UserError, match="CUDA"):
        place_model(model, DistContext(CPU, rank=0, world_size=2), sync_bn=True)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert list(synced.state_dict()) == keys


# ---- DDP needs no unused-parameter search in the usual runs --------------------------------

def _method(name: str, weights: dict[str, float]):
    from distiller_zoo import build_method, get_method
    from engine.distill import StudentLoss, freeze, set_trainable
    from models import model_dict

    torch.manual_seed(0)
    teacher = freeze(model_dict["resnet14"](num_classes=10))  # same widths: fsp, kdsvd build
    student = model_dict["resnet8"](num_classes=10)
    opt = Namespace(kd_T=4.0, logit_stand=False, feat_dim=16, nce_k=8, nce_t=0.07, nce_m=0.5,
                    mode="exact", hint_layer=2, batch_size=8, model_s="resnet8", dkd_alpha=1.0,
                    dkd_beta=8.0, dkd_T=4.0, dkd_warmup=20)
    preact = get_method(name).needs_preact
    x = torch.randn(8, 3, 32, 32)
    student.eval()
    with torch.no_grad():
        feat_s, _ = student(x[:2], is_feat=True, preact=preact)
        feat_t, _ = teacher(x[:2], is_feat=True, preact=preact)
    method = build_method(name, opt, student, teacher, feat_s, feat_t, 64)
    set_trainable([method], method.trainable_modules())  # as train_student's main stage
    return StudentLoss(student, method, weights), teacher, x


@pytest.mark.parametrize("name", ["kd", "hint", "crd", "semckd", "vid", "factor", "abound", "fsp",
                                  "srrl", "correlation", "attention", "dkd"])
def test_every_trainable_parameter_gets_a_gradient(name):
    """What lets DDP run with ``find_unused_parameters=False``: with every loss term weighted,
    one step gives a gradient to every parameter that requires one."""
    loss_module, teacher, x = _method(name, {"cls": 1.0, "div": 1.0, "kd": 1.0})
    assert not loss_module.may_leave_parameters_unused()
    loss_module.train()
    preact = loss_module.method.needs_preact
    with torch.no_grad():
        feat_t, logit_t = teacher(x, is_feat=True, preact=preact)
    index = torch.arange(8)
    contrast = torch.cat([index[:, None], torch.randint(0, 64, (8, 8))], dim=1)
    loss, _ = loss_module(x, feat_t, logit_t, torch.arange(8) % 10, 1, index, contrast)
    loss.backward()
    unused = [n for n, p in loss_module.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_unused_parameter_search_only_where_needed():
    assert not _method("kd", {"cls": 0.1, "div": 0.9, "kd": 0.0})[0].may_leave_parameters_unused()
    assert _method("hint", {"cls": 0.1, "div": 0.9, "kd": 0.0})[0].may_leave_parameters_unused()
    assert _method("kd", {"cls": 0.0, "div": 0.0, "kd": 1.0})[0].may_leave_parameters_unused()


# ---- sharding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(10, 3), (9, 3), (2, 4), (7, 1)])
def test_shards_are_disjoint_and_complete(n, world):
    train = [Shard(r, world, pad=True).positions(n).tolist() for r in range(world)]
    test = [Shard(r, world, pad=False).positions(n).tolist() for r in range(world)]
    assert len({len(p) for p in train}) == 1  # equal sizes: the collectives of every step pair up
    assert set(i for p in train for i in p) == set(range(n))
    assert sum(len(p) for p in train) - n < world  # padding repeats fewer than W positions
    assert sorted(i for p in test for i in p) == list(range(n))  # exact: each position once
    assert [len(ShardSampler(n, Shard(r, world, pad=False))) for r in range(world)] == \
        [len(p) for p in test]
    with pytest.raises(UserError):
        Shard(world, world)


def _device_loader(shard: Shard, shuffle: bool = True, n: int = 22) -> DeviceLoader:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 5
    return DeviceLoader(images, labels, batch_size=4, mean=(0.5,) * 3, std=(0.25,) * 3,
                        shuffle=shuffle, augment=shuffle, padding=2, seed=3, with_indices=True,
                        shard=shard)


def test_device_loader_shards_one_process_epoch():
    """The ranks' batches of an epoch: same count on every rank, disjoint samples (up to the
    padding), together the whole split, each sample augmented as in a one-process run."""
    single = {}
    loader = _device_loader(Shard())
    loader.set_epoch(5)
    for x, _, idx in loader:
        single.update({int(i): img for i, img in zip(idx, x)})
    seen: list[int] = []
    lengths = set()
    for rank in range(3):
        loader = _device_loader(Shard(rank, 3))
        loader.set_epoch(5)
        batches = list(loader)
        lengths.add((len(loader), len(batches)))
        for x, _, idx in batches:
            for i, img in zip(idx.tolist(), x):
                torch.testing.assert_close(img, single[i], rtol=0, atol=0)
                seen.append(i)
    assert len(lengths) == 1
    assert set(seen) == set(range(22)) and len(seen) == 24  # 22 padded to 3 x 8


def test_device_loader_test_shards_are_exact():
    seen = []
    for rank in range(3):
        for _, _, idx in _device_loader(Shard(rank, 3, pad=False), shuffle=False):
            seen += idx.tolist()
    assert sorted(seen) == list(range(22))


def test_torchvision_loader_shards():
    data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10))
    orders = []
    for rank in range(2):
        loader = TorchvisionLoader(data, batch_size=3, shuffle=True, num_workers=0, seed=1,
                                   shard=Shard(rank, 2))
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        epochs = []
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            epochs.append([int(v) for _, y in loader for v in y])
        assert epochs[0] != epochs[1]  # set_epoch reaches the sampler
        orders.append(epochs[0])
    assert sorted(orders[0] + orders[1]) == list(range(10))
    test = [[int(v) for _, y in TorchvisionLoader(data, batch_size=3, shuffle=False, num_workers=0,
                                                  shard=Shard(r, 3, pad=False)) for v in y]
            for r in range(3)]
    assert test == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_shard_sums_add_up_to_the_whole_split():
    """What the all-reduce in ``validate(..., dist)`` adds: the per-shard sums of loss x n,
    top-1, top-5 and n equal those of the whole split."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    whole = validate(model, _device_loader(Shard(), shuffle=False), CPU, dist=DistContext(CPU))
    total = torch.zeros(4, dtype=torch.float64)
    for rank in range(3):
        meter = DeviceMeter(CPU)
        with torch.no_grad():
            for x, y, _ in _device_loader(Shard(rank, 3, pad=False), shuffle=False):
                logits = model(x)
                meter.update(nn.functional.cross_entropy(logits, y), logits, y)
        total += meter.sums
    meter.sums = total
    assert total[3] == 22
    assert meter.read() == pytest.approx(whole)


# ---- the scripts under torchrun -----------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Small CIFAR-100 files and a one-epoch resnet8 teacher, trained in one process."""
    root = tmp_path_factory.mktemp("ddp")
    write_fake_cifar100(root / "data", n_train=256, n_test=100, seed=0)
    old = os.getcwd()
    os.chdir(root)
    try:
        train_teacher.main(["--model", "resnet8", "--epochs", "1", *FAST])
    finally:
        os.chdir(old)
    return root


def torchrun(script: str, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 <script> <args>``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def files_under(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, names in os.walk(folder) for f in names)


@pytest.mark.slow
def test_ddp_student_matches_one_process_and_resumes_single(workdir, monkeypatch, capsys):
    """crd on two gloo processes: teacher and student accuracies equal one-process evaluations
    of the same weights; rank 0 alone prints and writes; the run resumes in one process."""
    monkeypatch.chdir(workdir)
    before = set(files_under("save"))
    proc = torchrun("train_student.py", "--path_t", TEACHER, "--model_s", "resnet8",
                    "--distill", "crd", "-r", "0.1", "-a", "0.9", "-b", "0.8", "--nce_k", "64",
                    "--epochs", "1", "--trial", "ddp", *FAST, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    folder = os.path.join("save", "student_model", "S_resnet8_T_resnet8_cifar100_crd_r_0.1_a_0.9_b_0.8_ddp")
    tb = os.path.join("save", "student_tensorboards", os.path.basename(folder))
    new = sorted(set(files_under("save")) - before)
    assert [f for f in new if f.startswith(os.path.relpath(folder, "save"))] == [
        os.path.join(os.path.relpath(folder, "save"), name)
        for name in ("resnet8_best.pth", "resnet8_last.pth", "test_last_metrics.json", "train.log")]
    assert len([f for f in new if f.startswith(os.path.relpath(tb, "save"))]) == 1  # one event file
    assert not [f for f in files_under(".") if os.path.basename(f).startswith(".tmp")]

    # printed once (rank 0), with the accuracy of one process over the whole test split
    teacher_lines = [line for line in out if line.startswith("teacher resnet8")]
    assert len(teacher_lines) == 1 and len([line for line in out if line.startswith("epoch")]) == 1
    assert "x 2 processes" in proc.stdout and "lr 0.1 " in proc.stdout  # 0.05 x 2
    capsys.readouterr()
    teacher_acc = validation.main(["--model", "resnet8", "--model_path", TEACHER])
    assert teacher_lines[0].endswith(f"test accuracy: {teacher_acc:.2f}")

    metrics = json.load(open(os.path.join(folder, "test_last_metrics.json")))
    last = os.path.join(folder, "resnet8_last.pth")
    ckpt = torch.load(last, weights_only=True)
    assert not any(k.startswith("module.") for k in [*ckpt["model"], *ckpt["method"]])
    assert ckpt["config"]["world_size"] == 2
    acc = validation.main(["--model", "resnet8", "--model_path", last, "--batch_size", "16"])
    assert acc == metrics["test_acc"] == ckpt["accuracy"]

    # --resume with another world size: one process continues the two-process run
    resumed = train_student.main(["--path_t", TEACHER, "--model_s", "resnet8", "--distill", "crd",
                                  "-r", "0.1", "-a", "0.9", "-b", "0.8", "--nce_k", "64", "--epochs", "2",
                                  "--trial", "ddp",
                                  "--resume", *FAST])
    assert resumed["epoch"] == 2 and "resumed from" in capsys.readouterr().out


@pytest.mark.slow
def test_ddp_nan_stops_every_rank(workdir):
    """train_teacher.py on two processes: a NaN loss stops both ranks at the same step; nothing
    is saved (a new run: a resume may not change --learning_rate) and the teacher is untouched."""
    last = workdir / TEACHER
    before = last.read_bytes()
    proc = torchrun("train_teacher.py", "--model", "resnet8", "--epochs", "2",
                    "--learning_rate", "1e30", *FAST, cwd=workdir)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("loss became nan" in line for line in errors), proc.stderr[-3000:]
    assert last.read_bytes() == before
    nan_run = workdir / "save" / "models" / "resnet8_cifar100_lr_1e+30_decay_0.0005_trial_0"
    assert nan_run.is_dir() and [p.name for p in nan_run.iterdir()] == ["train.log"]  # no checkpoint
    assert "loss became nan" in (nan_run / "train.log").read_text()
