"""Distill a student from a frozen teacher (KDrefine and the 17 methods of the CRD benchmark).

Example::

    python train_student.py --path_t save/models/resnet110_vanilla/ckpt_epoch_240.pth \\
        --distill kdrefine --model_s represnet20 -r 0.1 -a 0.9 -b 0 --trial 1

The loss is ``r * cls + a * div + b * kd`` over the named terms the method returns (CRD's
weighting). Outputs (relative to the current directory):
``save/student_model/S_<s>_T_<t>_<dataset>_<distill>_r_<r>_a_<a>_b_<b>_<trial>/`` with
``<s>_last.pth``, ``<s>_best.pth`` and ``test_last_metrics.json``; TensorBoard scalars in
``save/student_tensorboards/<same name>/``. ``--trials N`` trains trials ``--trial`` to
``--trial + N - 1`` in this one process, sharing the teacher's forward (:mod:`engine.trials`).

Under ``torchrun --nproc_per_node=N`` every process distills on its shard of the data: student
and method are wrapped together in one DistributedDataParallel, the teacher stays outside it,
frozen; rank 0 alone prints and writes.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from dataset import get_dataloaders, get_sample_dataloaders, num_classes, sample_k
from distiller_zoo import get_method, method_names
from distiller_zoo.methods import add_method_flags
from helper.checkpoint import (extract_state_dict, load_checkpoint, load_weights,
                               num_classes_from_state_dict, write_json_atomic)
from engine.distill import (DistillStep, InitStep, build_method_for, freeze, loss_weights, set_trainable,
                            trainable_only)
from helper.distributed import DistContext, distributed, env_world_size
from helper.errors import UserError, exit_on_user_error
from engine.loops import train_epoch, validate
from helper.naming import METRICS_FILE, STUDENT_SAVE_ROOT, run_name_of, teacher_arch_from_path
from helper.provenance import file_sha256, project_version
from helper.logging_utils import LOG_FILE, tee_to
from helper.run_folder import claimed
from engine.options import (add_data_flags, add_optimization_flags, add_run_flags, check_flag_values,
                            finalize_device, finalize_optimization, print_config, resolved_config)
from engine.trainer import Run, evaluate_saved, make_optimizer, place_model, train_run
from engine.trials import (Trial, check_trials_flags, raise_failures, stack_trials, train_trials,
                           trial_options)
from helper.util import data_seed, set_seed
from models import BLOCK_TYPES, imagenet_model_dict, model_dict, zoo_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Distill a student network from a teacher.")
    group = parser.add_argument_group("models")
    group.add_argument("--path_t", type=str, default=None, help="teacher checkpoint (.pth)")
    group.add_argument("--model_t", type=str, default=None,
                       help="the teacher's architecture, for a file that records none and lies in a "
                            "folder not named after it (default: the checkpoint's 'arch', else the folder name)")
    group.add_argument("--model_s", type=str, default="represnet20",
                       help=f"CIFAR: {', '.join(model_dict)}; ImageNet: {', '.join(imagenet_model_dict)}")
    group.add_argument("-t", "--blocktype", type=str, default="AMBB", choices=list(BLOCK_TYPES),
                       help="training-time block of re-parameterizable students")
    group = parser.add_argument_group("distillation")
    group.add_argument("--distill", type=str, default="kdrefine", choices=method_names())
    group.add_argument("--trial", type=str, default="1", help="the experiment id")
    group.add_argument("--trials", type=int, default=1,
                       help="train N students, trials --trial .. --trial+N-1 (seeds --seed .. --seed+N-1), "
                            "in one process against one teacher, whose forward they share")
    group.add_argument("--trials_mode", type=str, default="auto", choices=["auto", "stacked", "shared_teacher"],
                       help="stacked: the N students run as one vmapped model (one step for all; methods "
                            "without parameters); shared_teacher: one step per trial; auto: stacked on CUDA "
                            "where the method allows, else shared_teacher")
    group.add_argument("-r", "--gamma", type=float, default=None,
                       help="weight of the classification loss (default: the method's recipe, see README)")
    group.add_argument("-a", "--alpha", type=float, default=None,
                       help="weight of the KL divergence (default: the method's recipe)")
    group.add_argument("-b", "--beta", type=float, default=None,
                       help="weight of the method's own loss (default: the method's recipe)")
    group.add_argument("--kd_T", type=float, default=4, help="temperature of the KL divergence")
    group.add_argument("--logit_stand", action="store_true",
                       help="logit standardization (Sun et al., CVPR 2024) for kd and dkd")
    group.add_argument("--init_epochs", type=int, default=30, help="init stage of abound, factor, fsp")
    group.add_argument("--hint_layer", type=int, default=2, choices=[0, 1, 2, 3, 4])
    group = parser.add_argument_group("CRD")
    group.add_argument("--feat_dim", type=int, default=128, help="embedding dimension")
    group.add_argument("--mode", type=str, default="exact", choices=["exact", "relax"])
    group.add_argument("--nce_k", type=int, default=16384, help="negative samples for NCE")
    group.add_argument("--nce_t", type=float, default=0.07, help="softmax temperature")
    group.add_argument("--nce_m", type=float, default=0.5, help="momentum of the memory bank")
    add_method_flags(parser)
    add_optimization_flags(parser)
    add_data_flags(parser)
    add_run_flags(parser)
    return parser


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with ``-r/-a/-b`` and ``--learning_rate`` left out taken from the method's
    published recipe (:class:`distiller_zoo.methods.Recipe`); a flag given always wins."""
    opt = build_parser().parse_args(argv)
    zoo_for(opt.dataset).check_name(opt.model_s, "--model_s")
    if not opt.path_t:
        raise UserError("--path_t is required: the teacher checkpoint, e.g. "
                        "save/models/resnet110_vanilla/ckpt_epoch_240.pth")
    if opt.model_t is not None:
        zoo_for(opt.dataset).check_name(opt.model_t, "--model_t")
    recipe = get_method(opt.distill).recipe
    for key in ("gamma", "alpha", "beta"):
        if getattr(opt, key) is None:
            setattr(opt, key, getattr(recipe, key))
    finalize_optimization(opt, opt.model_s, env_world_size(), default_lr=recipe.learning_rate)
    check_trials_flags(opt, env_world_size())
    check_flag_values(opt)
    return opt


def student_config(opt: argparse.Namespace) -> dict:
    """The resolved configuration (``--print_config``; saved with the run's results)."""
    return resolved_config(opt, build_parser(),
                           save_folder=os.path.join(STUDENT_SAVE_ROOT, run_name_of(opt)))


def teacher_architecture(path: str, ckpt, dataset: str, model_t: str | None = None) -> str:
    """The teacher's architecture: the checkpoint's 'arch' entry, else ``--model_t``, else its
    RepDistiller folder name; ``--model_t`` contradicting the entry stops with one line."""
    zoo = zoo_for(dataset)
    recorded = ckpt.get("arch") if isinstance(ckpt, dict) and isinstance(ckpt.get("arch"), str) else None
    if recorded and model_t and recorded != model_t:
        raise UserError(f"--model_t {model_t} contradicts {path}, which records the architecture "
                        f"{recorded}; leave --model_t out")
    arch = recorded or model_t or teacher_arch_from_path(path, list(zoo.models))
    zoo.check_name(arch, "--path_t (teacher architecture; name it with --model_t)")
    return arch


def load_teacher(path: str, dataset: str, device: torch.device, data_folder: str = "./data",
                 model_t: str | None = None, ckpt=None):
    """The teacher of ``path`` (see :func:`teacher_architecture`; ``ckpt``: the file, if
    already loaded), frozen."""
    zoo = zoo_for(dataset)
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    arch = teacher_architecture(path, ckpt, dataset, model_t)
    state = extract_state_dict(ckpt, path)
    n_cls = num_classes_from_state_dict(state, path)
    expected = num_classes(dataset, data_folder)
    if n_cls != expected:
        raise UserError(f"{path} is a {n_cls}-class teacher but --dataset {dataset} has "
                        f"{expected} classes")
    teacher = load_weights(zoo.build(arch, num_classes=n_cls), state, path, arch)
    return arch, freeze(teacher.to(device))


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    opt = parse_option(argv)
    if opt.print_config:
        ckpt = load_checkpoint(opt.path_t) if os.path.isfile(opt.path_t) else None
        opt.model_t = teacher_architecture(opt.path_t, ckpt, opt.dataset, opt.model_t)
        print_config(student_config(opt))
        return {}
    with distributed(opt.device, opt.dist_timeout) as dist:
        return distill(opt, dist)


def distill(opt: argparse.Namespace, dist: DistContext) -> dict[str, float]:
    """Distill in this process (one of several under torchrun); returns the last test metrics
    (of the first trial with ``--trials``)."""
    started = time.time()
    teacher_ckpt = load_checkpoint(opt.path_t)
    opt.model_t = teacher_architecture(opt.path_t, teacher_ckpt, opt.dataset, opt.model_t)
    trial_opts = trial_options(opt, run_name_of)  # the first trial's data seed is opt's
    with contextlib.ExitStack() as held:  # every trial's folder, before anything trains
        for o in trial_opts:
            held.enter_context(claimed(o.save_folder, o.tb_folder, o.resume, o.overwrite,
                                       student_config(o), enabled=dist.is_main))
        if dist.is_main:  # everything printed from here on, and the error line, into train.log
            held.enter_context(tee_to(*(os.path.join(o.save_folder, LOG_FILE) for o in trial_opts)))
        trials, test_loader, teacher_acc = prepare_trials(opt, dist, trial_opts, teacher_ckpt)
        return train_trials_of(opt, trials, test_loader, teacher_acc, dist, started)


def train_trials_of(opt: argparse.Namespace, trials: list[Trial], test_loader, teacher_acc: float,
                    dist: DistContext, started: float) -> dict[str, float]:
    """Train the prepared trials and write each one's metrics with their provenance."""
    headline = (f"distilling {opt.model_t} -> {opt.model_s} with {opt.distill} "
                f"(r={opt.gamma}, a={opt.alpha}, b={opt.beta}) for {opt.epochs} epochs")
    if len(trials) == 1:
        trials[0].last, trials[0].progress = train_run(trials[0].run, opt, trials[0].train_loader,
                                                       test_loader, dist, headline, desc=opt.distill,
                                                       config=student_config(opt))
    else:
        stacked = stack_trials(trials, opt.trials_mode, dist.device, opt)
        train_trials(trials, test_loader, dist, headline, desc=opt.distill, stacked=stacked,
                     configs=[student_config(t.opt) for t in trials])
        for trial in trials:  # resumed after its final epoch was saved: evaluate what was saved
            if not trial.last and trial.failure is None:
                trial.last = evaluate_saved(trial.run, trial.opt, test_loader, dist,
                                            trial.progress.start_epoch - 1)
    teacher = {"path": opt.path_t, "sha256": file_sha256(opt.path_t), "test_acc": teacher_acc}
    for trial in trials:
        if trial.last and not trial.failure and dist.is_main:
            write_json_atomic(os.path.join(trial.opt.save_folder, METRICS_FILE),
                              results_record(trial.opt, trial.last, teacher, time.time() - started))
    raise_failures(trials)
    return trials[0].last


def results_record(opt: argparse.Namespace, last: dict, teacher: dict, wall_time_s: float) -> dict:
    """``test_last_metrics.json``: the last test metrics (``test_acc``, ``test_acc_top5``,
    ``test_loss``, ``epoch``) and their provenance: planned and reached epoch, the resolved
    configuration, the teacher (path, sha256, test accuracy), the versions of torch and of the
    project, and this process's wall time."""
    return {**last, "planned_epochs": opt.epochs, "reached_epoch": last["epoch"],
            "config": student_config(opt), "teacher": teacher,
            "versions": {"torch": torch.__version__, "project": project_version()},
            "wall_time_s": round(wall_time_s, 1)}


def prepare_trials(opt: argparse.Namespace, dist: DistContext, trial_opts: list | None = None,
                   teacher_ckpt=None) -> tuple[list[Trial], object, float]:
    """Teacher, data and every trial of the run (``trial_opts``, default
    :func:`trial_options`), ready to train (the init stage of two-stage methods done); returns
    ``(trials, test_loader, teacher test accuracy)``."""
    set_seed(opt.seed)
    device = dist.device
    finalize_device(opt, device)
    opt.model_t, teacher = load_teacher(opt.path_t, opt.dataset, device, opt.data_folder, opt.model_t,
                                        teacher_ckpt)
    train_loader, test_loader, n_data = loaders_for(opt, device, dist)
    trial_opts = trial_opts or trial_options(opt, run_name_of)  # the first trial's data seed is opt's
    train_loaders = [train_loader] + [train_loader.with_seed(data_seed(o.seed, o.trial))
                                      for o in trial_opts[1:]]
    teacher_acc = validate(teacher, test_loader, device, dist=dist)["acc"]
    print(f"teacher {opt.model_t} ({opt.path_t}) test accuracy: {teacher_acc:.2f}")
    if opt.channels_last:
        teacher.to(memory_format=torch.channels_last)
    trials = [build_trial(o, teacher, loader, test_loader, n_data, dist)
              for o, loader in zip(trial_opts, train_loaders)]
    return trials, test_loader, teacher_acc


def loaders_for(opt: argparse.Namespace, device: torch.device, dist: DistContext):
    """``(train_loader, test_loader, n_data)`` of the run (the first trial's data seed, see
    ``data_seed``; other trials take ``train_loader.with_seed``)."""
    method_cls = get_method(opt.distill)
    loader_kw = dict(batch_size=opt.batch_size, num_workers=opt.num_workers,
                     data_folder=opt.data_folder, loader=opt.loader, device=device,
                     seed=data_seed(opt.seed, opt.trial), drop_last=method_cls.needs_full_batches,
                     channels_last=opt.channels_last, rank=dist.rank, world_size=dist.world_size)
    if method_cls.needs_index:
        opt.nce_k = sample_k(opt.dataset, opt.nce_k)  # digits caps k to its small training split
        return get_sample_dataloaders(opt.dataset, k=opt.nce_k, mode=opt.mode, **loader_kw)
    return get_dataloaders(opt.dataset, **loader_kw)


def build_trial(opt: argparse.Namespace, teacher: torch.nn.Module, train_loader, test_loader,
                n_data: int, dist: DistContext) -> Trial:
    """Student, method, optimizer (after the init stage of two-stage methods), step and run of
    one trial. Student and method are initialised from ``opt.seed`` alone, so a trial of
    ``--trials`` starts where the separate run with its seed starts."""
    device = dist.device
    set_seed(opt.seed)
    student = zoo_for(opt.dataset).build(opt.model_s, num_classes=num_classes(opt.dataset, opt.data_folder),
                                         blocktype=opt.blocktype)
    student = place_model(student, opt, dist)
    probe = next(iter(test_loader))[0][:2].to(device).float()
    method = build_method_for(opt.distill, opt, student, teacher, probe, n_data)
    dist.enable_sync(method)

    trainable = [student] + list(method.trainable_modules())
    optimizer = make_optimizer((p for m in trainable for p in m.parameters()), opt)
    if not opt.resume and method.has_init_stage and opt.init_epochs > 0:
        run_init_stage(opt, student, teacher, method, train_loader, device, dist)
    set_trainable([method], method.trainable_modules())  # the rest of the method is idle now
    step = DistillStep(student, teacher, method, loss_weights(opt), compile=opt.compile,
                       device=device, dist=dist)
    run = Run(name=opt.model_s, save_folder=opt.save_folder, train_modules=[student, method],
              eval_model=student, optimizer=optimizer, compute_loss=step,
              state_modules={"model": student, "method": method},
              extra_state={"arch": opt.model_s, "blocktype": opt.blocktype, "model_t": opt.model_t},
              on_epoch_start=lambda epoch: setattr(step, "epoch", epoch))
    return Trial(opt, run, step, train_loader)


def run_init_stage(opt, student, teacher, method, train_loader, device,
                   dist: DistContext | None = None) -> list[float]:
    """First stage of AB/FT/FSP: train the method's init modules with the student in eval mode
    (the other parameters frozen meanwhile, so that DDP averages exactly the init modules').
    Returns the mean init loss of each init epoch, which rank 0 also writes to TensorBoard
    (``init_loss``, in the run's TensorBoard folder)."""
    modules = list(method.init_modules(student))
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=method.init_learning_rate(opt), momentum=opt.momentum,
                                weight_decay=opt.weight_decay, foreach=True)
    label = f"trial {opt.trial} | " if getattr(opt, "trials", 1) > 1 else ""
    main_process = dist is None or dist.is_main
    losses = []
    with trainable_only([student, method], modules), \
            SummaryWriter(opt.tb_folder) if main_process else contextlib.nullcontext() as writer:
        step = InitStep(student, teacher, method, dist=dist)
        for epoch in range(1, opt.init_epochs + 1):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            student.eval()  # the init modules (possibly parts of the student) are put in train mode
            stats = train_epoch(modules, train_loader, optimizer, step, device, epoch,
                                print_freq=opt.print_freq, desc=f"{opt.distill} init", dist=dist,
                                label=f"{label}init ")
            losses.append(stats["loss"])
            print(f"{label}init epoch {epoch:3d}/{opt.init_epochs} | loss {stats['loss']:.4f}", flush=True)
            if writer is not None:
                writer.add_scalar("init_loss", stats["loss"], epoch)
                writer.flush()
    return losses


if __name__ == "__main__":
    main()
