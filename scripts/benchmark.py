"""Training-step throughput of the classic path versus the fast path, in one process.

    python scripts/benchmark.py --teacher resnet110 --student represnet20 --distill kdrefine \\
        [--device cpu|cuda] [--steps N] [--json] [--amp] [--compile] [--trials N] [--data_folder DIR]

* classic: the CRD/KDrefine way — torchvision DataLoader (PIL transforms), separate branches in
  every rep block, fp32, eager, NCHW;
* fast: this project's defaults — device-resident data with batched augmentation, fused branch
  training where it pays (``fused="auto"``: on accelerators), channels_last, teacher
  under inference mode computing only what the method reads — plus ``--amp``/``--compile``.

Both run the real ``train_student.py`` step (:class:`engine.distill.DistillStep` inside
:func:`engine.fit.run_epoch`) on the same models, over generated CIFAR-100-format files when
no ``--data_folder`` is given (teacher and student are randomly initialized: speed does not
depend on the weights). Prints images/s of each, their ratio, the projected time of a 240-epoch
CIFAR-100 run (50,000 images per epoch, training steps only) and peak memory; ``--json`` prints
one JSON object instead. ``--trials N`` also times the fast path training N students at once as
``train_student.py --trials N`` does, and reports what the N runs cost in single runs
(``trials_cost_in_runs``: N when sharing gains nothing, 1 when the N runs are free).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_student  # noqa: E402
from dataset import get_dataloaders, get_sample_dataloaders, num_classes  # noqa: E402
from dataset.synthetic import FAKE_DATASET, write_fake_cifar100  # noqa: E402
from distiller_zoo import get_method, method_names  # noqa: E402
from distiller_zoo.methods import DEFAULT_METHOD  # noqa: E402
from engine.config import StudentConfig  # noqa: E402
from engine.distill import DistillStep, StudentParts, build_method_for, freeze, loss_weights  # noqa: E402
from engine.fit import LoopSettings, Member, run_epoch  # noqa: E402
from engine.loops import make_grad_scaler  # noqa: E402
from engine.options import counted  # noqa: E402
from engine.trainer import Run  # noqa: E402
from engine.trials import run_trials_epoch, stepping_for  # noqa: E402
from helper.distributed import DistContext  # noqa: E402
from helper.errors import UserError, exit_on_user_error  # noqa: E402
from helper.util import resolve_device  # noqa: E402
from models import build_model, check_model_name, is_rep_model  # noqa: E402

CIFAR_TRAIN_IMAGES = 50_000


def parse_option(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet110")
    parser.add_argument("--student", default="represnet20")
    parser.add_argument("--distill", default=DEFAULT_METHOD, choices=method_names())
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per path (compilation)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--data_folder", default=None,
                        help="folder with cifar-100-python/ (default: generated files)")
    parser.add_argument("--n_train", type=int, default=10_000, help="size of the generated train set")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="classic DataLoader workers (default: 0 on CPU, 4 on CUDA)")
    parser.add_argument("--amp", action="store_true", help="fast path: bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile")
    parser.add_argument("--trials", type=int, default=1,
                        help="also time the fast path training N students at once (train_student.py --trials)")
    parser.add_argument("--trials_mode", default="auto", choices=["auto", "stacked", "shared_teacher"],
                        help="how --trials trains (as train_student.py --trials_mode)")
    parser.add_argument("--dot", action="store_true",
                        help="step with DOT's optimizer (train_student.py --dot: two backward passes)")
    parser.add_argument("--skip_classic", action="store_true", help="measure the fast path only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opt = parser.parse_args(argv)
    check_model_name(opt.teacher, "--teacher")
    check_model_name(opt.student, "--student")
    return opt


def method_options(opt: argparse.Namespace) -> StudentConfig:
    """train_student.py's configuration (defaults and the method's recipe) for this student,
    method and batch size: what methods read."""
    return train_student.parse_option(["--path_t", f"{opt.teacher}_vanilla/ckpt_epoch_240.pth",
                                       "--model_s", opt.student, "--distill", opt.distill,
                                       "--batch_size", str(opt.batch_size), *(["--dot"] if opt.dot else [])])


class Steps:
    """``n`` batches of ``loader``, going round it as often as needed (with a length, for the
    bar); the timing sets ``n`` before each measured stretch."""

    def __init__(self, loader, n: int = 0) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(itertools.chain.from_iterable(itertools.repeat(self.loader)), self.n)


def build_trial(opt: argparse.Namespace, data_folder: str, device: torch.device, fast: bool, teacher: torch.nn.Module,
                seed: int) -> StudentParts:
    """Loader, student, method and step of one path (one trial of it)."""
    channels_last = fast  # the training scripts' default (engine.config.on_device)
    workers = opt.num_workers if opt.num_workers is not None else (4 if device.type == "cuda" else 0)
    mopt = method_options(opt)
    loader_kw = dict(batch_size=opt.batch_size, num_workers=workers, data_folder=data_folder,
                     loader="device" if fast else "torchvision", device=device, seed=seed,
                     channels_last=channels_last, drop_last=True)
    sampling = mopt.method.sampling()
    if sampling is not None:
        k, mode = sampling
        train_loader, _, n_data = get_sample_dataloaders(FAKE_DATASET, k=k, mode=mode, **loader_kw)
    else:
        strong = get_method(mopt.method.distill).needs_strong_view  # MLKD's weak/strong pair
        train_loader, _, n_data = get_dataloaders(FAKE_DATASET, strong_view=strong, **loader_kw)
    torch.manual_seed(seed)
    n_cls = num_classes(FAKE_DATASET)
    extra = {"fused": "auto" if fast else False} if is_rep_model(opt.student) else {}
    student = build_model(opt.student, num_classes=n_cls, **extra).to(device)
    if channels_last:
        student.to(memory_format=torch.channels_last)
    method = build_method_for(mopt, student, teacher, torch.randn(2, 3, 32, 32, device=device), n_data)
    step = DistillStep(student, teacher, method, loss_weights(mopt.method),
                       compile=fast and opt.compile, device=device, dot=mopt.optim.dot)
    return StudentParts(mopt, student, method, step, Steps(train_loader))


def calibrated(teacher: torch.nn.Module, batch_size: int, device: torch.device,
               batches: int = 4) -> torch.nn.Module:
    """``teacher`` with its BatchNorm running statistics set from a few batches of standard-normal
    images (the scale of normalized data): a randomly initialized teacher in eval mode otherwise
    keeps mean 0 / variance 1 statistics whose activations grow layer by layer, and a method
    whose loss is sensitive to the logits' scale (CTKD's learned temperature) goes NaN."""
    norms = [m for m in teacher.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    teacher.train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(batches):
            teacher(torch.randn(batch_size, 3, 32, 32, generator=generator).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return teacher


def run_path(opt: argparse.Namespace, data_folder: str, device: torch.device, fast: bool, trials: int = 1) -> dict:
    """Build one path (``trials`` students for ``--trials``); time ``opt.steps`` steps."""
    torch.manual_seed(0)
    channels_last = fast
    teacher = freeze(calibrated(build_model(opt.teacher, num_classes=num_classes(FAKE_DATASET)).to(device),
                                opt.batch_size, device))
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    parts = [build_trial(opt, data_folder, device, fast, teacher, seed=k) for k in range(trials)]
    amp = fast and opt.amp
    stepping, optimizers = stepping_for(parts, opt.trials_mode, device, amp)
    members = [Member(part.config, Run(name=opt.student, save_folder="", train_modules=[part.student, part.method],
                                    eval_model=part.student, optimizer=optimizer, state_modules={}),
                      part.train_loader, scaler=make_grad_scaler(device, amp))
               for part, optimizer in zip(parts, optimizers)]
    settings = LoopSettings(print_freq=0, amp=amp, channels_last=channels_last,
                            desc="fast" if fast else "classic")

    def timed(n: int) -> float:
        for part in parts:
            part.train_loader.n = n
        start = time.perf_counter()
        if len(members) == 1:  # the plain run's loop, as train_student.py takes it
            run_epoch(members[0], parts[0].step, 1, settings, DistContext(device))
        else:
            run_trials_epoch(members, stepping, 1, settings, DistContext(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed(opt.warmup)
    seconds = timed(opt.steps)
    failed = [member.failure for member in members if member.failure is not None]
    if failed:
        raise UserError(f"benchmark of --distill {opt.distill}: {failed[0]}; no figure reported "
                        "(a step that stopped is not a step)")
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"img_s": trials * opt.steps * opt.batch_size / seconds, "peak_mem_mb": peak}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({counted(torch.get_num_threads(), 'thread')})"


def duration(seconds: float) -> str:
    """``seconds`` in the unit a reader takes in at once: seconds, minutes, hours, or days
    with the hours beside them (``3.8 days (92.0 h)``, not ``5518.3 min``)."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    hours = seconds / 3600
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days ({hours:.1f} h)"


@exit_on_user_error
def main(argv=None) -> dict:
    opt = parse_option(argv)
    device = resolve_device(opt.device)
    with tempfile.TemporaryDirectory() as tmp:
        data_folder = opt.data_folder
        if data_folder is None:
            data_folder = tmp
            write_fake_cifar100(tmp, n_train=opt.n_train, n_test=100, seed=0)
        classic = None if opt.skip_classic else run_path(opt, data_folder, device, fast=False)
        fast = run_path(opt, data_folder, device, fast=True)
        several = run_path(opt, data_folder, device, fast=True, trials=opt.trials) if opt.trials > 1 else None
    result = {
        "device": device_name(device),
        "classic_img_s": round(classic["img_s"], 1) if classic else None,
        "fast_img_s": round(fast["img_s"], 1),
        "ratio": round(fast["img_s"] / classic["img_s"], 2) if classic else None,
        "projected_240_epochs_s": round(240 * CIFAR_TRAIN_IMAGES / fast["img_s"], 1),
        "peak_mem_mb": round(fast["peak_mem_mb"], 1),
        "config": {"teacher": opt.teacher, "student": opt.student, "distill": opt.distill,
                   "batch_size": opt.batch_size, "steps": opt.steps, "amp": opt.amp,
                   "compile": opt.compile, "trials_mode": opt.trials_mode, "dot": opt.dot},
    }
    if several:
        cell_s = 240 * CIFAR_TRAIN_IMAGES * opt.trials / several["img_s"]
        result.update(trials=opt.trials, trials_img_s=round(several["img_s"], 1),
                      trials_projected_240_epochs_s=round(cell_s, 1),
                      trials_cost_in_runs=round(cell_s / result["projected_240_epochs_s"], 2))
    if opt.json:
        print(json.dumps(result))
        return result
    print(f"{opt.teacher} -> {opt.student} ({opt.distill}{' + DOT' if opt.dot else ''}), batch {opt.batch_size}, "
          f"{opt.steps} timed steps, device {result['device']}")
    if classic:
        print(f"classic path (torchvision loader, separate branches, fp32, eager): "
              f"{classic['img_s']:10.1f} img/s")
    flags = " ".join(f for f, on in (("--amp", opt.amp), ("--compile", opt.compile)) if on)
    print(f"fast path (defaults{(' + ' + flags) if flags else ''}): {fast['img_s']:10.1f} img/s")
    if classic:
        print(f"speed-up: {result['ratio']:.2f}x")
    print(f"projected 240-epoch CIFAR-100 run (training steps): {duration(result['projected_240_epochs_s'])}")
    if several:
        print(f"--trials {opt.trials} (fast path, --trials_mode {opt.trials_mode}): {several['img_s']:10.1f} img/s "
              f"over all trials; the {opt.trials} runs cost {result['trials_cost_in_runs']:.2f} single runs")
    print(f"peak memory: {result['peak_mem_mb']:.0f} MB"
          + (" (process RSS)" if device.type == "cpu" else " (CUDA, fast path)"))
    return result


if __name__ == "__main__":
    main()
