"""The typed configuration of a training run: frozen sections built once from the parsed flags.

A run's configuration is one frozen object (after nanoGPT's
``GPTConfig`` and timm's ``PretrainedCfg``): a :class:`TeacherConfig` (``train_teacher.py``) or a :class:`StudentConfig`
(``train_student.py``), made of sections: the models, the method (students only), the
optimization, the data and the run. Each field of a section is one flag (its name is the flag's
``dest``) or a value derived from flags when the configuration is built (the optimization's
``base_learning_rate``, ``world_size`` and ``schedule_defaults``, the run's ``channels_last``).
A field no flag fills cannot be built (:meth:`Section.from_flags`), and each method's own
hyper-parameters are its :class:`distiller_zoo.methods.Params`, whose fields are its flags.

Nothing changes a configuration: what is learnt later (the teacher's architecture read from
its checkpoint, the device's memory format) and the trials of ``--trials`` are new objects made
with :func:`dataclasses.replace` (:func:`with_section`). The run's folder names are computed
from the configuration (:meth:`TrainingConfig.folders`), so a trial's folders follow its trial
number. :func:`config_dict` flattens a configuration to the flat keys every checkpoint's
``config`` entry and ``--print_config`` have always had.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Mapping, TypeVar

from dataset import dataset_spec, default_loader, sample_k, zoo_dataset
from distiller_zoo.methods import Params, SharedParams, get_method, method_params_classes
from helper.errors import UserError
from helper.naming import STUDENT_SAVE_ROOT, run_name_of
from helper.plugins import recorded_plugins
from helper.util import dataclass_from_flags, parse_decay_epochs
from models import zoo_named
from models.registry import ZOOS, ModelRegistry

S = TypeVar("S", bound="Section")
C = TypeVar("C", bound="TrainingConfig")
P = TypeVar("P", bound=Params)
#: The optimization flags a data set's :class:`dataset.Schedule` fills when they are left out.
SCHEDULED = ("epochs", "batch_size", "lr_decay_epochs", "weight_decay")
#: Values a checkpoint's ``config`` records as they are (anything else is left out).
PLAIN = (str, int, float, bool, list, tuple, type(None))
#: Fields recorded only when given (``--plugin``, ``--dot`` and its ``dot_delta``): a run
#: without them records what runs recorded before the flag existed, so their checkpoints,
#: metrics and ``--print_config`` are unchanged and older checkpoints continue (``--resume``)
#: as before.
RECORDED_WHEN_GIVEN = frozenset({"plugin", "dot", "dot_delta"})


@dataclass(frozen=True, kw_only=True)
class Section:
    """Base of the sections: frozen, keyword-only, one field per flag or derived value."""

    @classmethod
    def from_flags(cls: type[S], flags: Mapping[str, Any], **derived: Any) -> S:
        """The section holding, for each field, ``derived``'s value or else the flag's
        (:func:`helper.util.dataclass_from_flags`: a field neither fills is a ``TypeError``)."""
        return dataclass_from_flags(cls, flags, **derived)

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(flag name, value)`` of every field."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)


@dataclass(frozen=True, kw_only=True)
class TeacherModel(Section):
    """``--model``: the architecture trained from scratch."""

    model: str


@dataclass(frozen=True, kw_only=True)
class StudentModels(Section):
    """The student (``--model_s``, its block type ``-t``) and the teacher (``--path_t``, its
    architecture ``--model_t``: None until read from the checkpoint, see :func:`with_section`)."""

    model_s: str
    model_t: str | None
    path_t: str
    blocktype: str


@dataclass(frozen=True, kw_only=True)
class MethodConfig(Section):
    """The distillation method (``--distill``), the loss weights ``-r/-a/-b`` (the recipe's
    when left out), the temperature and logit standardization every method reads, the init
    stage's length, and ``own``: every registered method's own parameters
    (:func:`distiller_zoo.methods.method_params_classes`), each from its flags."""

    distill: str
    gamma: float
    alpha: float
    beta: float
    kd_T: float
    logit_stand: bool
    init_epochs: int
    own: tuple[Params, ...]

    @property
    def params(self) -> Params | None:
        """The parameters of the chosen method (None for a method without any)."""
        wanted = get_method(self.distill).params_class
        return self.own_of(wanted) if wanted else None

    def own_of(self, cls: type[P]) -> P:
        """The parameters of class ``cls`` (one of the registered methods' ``params_class``)."""
        for params in self.own:
            if type(params) is cls:
                return params
        raise TypeError(f"{cls.__name__} is not among the registered methods' parameters")

    def sampling(self) -> tuple[int, str] | None:
        """``(k, mode)`` of the contrastive sample loader the method reads (its
        ``sample_flags``), None for a method that reads the plain loaders."""
        return get_method(self.distill).sampling(self.params)

    def shared(self, batch_size: int) -> SharedParams:
        """What every method reads (:class:`distiller_zoo.methods.SharedParams`)."""
        return SharedParams(kd_T=self.kd_T, logit_stand=self.logit_stand, batch_size=batch_size)

    def with_params(self, params: Params) -> "MethodConfig":
        """This section with ``params`` in place of the parameters of its class."""
        return replace(self, own=tuple(params if type(p) is type(params) else p for p in self.own))

    def items(self) -> Iterator[tuple[str, Any]]:
        """The fields, with each method's parameters as flat flags (``--nce_k``, ``--dkd_T``)."""
        for name, value in super().items():
            if name != "own":
                yield name, value
        for params in self.own:
            for f in fields(params):
                yield f.name, getattr(params, f.name)


@dataclass(frozen=True, kw_only=True)
class OptimConfig(Section):
    """SGD and its step schedule. ``learning_rate`` is what trains (``base_learning_rate``,
    one process's rate as ``--learning_rate`` means it, times ``world_size`` unless
    ``no_lr_scale``); ``schedule_defaults`` names the flags the data set's schedule filled."""

    epochs: int
    batch_size: int
    learning_rate: float
    base_learning_rate: float
    lr_decay_epochs: tuple[int, ...]
    lr_decay_rate: float
    weight_decay: float
    momentum: float
    no_lr_scale: bool
    world_size: int
    schedule_defaults: frozenset[str]


@dataclass(frozen=True, kw_only=True)
class StudentOptim(OptimConfig):
    """A student's optimization: also DOT (``--dot``, :mod:`engine.dot`: separate momenta for
    the task and the distillation gradients) and its ``dot_delta`` (None without ``--dot``;
    when left out, the data set's :class:`dataset.Schedule`'s: the authors' 0.075 for
    CIFAR-100, 0.09 for ImageNet)."""

    dot: bool
    dot_delta: float | None


@dataclass(frozen=True, kw_only=True)
class DataConfig(Section):
    """The data set, where it lies, and how it is loaded (``loader``: the set's default kind
    when ``--loader`` is left out)."""

    dataset: str
    data_folder: str
    num_workers: int
    loader: str


@dataclass(frozen=True, kw_only=True)
class RunConfig(Section):
    """Everything about running rather than learning: the trial and seed, resuming, progress,
    the device and processes, the speed switches (``channels_last``: derived from
    ``--no_channels_last`` and, once known, the device, see :func:`on_device`) and the
    ``--plugin`` modules imported first (:mod:`helper.plugins`; ``()`` for none)."""

    trial: str
    seed: int | None
    resume: str | None
    print_freq: int
    overwrite: bool
    print_config: bool
    device: str
    sync_bn: bool
    dist_timeout: float
    amp: bool
    compile: bool
    no_channels_last: bool
    channels_last: bool
    plugin: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TeacherRun(RunConfig):
    """A teacher's run: also ``--save_freq`` (periodic ``ckpt_epoch_<N>.pth`` files)."""

    save_freq: int


@dataclass(frozen=True, kw_only=True)
class StudentRun(RunConfig):
    """A student's run: also ``--trials`` and ``--trials_mode`` (:mod:`engine.trials`)."""

    trials: int
    trials_mode: str


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """What every training run has: optimization, data and run sections."""

    optim: OptimConfig
    data: DataConfig
    run: RunConfig

    def sections(self) -> list[Section]:
        return [getattr(self, f.name) for f in fields(self)]

    def folders(self) -> dict[str, str]:
        """``model_name`` (the run's name), ``save_folder`` and ``tb_folder``."""
        raise NotImplementedError

    @property
    def save_folder(self) -> str:
        return self.folders()["save_folder"]

    @property
    def tb_folder(self) -> str:
        return self.folders()["tb_folder"]

    def zoo(self) -> ModelRegistry:
        """The model zoo of the data set (:func:`dataset_zoo`)."""
        return dataset_zoo(self.data.dataset)


@dataclass(frozen=True, kw_only=True)
class TeacherConfig(TrainingConfig):
    """``train_teacher.py``'s configuration."""

    model: TeacherModel
    run: TeacherRun

    def folders(self) -> dict[str, str]:
        """``save/models/<model>_<dataset>_lr_<lr>_decay_<wd>_trial_<trial>`` (one process's lr)."""
        name = (f"{self.model.model}_{self.data.dataset}_lr_{self.optim.base_learning_rate}"
                f"_decay_{self.optim.weight_decay}_trial_{self.run.trial}")
        return {"model_name": name, "save_folder": os.path.join("save", "models", name),
                "tb_folder": os.path.join("save", "teacher_tensorboards", name)}


@dataclass(frozen=True, kw_only=True)
class StudentConfig(TrainingConfig):
    """``train_student.py``'s configuration."""

    model: StudentModels
    method: MethodConfig
    optim: StudentOptim
    run: StudentRun

    def folders(self) -> dict[str, str]:
        """``save/student_model/S_<s>_T_<t>_<dataset>_<distill>_r_<r>_a_<a>_b_<b>_<trial>``
        (:func:`helper.naming.student_run_name`) and its TensorBoard twin."""
        name = run_name_of(flat(self))
        return {"model_name": name, "save_folder": os.path.join(STUDENT_SAVE_ROOT, name),
                "tb_folder": os.path.join("save", "student_tensorboards", name)}


def dataset_zoo(dataset: str) -> ModelRegistry:
    """The model zoo that data set ``dataset``'s spec names (CIFAR's or ImageNet's)."""
    return zoo_named(dataset_spec(dataset).model_zoo)


def other_zoo_with(zoo: ModelRegistry, name: str) -> ModelRegistry | None:
    """The first zoo other than ``zoo`` that registers ``name`` (None if none does): the one a
    misplaced architecture belongs to, whose data set (:func:`dataset.zoo_dataset`) to suggest."""
    return next((z for z in ZOOS.values() if z is not zoo and name in z.models), None)


def check_architecture(zoo: ModelRegistry, name: str, flag: str) -> str:
    """``name`` if ``zoo`` has it; a name of another zoo is one line saying which ``--dataset``
    selects that zoo (:func:`dataset.zoo_dataset`); any other is the zoo's unknown-name error."""
    other = None if name in zoo.models else other_zoo_with(zoo, name)
    if other is not None:
        raise UserError(f"{flag} {name} is {other.name} model; pass --dataset "
                        f"{zoo_dataset(other.kind)}, or one of: {', '.join(sorted(zoo.models))}")
    return zoo.check_name(name, flag)


def on_device(config: C, device) -> C:
    """``config`` with the memory format of ``device``: channels_last unless
    ``--no_channels_last``. On CUDA that is the usual choice; on a 2-core CPU it also measured
    faster (resnet110 forward at batch 64: 0.72 s NCHW vs 0.45 s; represnet20 training step:
    1.04 s vs 0.67 s with separate branches)."""
    channels_last = device.type in ("cuda", "cpu") and not config.run.no_channels_last
    return with_section(config, "run", channels_last=channels_last)


def flat(config: TrainingConfig) -> dict[str, Any]:
    """Every field of every section by its flag name, as held (tuples, frozensets)."""
    return {name: value for section in config.sections() for name, value in section.items()}


def config_dict(config: TrainingConfig) -> dict[str, Any]:
    """The flat configuration as plain values, with the run's folder names: the ``config``
    entry of every checkpoint (loadable with ``weights_only=True``)."""
    values = {**flat(config), **config.folders()}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
            if isinstance(v, PLAIN) and (v or k not in RECORDED_WHEN_GIVEN)}


def with_section(config: C, section: str, **changes: Any) -> C:
    """``config`` with the fields ``changes`` of its section ``section`` replaced."""
    return replace(config, **{section: replace(getattr(config, section), **changes)})


def optimization_config(flags: Mapping[str, Any], model_name: str, world_size: int = 1,
                        default_lr: float | None = None, section: type[OptimConfig] = OptimConfig,
                        **derived: Any) -> OptimConfig:
    """The optimization section: the data set's defaults (its :class:`dataset.Schedule`) for
    the flags left out, and the learning rate.

    A learning rate left out is, on the CIFAR-style schedules, ``default_lr`` when given (a
    method's published recipe: kdrefine's 0.01), else RepDistiller's rule (0.05; 0.01 for the
    models registered in the low learning-rate group, :class:`models.registry.ModelFacts`); on
    ImageNet, the linear rule of its schedule (0.1 per 256 images of one process's batch).
    It is one process's rate; the run trains with ``world_size`` times it (linear scaling
    with the global batch, Goyal et al. 2017) unless ``--no_lr_scale``. ``section``: the
    class built (a student's :class:`StudentOptim`), ``derived`` its fields no flag fills.
    """
    spec = dataset_spec(flags["dataset"])
    filled = {key: getattr(spec.schedule, key) if flags[key] is None else flags[key] for key in SCHEDULED}
    base_lr = flags["learning_rate"]
    if base_lr is None and spec.schedule.lr_per_256 is not None:
        # 12 significant digits: 0.1 * 3 / 256 names a run lr_0.001171875, not ...0000002
        base_lr = float(f"{spec.schedule.lr_per_256 * filled['batch_size'] / 256:.12g}")
    elif base_lr is None:
        base_lr = default_lr if default_lr is not None else dataset_zoo(flags["dataset"]).facts(model_name).default_lr
    filled["lr_decay_epochs"] = tuple(parse_decay_epochs(filled["lr_decay_epochs"]))
    return section.from_flags(
        flags, **filled, **derived,
        base_learning_rate=base_lr, world_size=world_size,
        learning_rate=base_lr if flags["no_lr_scale"] else base_lr * world_size,
        schedule_defaults=frozenset(key for key in SCHEDULED if flags[key] is None))


def data_config(flags: Mapping[str, Any]) -> DataConfig:
    """The data section (the data set's default loader when ``--loader`` is left out)."""
    return DataConfig.from_flags(flags, loader=flags["loader"] or default_loader(flags["dataset"]))


def run_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The derived fields of the run section as parsing knows them: channels_last unless
    ``--no_channels_last`` (the device may still turn it off, :func:`on_device`), and the
    ``--plugin`` modules as a tuple."""
    return {"channels_last": not flags["no_channels_last"], "plugin": recorded_plugins(flags["plugin"])}


def build_teacher_config(flags: Mapping[str, Any], world_size: int = 1) -> TeacherConfig:
    """``train_teacher.py``'s configuration of its parsed flags (``vars`` of the namespace)."""
    return TeacherConfig(model=TeacherModel.from_flags(flags),
                         optim=optimization_config(flags, flags["model"], world_size),
                         data=data_config(flags), run=TeacherRun.from_flags(flags, **run_flags(flags)))


def build_student_config(flags: Mapping[str, Any], world_size: int = 1) -> StudentConfig:
    """``train_student.py``'s configuration of its parsed flags: ``-r/-a/-b``, ``--kd_T`` and the
    learning rate left out take the method's published recipe
    (:class:`distiller_zoo.methods.Recipe`; with ``--logit_stand`` its logit-standardization
    recipe where there is one: kd's T 2, a 9); a flag given always wins. The negatives of a
    method reading a sample loader (its ``sample_flags``: CRD's ``--nce_k``) are what the data
    set can yield (digits caps them to its small training split, :func:`dataset.sample_k`)."""
    method_cls = get_method(flags["distill"])
    recipe = method_cls.recipe_for(bool(flags["logit_stand"]))
    resolved = {key: getattr(recipe, key) if flags[key] is None else flags[key]
                for key in ("gamma", "alpha", "beta", "kd_T")}
    method = MethodConfig.from_flags(flags, **resolved,
                                     own=tuple(cls.from_flags(flags) for cls in method_params_classes()))
    optim = optimization_config(flags, flags["model_s"], world_size, recipe.learning_rate, StudentOptim,
                                dot_delta=dot_delta_of(flags))
    sampling = method.sampling()
    if sampling is not None:
        k = sample_k(flags["dataset"], sampling[0])
        method = method.with_params(method_cls.with_negatives(method.params, k))
    return StudentConfig(model=StudentModels.from_flags(flags), method=method,
                         optim=optim, data=data_config(flags), run=StudentRun.from_flags(flags, **run_flags(flags)))


def dot_delta_of(flags: Mapping[str, Any]) -> float | None:
    """DOT's momentum spread: ``--dot_delta``, else the data set's schedule's (its authors'
    value); None without ``--dot``, and one line for ``--dot_delta`` given without it."""
    if not flags["dot"]:
        if flags["dot_delta"] is not None:
            raise UserError(f"--dot_delta {flags['dot_delta']:g} sets the momentum spread of --dot, "
                            "which is off; add --dot or leave --dot_delta out")
        return None
    given = flags["dot_delta"]
    return dataset_spec(flags["dataset"]).schedule.dot_delta if given is None else given
