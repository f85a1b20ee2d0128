"""Train a teacher network from scratch (cross-entropy), as in the CRD/RepDistiller benchmark.

Example::

    python train_teacher.py --model resnet32x4
    python train_teacher.py --model resnet20 --dataset digits --epochs 10 --lr_decay_epochs 6,8

Outputs (relative to the current directory):
``save/models/<model>_<dataset>_lr_<lr>_decay_<wd>_trial_<trial>/`` with ``ckpt_epoch_<N>.pth``
(every ``--save_freq`` epochs and at the final epoch), ``<model>_best.pth`` and
``<model>_last.pth``; TensorBoard scalars in ``save/teacher_tensorboards/<same name>/``.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from dataset import get_dataloaders, num_classes
from helper.errors import exit_on_user_error
from helper.distill import compile_fn
from helper.options import (add_data_flags, add_optimization_flags, add_run_flags,
                            finalize_device, finalize_optimization)
from helper.trainer import Progress, Run, fit, make_optimizer, resume
from helper.util import resolve_device, set_seed
from models import build_model, check_model_name, model_dict


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a teacher network.")
    parser.add_argument("--model", type=str, default="resnet110", help=f"one of: {', '.join(model_dict)}")
    parser.add_argument("--trial", type=str, default="0", help="the experiment id")
    parser.add_argument("--save_freq", type=int, default=40, help="save ckpt_epoch_<N>.pth every N epochs")
    add_optimization_flags(parser)
    add_data_flags(parser)
    add_run_flags(parser)
    opt = parser.parse_args(argv)
    check_model_name(opt.model)
    finalize_optimization(opt, opt.model)
    opt.model_name = (f"{opt.model}_{opt.dataset}_lr_{opt.learning_rate}_decay_{opt.weight_decay}"
                      f"_trial_{opt.trial}")
    opt.save_folder = os.path.join("save", "models", opt.model_name)
    opt.tb_folder = os.path.join("save", "teacher_tensorboards", opt.model_name)
    return opt


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    opt = parse_option(argv)
    set_seed(opt.seed)
    device = resolve_device(opt.device)
    finalize_device(opt, device)
    train_loader, test_loader, _ = get_dataloaders(
        opt.dataset, batch_size=opt.batch_size, num_workers=opt.num_workers,
        data_folder=opt.data_folder, loader=opt.loader, device=device, seed=opt.seed or 0,
        channels_last=opt.channels_last)
    model = build_model(opt.model, num_classes=num_classes(opt.dataset)).to(device)
    if opt.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), opt)

    def forward_loss(images, target):
        logits = model(images)
        return F.cross_entropy(logits, target), logits

    step = compile_fn(forward_loss, device) if opt.compile else forward_loss

    def compute_loss(batch):
        return step(batch.images, batch.target)

    run = Run(name=opt.model, save_folder=opt.save_folder, train_modules=[model], eval_model=model,
              optimizer=optimizer, compute_loss=compute_loss, state_modules={"model": model},
              extra_state={"arch": opt.model}, save_freq=opt.save_freq)
    progress = Progress()
    if opt.resume:
        progress = resume(run, run.last_path if opt.resume == "auto" else opt.resume)

    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(opt.save_folder, exist_ok=True)
    with SummaryWriter(opt.tb_folder) as writer:
        print(f"training {opt.model} on {opt.dataset} for {opt.epochs} epochs on {device}; "
              f"saving to {opt.save_folder}")
        last = fit(run, opt, train_loader, test_loader, device, writer, progress, desc=opt.model)
    print(f"best accuracy: {progress.best_acc:.2f}")
    return last


if __name__ == "__main__":
    main()
