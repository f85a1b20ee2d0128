"""Train a teacher network from scratch (cross-entropy), as in the CRD/RepDistiller benchmark.

Example::

    python train_teacher.py --model resnet32x4
    python train_teacher.py --model resnet20 --dataset digits --epochs 10 --lr_decay_epochs 6,8
    torchrun --nproc_per_node=8 train_teacher.py --model resnet34 --dataset imagenet \
        --data_folder /data/imagenet

Outputs (relative to the current directory):
``save/models/<model>_<dataset>_lr_<lr>_decay_<wd>_trial_<trial>/`` with ``ckpt_epoch_<N>.pth``
(every ``--save_freq`` epochs and at the final epoch), ``<model>_best.pth`` and
``<model>_last.pth``; TensorBoard scalars in ``save/teacher_tensorboards/<same name>/``.
``<lr>`` is the learning rate of one process; under torchrun rank 0 alone writes.
"""
from __future__ import annotations

import argparse
import contextlib
import os

import torch.nn.functional as F

from dataset import get_dataloaders, num_classes
from engine.distill import compile_fn
from helper.distributed import DistContext, distributed, env_world_size
from helper.errors import exit_on_user_error
from engine.options import (add_data_flags, add_optimization_flags, add_run_flags, check_flag_values,
                            finalize_device, finalize_optimization, print_config, resolved_config)
from helper.logging_utils import LOG_FILE, tee_to
from helper.run_folder import claimed
from engine.fit import EvaluateAndSave, LoopSettings, Member, fit, raise_failures
from engine.loops import make_grad_scaler
from engine.stepping import OwnSteps
from engine.trainer import Run, make_optimizer, place_model, report_members, start_members
from helper.util import data_seed, set_seed
from models import imagenet_model_dict, model_dict, zoo_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a teacher network.")
    parser.add_argument("--model", type=str, default="resnet110",
                        help=f"CIFAR: {', '.join(model_dict)}; ImageNet: {', '.join(imagenet_model_dict)}")
    parser.add_argument("--trial", type=str, default="0", help="the experiment id")
    parser.add_argument("--save_freq", type=int, default=40, help="save ckpt_epoch_<N>.pth every N epochs")
    add_optimization_flags(parser)
    add_data_flags(parser)
    add_run_flags(parser)
    return parser


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    opt = build_parser().parse_args(argv)
    zoo_for(opt.dataset).check_name(opt.model, "--model")
    finalize_optimization(opt, opt.model, env_world_size())
    opt.model_name = (f"{opt.model}_{opt.dataset}_lr_{opt.base_learning_rate}_decay_{opt.weight_decay}"
                      f"_trial_{opt.trial}")
    opt.save_folder = os.path.join("save", "models", opt.model_name)
    opt.tb_folder = os.path.join("save", "teacher_tensorboards", opt.model_name)
    check_flag_values(opt)
    return opt


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the teacher in this process (one of several under torchrun); returns the last test
    metrics. Its folder is claimed first and everything printed from then on (the error line
    too) goes into its ``train.log``."""
    opt = parse_option(argv)
    if opt.print_config:
        print_config(teacher_config(opt))
        return {}
    with distributed(opt.device, opt.dist_timeout) as dist, contextlib.ExitStack() as held:
        held.enter_context(claimed(opt.save_folder, opt.tb_folder, opt.resume, opt.overwrite,
                                   teacher_config(opt), enabled=dist.is_main))
        if dist.is_main:
            held.enter_context(tee_to(os.path.join(opt.save_folder, LOG_FILE)))
        member, stepping, test_loader = prepare(opt, dist)
        start_members([member], opt.resume, dist, [teacher_config(opt)], held)
        processes = f" x {dist.world_size} processes" if dist.enabled else ""
        print(f"training {opt.model} on {opt.dataset} for {opt.epochs} epochs on {dist.device}"
              f"{processes}; saving to {opt.save_folder}")
        settings = LoopSettings.from_options(opt, opt.model)
        fit([member], stepping, EvaluateAndSave(test_loader, dist, settings), opt.epochs, settings, dist)
        report_members([member])
        raise_failures([member])
        return member.last


def teacher_config(opt: argparse.Namespace) -> dict:
    """The resolved configuration (``--print_config``; saved with the run's results)."""
    return resolved_config(opt, build_parser(), save_folder=opt.save_folder)


def prepare(opt: argparse.Namespace, dist: DistContext) -> tuple[Member, OwnSteps, object]:
    """Data, model, optimizer and loss of the teacher run: ``(member, stepping, test_loader)``."""
    set_seed(opt.seed)
    device = dist.device
    finalize_device(opt, device)
    train_loader, test_loader, _ = get_dataloaders(
        opt.dataset, batch_size=opt.batch_size, num_workers=opt.num_workers,
        data_folder=opt.data_folder, loader=opt.loader, device=device, seed=data_seed(opt.seed, opt.trial),
        channels_last=opt.channels_last, rank=dist.rank, world_size=dist.world_size)
    model = zoo_for(opt.dataset).build(opt.model, num_classes=num_classes(opt.dataset, opt.data_folder))
    model = place_model(model, dist, sync_bn=opt.sync_bn, channels_last=opt.channels_last)
    optimizer = make_optimizer(model.parameters(), opt)
    trained = dist.wrap(model)

    def forward_loss(images, target):
        logits = trained(images)
        return F.cross_entropy(logits, target), logits

    step = compile_fn(forward_loss, device) if opt.compile else forward_loss
    run = Run(name=opt.model, save_folder=opt.save_folder, train_modules=[model], eval_model=model,
              optimizer=optimizer, state_modules={"model": model}, extra_state={"arch": opt.model},
              save_freq=opt.save_freq)
    member = Member(opt, run, train_loader, scaler=make_grad_scaler(device, opt.amp))
    return member, OwnSteps([lambda batch, epoch: step(batch.images, batch.target)]), test_loader


if __name__ == "__main__":
    main()
