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
from dataclasses import dataclass

import torch
from torch.utils.tensorboard import SummaryWriter

from dataset import get_dataloaders, get_sample_dataloaders, num_classes
from distiller_zoo import get_method, method_names
from distiller_zoo.methods import DEFAULT_METHOD, add_method_flags
from helper.checkpoint import load_checkpoint, rng_state, set_rng_state, write_json_atomic
from engine.distill import (DistillStep, InitStep, StudentParts, build_method_for, freeze, loss_weights,
                            set_trainable, trainable_only)
from engine.fit import EvaluateAndSave, InitStageLog, LoopSettings, Member, fit, raise_failures
from engine.loops import make_grad_scaler, validate
from engine.model_io import read_teacher, teacher_architecture
from engine.stepping import Stacked
from helper.distributed import DistContext, distributed, env_world_size
from helper.errors import UserError, exit_on_user_error
from helper.naming import METRICS_FILE
from helper.provenance import file_sha256, project_version
from helper.logging_utils import LOG_FILE, tee_to
from helper.plugins import add_plugin_flag, import_plugins
from helper.run_folder import claimed
from engine.config import (StudentConfig, build_student_config, check_architecture, dataset_zoo, flat, on_device,
                           with_section)
from engine.options import (OneLineParser, add_data_flags, add_dot_flags, add_optimization_flags, add_original_flags,
                            add_run_flags, check_flag_values, counted, print_config, resolved_config)
from engine.trainer import (TEACHER_SHA, Run, check_resume, make_optimizer, place_model, report_members,
                            start_members)
from engine.trials import check_stacked_start, check_trials_flags, fit_trials, stepping_for, trial_configs
from helper.util import data_seed, set_seed
from models import BLOCK_TYPES, imagenet_model_dict, model_dict


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="train_student.py", description="Distill a student network from a teacher.")
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
    group.add_argument("--distill", type=str, default=DEFAULT_METHOD, choices=method_names())
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
    group.add_argument("--kd_T", type=float, default=None,
                       help="temperature of the KL divergence (default: the method's recipe, 4 "
                            "unless its recipe with --logit_stand says otherwise)")
    group.add_argument("--logit_stand", "--logit-stand", action="store_true",
                       help="logit standardization (Sun et al., CVPR 2024) for "
                            f"{', '.join(method_names(lambda m: m.supports_logit_stand))}; a method's "
                            "recipe with it may differ (see README)")
    group.add_argument("--init_epochs", type=int, default=30,
                       help=f"init stage of {', '.join(method_names(lambda m: m.has_init_stage))}")
    add_method_flags(parser)  # each method's own flags (distiller_zoo.methods)
    add_optimization_flags(parser)
    add_dot_flags(parser)
    add_data_flags(parser)
    add_run_flags(parser)
    add_original_flags(parser, student=True)
    add_plugin_flag(parser)
    return parser


def parse_option(argv: list[str] | None = None) -> StudentConfig:
    """The configuration of the flags (:func:`engine.config.build_student_config`: ``-r/-a/-b``
    and ``--learning_rate`` left out take the method's published recipe), checked; the
    ``--plugin`` modules are imported first, so that their registrations are choices."""
    import_plugins(argv)
    flags = vars(build_parser().parse_args(argv))
    zoo = dataset_zoo(flags["dataset"])
    check_architecture(zoo, flags["model_s"], "--model_s")
    if not flags["path_t"]:
        raise UserError("--path_t is required: the teacher checkpoint, e.g. "
                        "save/models/resnet110_vanilla/ckpt_epoch_240.pth")
    if flags["model_t"] is not None:
        check_architecture(zoo, flags["model_t"], "--model_t")
    config = build_student_config(flags, env_world_size())
    check_trials_flags(config.run, env_world_size())
    check_flag_values(flat(config))
    return config


def student_config(config: StudentConfig) -> dict:
    """The resolved configuration (``--print_config``; saved with the run's results)."""
    return resolved_config(config, build_parser())


def load_teacher(config: StudentConfig, dist: DistContext, ckpt=None) -> torch.nn.Module:
    """The teacher of ``--path_t`` (:func:`engine.model_io.read_teacher`, the loading path that
    ``convert.py`` and ``validation.py`` share; ``ckpt``: the file already loaded), on the
    device, frozen. Seeds the run first: what follows is built from ``--seed``."""
    set_seed(config.run.seed)
    models, data = config.model, config.data
    _, teacher = read_teacher(models.path_t, data.dataset, data.data_folder, models.model_t, ckpt)
    return freeze(teacher.to(dist.device))


def teacher_accuracy(config: StudentConfig, teacher: torch.nn.Module, test_loader, dist: DistContext) -> float:
    """The teacher's test accuracy, printed (and the teacher put in the run's memory format)."""
    teacher_acc = validate(teacher, test_loader, dist.device, dist=dist)["acc"]
    print(f"teacher {config.model.model_t} ({config.model.path_t}) test accuracy: {teacher_acc:.2f}")
    if config.run.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher_acc


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Distill one student in this process (one of several under torchrun); returns its last
    test metrics. ``--trials N`` goes to :func:`main_trials`, the same path for N students.

    The run's inputs (teacher, data, student and method) are read and checked first, so that a
    run refused for them leaves no folder; then the run's folder is claimed, and everything
    printed from then on (the error line too) goes into its ``train.log``."""
    config = parse_option(argv)
    if config.run.print_config:
        return print_student_config(config)
    if config.run.trials > 1:
        return main_trials(config)
    started = time.time()
    with distributed(config.run.device, config.run.dist_timeout) as dist, contextlib.ExitStack() as held:
        config, teacher_ckpt = ready(config, dist)
        teacher_sha = file_sha256(config.model.path_t)
        check_resume(config, config.model.model_s, teacher_sha)  # this run's own record, or one line
        member, loss, test_loader, teacher_acc = prepare_student(config, dist, teacher_ckpt, held, teacher_sha)
        start_members([member], config.run.resume, dist, [student_config(config)], held)
        print(headline(config, dist, [member]))
        settings = LoopSettings.from_config(config, config.method.distill)
        fit(member, loss, EvaluateAndSave(test_loader, dist, settings), config.optim.epochs, settings, dist)
        return finish(config, [member], teacher_acc, dist, time.time() - started)


def prepare_student(config: StudentConfig, dist: DistContext, teacher_ckpt,
                    held: contextlib.ExitStack | None = None,
                    teacher_sha: str | None = None) -> tuple[Member, DistillStep, object, float]:
    """Everything :func:`main` trains, in order: the teacher (frozen), the data, the student and
    its method (built on a probe batch, so a method that does not fit the pair stops here,
    before ``held`` claims the run's folder; no folder is claimed without ``held``), the
    teacher's test accuracy, the init stage of a two-stage method, and the optimizer. Returns
    ``(member, loss, test_loader, teacher test accuracy)``; ``loss`` is the distillation step."""
    teacher = load_teacher(config, dist, teacher_ckpt)
    train_loader, test_loader, n_data = loaders_for(config, dist.device, dist)
    built = build_student(config, teacher, train_loader, test_loader, n_data, dist)
    if held is not None:
        hold_folders(held, [config], dist)
    teacher_acc = teacher_accuracy(config, teacher, test_loader, dist)
    trial = build_trial(built, teacher, dist)
    member = student_member(trial, make_optimizer(trial.trained_parameters(), config.optim), dist,
                            teacher_sha=teacher_sha)
    return member, trial.step, test_loader, teacher_acc


def main_trials(config: StudentConfig) -> dict[str, float]:
    """:func:`main` for ``--trials N``: N students against one teacher, whose forward they
    share (:mod:`engine.trials`), each with its own folder, data order, checkpoints and
    results; every folder is claimed before anything trains. Returns the first trial's metrics."""
    started = time.time()
    with distributed(config.run.device, config.run.dist_timeout) as dist, contextlib.ExitStack() as held:
        config, teacher_ckpt = ready(config, dist)
        teacher_sha = file_sha256(config.model.path_t)
        trials = trial_configs(config)
        for trial in trials:  # --resume continues each trial's own run, or one line
            check_resume(trial, trial.model.model_s, teacher_sha)
        members, stepping, test_loader, teacher_acc = prepare_trials(config, dist, trials, teacher_ckpt, held,
                                                                     teacher_sha)
        start_members(members, config.run.resume, dist, [student_config(t) for t in trials], held)
        check_stacked_start(stepping, members)
        print(headline(config, dist, members, stepping))
        settings = LoopSettings.from_config(config, config.method.distill)
        fit_trials(members, stepping, EvaluateAndSave(test_loader, dist, settings), config.optim.epochs,
                   settings, dist)
        return finish(config, members, teacher_acc, dist, time.time() - started)


def prepare_trials(config: StudentConfig, dist: DistContext, trials: list[StudentConfig], teacher_ckpt,
                   held: contextlib.ExitStack | None = None,
                   teacher_sha: str | None = None) -> tuple[list[Member], object, object, float]:
    """:func:`prepare_student` for every trial of ``--trials``, with one teacher and each trial's
    own data order, and their stepping (:func:`engine.trials.stepping_for`) in place of the
    optimizer. Returns ``(members, stepping, test_loader, teacher test accuracy)``."""
    teacher = load_teacher(config, dist, teacher_ckpt)
    train_loader, test_loader, n_data = loaders_for(config, dist.device, dist)
    loaders = [train_loader] + [train_loader.with_seed(data_seed(t.run.seed, t.run.trial)) for t in trials[1:]]
    built = [build_student(t, teacher, loader, test_loader, n_data, dist) for t, loader in zip(trials, loaders)]
    if held is not None:
        hold_folders(held, trials, dist)
    teacher_acc = teacher_accuracy(config, teacher, test_loader, dist)
    parts = [build_trial(b, teacher, dist) for b in built]
    stepping, optimizers = stepping_for(parts, config.run.trials_mode, dist.device, config.run.amp)
    members = [student_member(part, optimizer, dist, len(parts), teacher_sha)
               for part, optimizer in zip(parts, optimizers)]
    return members, stepping, test_loader, teacher_acc


def finish(config: StudentConfig, members: list[Member], teacher_acc: float, dist: DistContext,
           wall_time_s: float) -> dict[str, float]:
    """After the last epoch: each member's best accuracy (or why it stopped), the finished
    ones' results written, then one line for those that stopped; the first one's metrics."""
    report_members(members)
    write_results(config, members, teacher_acc, dist, wall_time_s)
    raise_failures(members)
    return members[0].last


def ready(config: StudentConfig, dist: DistContext) -> tuple[StudentConfig, object]:
    """What parsing cannot know, read once: the teacher file (``--path_t``), its architecture
    (:func:`with_teacher`) and the device's memory format (:func:`engine.config.on_device`).
    Returns the run's configuration with them and the loaded teacher file."""
    teacher_ckpt = load_checkpoint(config.model.path_t)
    return with_teacher(on_device(config, dist.device), teacher_ckpt), teacher_ckpt


def with_teacher(config: StudentConfig, ckpt) -> StudentConfig:
    """``config`` with the teacher's architecture (:func:`teacher_architecture`) of ``ckpt``,
    the loaded ``--path_t`` (None: no such file)."""
    models = config.model
    arch = teacher_architecture(models.path_t, ckpt, config.data.dataset, models.model_t)
    return with_section(config, "model", model_t=arch)


def print_student_config(config: StudentConfig) -> dict:
    """``--print_config``: the resolved configuration (the teacher's architecture read from
    its file when there is one); nothing is written."""
    path = config.model.path_t
    print_config(student_config(with_teacher(config, load_checkpoint(path) if os.path.isfile(path) else None)))
    return {}


def hold_folders(held: contextlib.ExitStack, trials: list[StudentConfig], dist: DistContext) -> None:
    """Claim every trial's folder (:func:`helper.run_folder.claimed`) and, on rank 0, tee what
    is printed into each one's ``train.log``, for as long as ``held`` is open."""
    for trial in trials:
        held.enter_context(claimed(trial.save_folder, trial.tb_folder, trial.run.resume, trial.run.overwrite,
                                   student_config(trial), enabled=dist.is_main))
    if dist.is_main:
        held.enter_context(tee_to(*(os.path.join(trial.save_folder, LOG_FILE) for trial in trials)))


def headline(config: StudentConfig, dist: DistContext, members: list[Member], stepping=None) -> str:
    """The line that opens the training: what is distilled, where, and where it is saved."""
    models, method = config.model, config.method
    what = (f"distilling {models.model_t} -> {models.model_s} with {method.distill} "
            f"(r={method.gamma}, a={method.alpha}, b={method.beta}) for {counted(config.optim.epochs, 'epoch')}")
    if len(members) == 1:
        processes = f" x {dist.world_size} processes" if dist.enabled else ""
        return f"{what} on {dist.device}{processes}; saving to {members[0].run.save_folder}"
    how = "stacked students" if isinstance(stepping, Stacked) else "one step per trial"
    folders = ", ".join(m.run.save_folder for m in members)
    return f"{what} on {dist.device}, {len(members)} trials in one process ({how}); saving to {folders}"


def write_results(config: StudentConfig, members: list[Member], teacher_acc: float,
                  dist: DistContext, wall_time_s: float) -> None:
    """Each finished trial's ``test_last_metrics.json`` (rank 0), with its provenance (the
    teacher's sha256 as hashed when the run loaded it, the one its checkpoints record)."""
    if not dist.is_main:
        return
    teacher = {"path": config.model.path_t, "sha256": members[0].run.extra_state[TEACHER_SHA],
               "test_acc": teacher_acc}
    for member in members:
        if member.last and not member.failure:
            write_json_atomic(os.path.join(member.run.save_folder, METRICS_FILE),
                              results_record(member.config, member.last, teacher, wall_time_s,
                                             member.run.extra_state.get("epochs_changed")))


def results_record(config: StudentConfig, last: dict, teacher: dict, wall_time_s: float,
                   epochs_changed: list[dict] | None = None) -> dict:
    """``test_last_metrics.json``: the last test metrics (``test_acc``, ``test_acc_top5``,
    ``test_loss``, ``epoch``) and their provenance: planned and reached epoch, the resolved
    configuration, the teacher (path, sha256, test accuracy), the versions of torch and of the
    project, this process's wall time and, for a run whose ``--epochs`` a resume changed,
    ``epochs_changed`` (``[{"at_epoch", "from", "to"}, ...]``)."""
    record = {**last, "planned_epochs": config.optim.epochs, "reached_epoch": last["epoch"],
              "config": student_config(config), "teacher": teacher,
              "versions": {"torch": torch.__version__, "project": project_version()},
              "wall_time_s": round(wall_time_s, 1)}
    if epochs_changed:
        record["epochs_changed"] = epochs_changed
    return record


@dataclass
class BuiltStudent:
    """One trial's student and method as built from its seed, before any init stage, and the
    random-number states right after building (where its init stage starts)."""

    config: StudentConfig
    student: torch.nn.Module
    method: torch.nn.Module
    train_loader: object
    rng: dict


def student_member(part: StudentParts, optimizer, dist: DistContext, n_trials: int = 1,
                   teacher_sha: str | None = None) -> Member:
    """The loop's member of one trial: its run (what is saved and restored, with the teacher
    file's sha256 that ``--resume`` compares), loader and label."""
    config = part.config
    models = config.model
    run = Run(name=models.model_s, save_folder=config.save_folder, train_modules=[part.student, part.method],
              eval_model=part.student, optimizer=optimizer,
              state_modules={"model": part.student, "method": part.method},
              extra_state={"arch": models.model_s, "blocktype": models.blocktype, "model_t": models.model_t,
                           **({TEACHER_SHA: teacher_sha} if teacher_sha else {})})
    label = f"trial {config.run.trial} | " if n_trials > 1 else ""
    return Member(config, run, part.train_loader, label=label, scaler=make_grad_scaler(dist.device, config.run.amp))


def loaders_for(config: StudentConfig, device: torch.device, dist: DistContext):
    """``(train_loader, test_loader, n_data)`` of the run (the first trial's data seed, see
    ``data_seed``; other trials take ``train_loader.with_seed``)."""
    method_cls = get_method(config.method.distill)
    data, run = config.data, config.run
    loader_kw = dict(batch_size=config.optim.batch_size, num_workers=data.num_workers,
                     data_folder=data.data_folder, loader=data.loader, device=device,
                     seed=data_seed(run.seed, run.trial), drop_last=method_cls.needs_full_batches,
                     channels_last=run.channels_last, rank=dist.rank, world_size=dist.world_size)
    sampling = config.method.sampling()  # its negatives already what the data set can yield
    if sampling is not None:
        k, mode = sampling
        return get_sample_dataloaders(data.dataset, k=k, mode=mode, **loader_kw)
    return get_dataloaders(data.dataset, strong_view=method_cls.needs_strong_view, **loader_kw)


def build_student(config: StudentConfig, teacher: torch.nn.Module, train_loader, test_loader,
                  n_data: int, dist: DistContext) -> BuiltStudent:
    """Student and method of one trial, initialised from the trial's seed alone (so a trial of
    ``--trials`` starts where the separate run with its seed starts); the method is built on
    the feature shapes of a probe batch, which checks that it fits the pair."""
    device, run, data = dist.device, config.run, config.data
    set_seed(run.seed)
    student = config.zoo().build(config.model.model_s, num_classes=num_classes(data.dataset, data.data_folder),
                                 blocktype=config.model.blocktype)
    student = place_model(student, dist, sync_bn=run.sync_bn, channels_last=run.channels_last)
    probe = next(iter(test_loader))[0][:2].to(device).float()
    method = build_method_for(config, student, teacher, probe, n_data)
    dist.enable_sync(method)
    return BuiltStudent(config, student, method, train_loader, rng_state())


def build_trial(built: BuiltStudent, teacher: torch.nn.Module, dist: DistContext) -> StudentParts:
    """The init stage of a two-stage method (from the random-number states its build left, as
    if it had followed at once), then the trial's step."""
    config, student, method, run = built.config, built.student, built.method, built.config.run
    set_rng_state(built.rng)
    if not run.resume and method.has_init_stage and config.method.init_epochs > 0:
        run_init_stage(config, student, teacher, method, built.train_loader, dist)
    set_trainable([method], method.trainable_modules())  # the rest of the method is idle now
    step = DistillStep(student, teacher, method, loss_weights(config.method), compile=run.compile,
                       device=dist.device, dist=dist, dot=config.optim.dot)
    return StudentParts(config, student, method, step, built.train_loader)


def run_init_stage(config: StudentConfig, student: torch.nn.Module, teacher: torch.nn.Module,
                   method, train_loader, dist: DistContext) -> list[float]:
    """First stage of AB/FT/FSP: train the method's init modules with the student in eval mode
    (the other parameters frozen meanwhile, so that DDP averages exactly the init modules'), in
    the one loop (:func:`engine.fit.fit`) as a member of its own. Returns the mean init loss of
    each init epoch, which rank 0 also writes to TensorBoard (``init_loss``, in the run's
    TensorBoard folder)."""
    modules = list(method.init_modules(student))
    params = [p for m in modules for p in m.parameters()]
    optim, run, epochs = config.optim, config.run, config.method.init_epochs
    lr = method.init_learning_rate(optim.learning_rate, config.zoo().facts(config.model.model_s).low_init_lr)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                                foreach=True)
    label = f"trial {run.trial} | " if run.trials > 1 else ""
    policy = InitStageLog(lr, epochs)
    with trainable_only([student, method], modules), \
            SummaryWriter(config.tb_folder) if dist.is_main else contextlib.nullcontext() as writer:
        init_run = Run(name=config.model.model_s, save_folder=config.save_folder, train_modules=modules,
                       eval_model=student, optimizer=optimizer, state_modules={})
        member = Member(config, init_run, train_loader, label=f"{label}init ", writer=writer, eval_modules=(student,))
        fit(member, InitStep(student, teacher, method, dist=dist), policy, epochs,
            LoopSettings(print_freq=run.print_freq, desc=f"{config.method.distill} init"), dist)
    raise_failures([member])
    return policy.losses


if __name__ == "__main__":
    main()
