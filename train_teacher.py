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
from engine.config import TeacherConfig, build_teacher_config, check_architecture, dataset_zoo, flat, on_device
from engine.options import (OneLineParser, add_data_flags, add_optimization_flags, add_original_flags,
                            add_run_flags, check_flag_values, counted, print_config, resolved_config)
from helper.logging_utils import LOG_FILE, tee_to
from helper.plugins import add_plugin_flag, import_plugins
from helper.run_folder import claimed
from engine.fit import EvaluateAndSave, LoopSettings, LossFn, Member, fit, raise_failures
from engine.loops import make_grad_scaler
from engine.trainer import Run, check_resume, make_optimizer, place_model, report_members, start_members
from helper.util import data_seed, set_seed
from models import imagenet_model_dict, model_dict


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="train_teacher.py", description="Train a teacher network.")
    parser.add_argument("--model", type=str, default="resnet110",
                        help=f"CIFAR: {', '.join(model_dict)}; ImageNet: {', '.join(imagenet_model_dict)}")
    parser.add_argument("--trial", type=str, default="0", help="the experiment id")
    parser.add_argument("--save_freq", type=int, default=40, help="save ckpt_epoch_<N>.pth every N epochs")
    add_optimization_flags(parser)
    add_data_flags(parser)
    add_run_flags(parser)
    add_original_flags(parser, student=False)
    add_plugin_flag(parser)
    return parser


def parse_option(argv: list[str] | None = None) -> TeacherConfig:
    """The configuration of the flags (:func:`engine.config.build_teacher_config`), checked;
    the ``--plugin`` modules are imported first, so that their registrations are choices."""
    import_plugins(argv)
    flags = vars(build_parser().parse_args(argv))
    check_architecture(dataset_zoo(flags["dataset"]), flags["model"], "--model")
    config = build_teacher_config(flags, env_world_size())
    check_flag_values(flat(config))
    return config


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train the teacher in this process (one of several under torchrun); returns the last test
    metrics. Its inputs (data, model) are read and checked first, so that a run refused for
    them leaves no folder; then its folder is claimed, and everything printed from then on
    (the error line too) goes into its ``train.log``."""
    config = parse_option(argv)
    run = config.run
    if run.print_config:
        print_config(teacher_config(config))
        return {}
    with distributed(run.device, run.dist_timeout) as dist, contextlib.ExitStack() as held:
        config = on_device(config, dist.device)
        check_resume(config, config.model.model)  # --resume continues this run, or one line
        member, loss, test_loader = prepare(config, dist)  # before any folder is made
        held.enter_context(claimed(config.save_folder, config.tb_folder, run.resume, run.overwrite,
                                   teacher_config(config), enabled=dist.is_main))
        if dist.is_main:
            held.enter_context(tee_to(os.path.join(config.save_folder, LOG_FILE)))
        start_members([member], run.resume, dist, [teacher_config(config)], held)
        processes = f" x {dist.world_size} processes" if dist.enabled else ""
        print(f"training {config.model.model} on {config.data.dataset} for {counted(config.optim.epochs, 'epoch')} on "
              f"{dist.device}{processes}; saving to {config.save_folder}")
        settings = LoopSettings.from_config(config, config.model.model)
        fit(member, loss, EvaluateAndSave(test_loader, dist, settings), config.optim.epochs, settings, dist)
        report_members([member])
        raise_failures([member])
        return member.last


def teacher_config(config: TeacherConfig) -> dict:
    """The resolved configuration (``--print_config``; saved with the run's results)."""
    return resolved_config(config, build_parser())


def prepare(config: TeacherConfig, dist: DistContext) -> tuple[Member, LossFn, object]:
    """Data, model, optimizer and loss of the teacher run: ``(member, loss, test_loader)``."""
    run, data, arch = config.run, config.data, config.model.model
    set_seed(run.seed)
    device = dist.device
    train_loader, test_loader, _ = get_dataloaders(
        data.dataset, batch_size=config.optim.batch_size, num_workers=data.num_workers,
        data_folder=data.data_folder, loader=data.loader, device=device, seed=data_seed(run.seed, run.trial),
        channels_last=run.channels_last, rank=dist.rank, world_size=dist.world_size)
    model = config.zoo().build(arch, num_classes=num_classes(data.dataset, data.data_folder))
    model = place_model(model, dist, sync_bn=run.sync_bn, channels_last=run.channels_last)
    optimizer = make_optimizer(model.parameters(), config.optim)
    trained = dist.wrap(model)

    def forward_loss(images, target):
        logits = trained(images)
        return F.cross_entropy(logits, target), logits

    step = compile_fn(forward_loss, device) if run.compile else forward_loss
    trained_run = Run(name=arch, save_folder=config.save_folder, train_modules=[model], eval_model=model,
                      optimizer=optimizer, state_modules={"model": model}, extra_state={"arch": arch},
                      save_freq=run.save_freq)
    member = Member(config, trained_run, train_loader, scaler=make_grad_scaler(device, run.amp))
    return member, lambda batch, epoch: step(batch.images, batch.target), test_loader


if __name__ == "__main__":
    main()
