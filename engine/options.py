"""Command-line flag groups shared by the entry scripts (names as in the CRD code), the checks
of their values, and the flags a checkpoint may record.

Optimization flags left out take their data set's defaults (:class:`dataset.Schedule`, filled
by :func:`engine.config.optimization_config`): the CRD benchmark's for CIFAR-100 and digits,
the standard ResNet recipe (Goyal et al. 2017's linear rule) for ImageNet. ``--batch_size`` is
per process; under torchrun the learning rate is multiplied by the number of processes unless
``--no_lr_scale``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import fields
from typing import Any, Iterable, Mapping, NoReturn, Sequence

import torch

from dataset import DEFAULT_DATASET, dataset_help, dataset_names, dataset_spec, zoo_dataset
from distiller_zoo import get_method, method_names
from distiller_zoo.methods import method_flag_ranges
from helper.checkpoint import describe_mismatch, extract_state_dict, num_classes_from_state_dict
from helper.errors import UserError
from helper.ranges import TEMPERATURE, WEIGHT, Range
from helper.util import parse_decay_epochs
from engine.config import (RECORDED_WHEN_GIVEN, TrainingConfig, check_architecture, config_dict, dataset_zoo,
                           other_zoo_with)
from models import BLOCK_TYPES
from models.rep_blocks import DEFAULT_BLOCKTYPE

#: ``--dist_timeout`` at most 7 days: a longer wait means "never" (and ``datetime.timedelta``
#: overflows past 999,999,999 days: 1e300 was an OverflowError on every rank).
MAX_DIST_TIMEOUT_MINUTES = 7 * 24 * 60.0


class OneLineParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors (an unknown flag, a value of the wrong
    type, a missing value or a choice not offered) end as every user error does: one line on
    stderr, ``error: <what>; see <prog> --help``, and exit status 2, instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())}; see {self.prog} --help\n")


class IgnoredFlag(argparse.Action):
    """A flag of the original code that had no effect there either (``--tb_freq``): its value is
    parsed (so a wrong type is still one line) and dropped; it enters no configuration."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        return None


class RefusedFlag(argparse.Action):
    """A flag of the original code that means something else here: giving it stops with one
    line (:class:`UserError`), ``<flag> <value> is <equivalent>``, ``{value}`` in
    ``equivalent`` standing for the value given (its ``--help`` shows the metavar there)."""

    def __init__(self, option_strings: Sequence[str], dest: str, equivalent: str = "",
                 **kwargs: Any) -> None:
        metavar = kwargs.get("metavar") or "N"
        super().__init__(option_strings, dest, default=argparse.SUPPRESS,
                         help=equivalent.replace("{value}", metavar), **kwargs)
        self.equivalent = equivalent

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        raise UserError(f"{option_string} {values} is {self.equivalent.replace('{value}', str(values))}")


def add_original_flags(parser: argparse.ArgumentParser, student: bool) -> None:
    """Flags that users of the original code type and that mean nothing, or something else,
    here: ``--tb_freq`` (RepDistiller's and KDrefine's, declared but never read: accepted and
    ignored) and, for students, RepDistiller's ``--save_freq`` and the logit-standardization
    code's ``--base-temp`` and ``--kd-weight`` (refused with the equivalent here;
    ``--logit-stand`` is an alias of ``--logit_stand``)."""
    group = parser.add_argument_group("flags of the original code")
    group.add_argument("--tb_freq", action=IgnoredFlag, type=int, metavar="N",
                       help="accepted and ignored: RepDistiller and KDrefine declare it but never read it; "
                            "TensorBoard scalars are written once per epoch")
    if not student:
        return
    group.add_argument("--save_freq", action=RefusedFlag, metavar="N",
                       equivalent="RepDistiller's period of a student's ckpt_epoch_<N>.pth files, which "
                                  "students here do not write: <model_s>_last.pth is written every epoch "
                                  "(what --resume continues) and <model_s>_best.pth at each new best; "
                                  "leave --save_freq out")
    group.add_argument("--base-temp", action=RefusedFlag, metavar="T",
                       equivalent="the logit-standardization code's temperature: here give --kd_T {value} "
                                  "for --distill kd or --dkd_T {value} for --distill dkd, with --logit_stand "
                                  "(kd --logit_stand defaults to its authors' 2)")
    group.add_argument("--kd-weight", action=RefusedFlag, metavar="K",
                       equivalent="the logit-standardization code's loss weight: here give -a {value} for "
                                  "--distill kd, or --dkd_alpha {value} --dkd_beta <its beta x {value}> for "
                                  "--distill dkd, with --logit_stand (kd --logit_stand defaults to its "
                                  "authors' 9)")


def str2bool(text: str) -> bool:
    """``True/False`` flags that mean what they say (``--deploy_flag False`` is False)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y", "t"):
        return True
    if value in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def add_optimization_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimization (defaults: CIFAR / ImageNet)")
    group.add_argument("--epochs", type=int, default=None, help="number of training epochs (240 / 100)")
    group.add_argument("--batch_size", type=int, default=None, help="batch size per process (64 / 256)")
    group.add_argument("--learning_rate", type=float, default=None,
                       help="learning rate for one process (0.05, 0.01 for MobileNetV2/ShuffleV1/"
                            "ShuffleV2 / 0.1 x batch_size / 256); times the number of processes "
                            "under torchrun unless --no_lr_scale")
    group.add_argument("--lr_decay_epochs", type=str, default=None,
                       help="epochs after which the learning rate decays, comma-separated "
                            "(150,180,210 / 30,60,90)")
    group.add_argument("--lr_decay_rate", type=float, default=0.1, help="learning-rate decay factor")
    group.add_argument("--weight_decay", type=float, default=None, help="weight decay (5e-4 / 1e-4)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")


def add_dot_flags(parser: argparse.ArgumentParser) -> None:
    """DOT (Zhao et al., ICCV 2023; :mod:`engine.dot`), a student's optimizer option."""
    group = parser.add_argument_group("DOT: distillation-oriented trainer (Zhao et al., ICCV 2023)")
    group.add_argument("--dot", action="store_true",
                       help="train with DOT: SGD whose task gradient (the cls term's) keeps a momentum "
                            "of --momentum - delta and whose distillation gradient (the div and kd "
                            "terms') one of --momentum + delta; with any method")
    group.add_argument("--dot_delta", type=float, default=None, metavar="DELTA",
                       help="DOT's delta (default: its authors' 0.075 for CIFAR-100, 0.09 for "
                            "ImageNet); --momentum - delta > 0 and --momentum + delta < 1")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", type=str, default=DEFAULT_DATASET, choices=list(dataset_names()),
                       help=dataset_help())
    group.add_argument("--data_folder", type=str, default="./data",
                       help="folder holding cifar-100-python/ (downloaded there when missing), or "
                            "ImageNet's train/ and val/")
    group.add_argument("--num_workers", type=int, default=8,
                       help="DataLoader workers (torchvision loader only)")
    group.add_argument("--loader", type=str, default=None, choices=["device", "torchvision"],
                       help="device (CIFAR/digits default): data kept on the training device, "
                            "batched augmentation; torchvision (ImageNet's only one): the classic "
                            "DataLoader pipeline")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=None, help="random seed (default: unseeded)")
    group.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                       help="continue from CKPT, or from this run's <model>_last.pth when no path is given")
    group.add_argument("--print_freq", type=int, default=None,
                       help="steps between progress lines and NaN checks (default: 100, or a quarter of "
                            "an epoch when an epoch has fewer than 400 steps)")
    group.add_argument("--overwrite", action="store_true",
                       help="start again in a run folder that already holds a run (the old folder "
                            "is moved aside to <folder>.old-<time>, not deleted)")
    group.add_argument("--print_config", action="store_true",
                       help="print the resolved configuration (every option after defaults and the "
                            "method's recipe) as one JSON line and exit without training")
    group.add_argument("--device", type=str, default="auto",
                       help="auto, cpu, cuda or cuda:N (under torchrun: auto or cuda, meaning "
                            "cuda:LOCAL_RANK, or cpu)")
    group = parser.add_argument_group("multi-process (torchrun)")
    group.add_argument("--sync_bn", action="store_true",
                       help="synchronise the student's BatchNorm statistics across processes "
                            "(SyncBatchNorm; CUDA only)")
    group.add_argument("--no_lr_scale", action="store_true",
                       help="keep --learning_rate as given instead of multiplying it by the number "
                            "of processes")
    group.add_argument("--dist_timeout", type=float, default=30.0, metavar="MINUTES",
                       help="minutes a process waits for the others in a collective before the run "
                            "ends with an error (a process stopped or a node lost); fractions "
                            f"allowed, at most {MAX_DIST_TIMEOUT_MINUTES:g} (7 days); continue with --resume")
    group = parser.add_argument_group("speed")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision: bf16 autocast (fp16 with a grad scaler where bf16 is unsupported)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the training step (with CUDA graphs on CUDA)")
    group.add_argument("--no_channels_last", action="store_true",
                       help="keep the NCHW memory format (channels_last is the default: faster on CUDA and, "
                            "measured here, on CPU too)")


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """The destinations of ``parser``'s options (``--learning_rate`` -> ``learning_rate``), but
    for the original code's flags that enter no configuration (:func:`add_original_flags`)."""
    return [a.dest for a in parser._actions if a.dest != argparse.SUPPRESS and a.dest != "help"
            and not isinstance(a, (IgnoredFlag, RefusedFlag))]


def resolved_config(config: TrainingConfig, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every option of ``parser`` after defaults and recipes, as plain JSON values, and the
    run's ``save_folder``. ``learning_rate`` is the rate of one process, as the flag means it
    (under torchrun the run trains with it times the number of processes unless
    ``--no_lr_scale``). A flag recorded only when given (``--plugin``) is left out without it."""
    recorded = config_dict(config)
    resolved = {name: recorded[name] for name in option_names(parser)
                if name in recorded or name not in RECORDED_WHEN_GIVEN}
    resolved["learning_rate"] = config.optim.base_learning_rate
    resolved["save_folder"] = recorded["save_folder"]
    return resolved


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``1 epoch``, ``2 epochs``, ``1 thread``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def print_config(config: dict[str, Any]) -> None:
    """``--print_config``: the configuration as one JSON object on one line of stdout."""
    print(json.dumps(config, sort_keys=True), flush=True)


# ----------------------------------------------------------------------------- flag values

#: Every numeric flag of the entry scripts and what it may be (checked where ``opt`` has it); the
#: methods' own flags declare theirs with the flag (:func:`distiller_zoo.methods.method_flag_ranges`).
FLAG_RANGES: dict[str, Range] = {
    "epochs": Range(1, allowed="must be at least 1 (epochs to train)"),
    "batch_size": Range(1, allowed="must be at least 1 (images per batch)"),
    "print_freq": Range(1, allowed="must be at least 1 (steps between progress lines and NaN checks)"),
    "save_freq": Range(0, allowed="must be 0 (no ckpt_epoch_<N>.pth files) or a positive number of "
                                   "epochs"),
    "init_epochs": Range(0, allowed="must be 0 (skip the init stage) or a positive number of epochs"),
    "trials": Range(1, allowed="must be at least 1 (students trained in this process)"),
    "num_workers": Range(0, allowed="must be 0 (load in the main process) or a positive number of "
                                     "worker processes"),
    "learning_rate": Range(0, allowed="must be 0 or positive"),
    "weight_decay": Range(0, allowed="must be 0 (none) or positive"),
    "momentum": Range(0, 1, high_open=True, allowed="must lie in [0, 1) (SGD momentum)"),
    "dot_delta": Range(0, 1, low_open=True, high_open=True,
                       allowed="must lie in (0, 1) (DOT's momentum spread; without --dot, SGD's one momentum)"),
    "lr_decay_rate": Range(0, 1, low_open=True,
                            allowed="must lie in (0, 1]: the learning rate is multiplied by it at each "
                                    "decay epoch (0.1 divides it by 10; 1 keeps it)"),
    "kd_T": TEMPERATURE,
    "dist_timeout": Range(0, MAX_DIST_TIMEOUT_MINUTES, low_open=True,
                           allowed=f"must be a positive number of minutes, at most "
                                   f"{MAX_DIST_TIMEOUT_MINUTES:g} (7 days; e.g. 30, or 0.5 for 30 seconds)"),
    "gamma": WEIGHT, "alpha": WEIGHT, "beta": WEIGHT,
}
#: How the errors spell flags with a short form.
FLAG_SPELLING = {"gamma": "-r/--gamma", "alpha": "-a/--alpha", "beta": "-b/--beta",
                 "blocktype": "-t/--blocktype"}
#: ``--seed`` seeds NumPy, whose seeds lie in 0 .. 2**32 - 1.
MAX_SEED = 2 ** 32 - 1
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def flag_name(dest: str) -> str:
    return FLAG_SPELLING.get(dest, f"--{dest}")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_flag_values(values: Mapping[str, Any]) -> None:
    """Refuse, with one line naming the flag, its value and what it may be, every flag value
    that cannot mean what the flag says (:data:`FLAG_RANGES` and the methods' own ranges,
    ``--seed``, ``--device``, ``--lr_decay_epochs``, ``-t`` for a student that has no block types).

    Also refused: the negatives of a method that samples them (CRD's ``--nce_k``), when they are
    not below the data set's training images (:func:`_check_negatives`), and ``--logit_stand`` for
    a method that does not apply it (:func:`_check_logit_stand`), so neither is found after the
    teacher was loaded.

    ``values``: the flat configuration (:func:`engine.config.flat`), whose flags left out hold
    their data set's defaults and whose ``schedule_defaults`` says which were left out. A
    default decay schedule longer than ``--epochs`` (150,180,210 in a 1-epoch smoke run) is no
    error: those decays just never happen; decay epochs given explicitly must lie within
    1..``--epochs``. Flags ``values`` lacks are skipped, so every entry script can call it.
    """
    for dest, rule in {**FLAG_RANGES, **method_flag_ranges()}.items():
        value = values.get(dest)
        if dest == "learning_rate":
            value = values.get("base_learning_rate", value)  # as given, before torchrun scaling
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise UserError(f"{flag_name(dest)} {_shown(value)}: not a finite number; it {rule.allowed}")
        if not rule.admits(value):
            raise UserError(f"{flag_name(dest)} {_shown(value)}: {rule.allowed}")
    _check_seed(values)
    _check_trial(values)
    _check_device(values)
    _check_decay_epochs(values)
    _check_student_blocktype(values)
    _check_negatives(values)
    _check_logit_stand(values)
    _check_dot(values)


def _check_dot(values: Mapping[str, Any]) -> None:
    """DOT's two momenta, ``--momentum`` minus and plus ``--dot_delta``, must lie in (0, 1), and
    stacked trials take one step for all, which DOT's two backward passes do not fit."""
    delta, momentum = values.get("dot_delta"), values.get("momentum")
    if delta is not None and momentum is not None and not (0 < momentum - delta and momentum + delta < 1):
        raise UserError(f"--dot_delta {delta:g} with --momentum {momentum:g}: DOT's task momentum "
                        f"{momentum - delta:g} must be positive and its distillation momentum "
                        f"{momentum + delta:g} below 1; give a smaller --dot_delta")
    if values.get("dot") and values.get("trials_mode") == "stacked":
        raise UserError("--dot takes two backward passes per trial, which stacked trials do not; "
                        "use --trials_mode shared_teacher (or auto)")


def _check_negatives(values: Mapping[str, Any]) -> None:
    """A method reading a sample loader (its ``sample_flags``: CRD's ``--nce_k``) draws that many
    negatives per sample among the other training images: as many as the training set holds or
    more (1e9) would size each step's gathered embeddings by them; digits caps them to its small
    split instead (:func:`dataset.sample_k`)."""
    distill, dataset = values.get("distill"), values.get("dataset")
    if distill not in method_names() or dataset not in dataset_names():
        return
    method = get_method(distill)
    k_flag = method.sample_flags.k if method.sample_flags is not None else None
    k, images = values.get(k_flag), dataset_spec(dataset).train_images
    if k is not None and images is not None and k >= images:
        default = {f.name: f.default for f in fields(method.params_class)}[k_flag]
        raise UserError(f"--{k_flag} {k}: --distill {distill} draws its negatives among the other images of "
                        f"the training set, and {dataset}'s has {images}; give fewer (its default is {default})")


def _check_logit_stand(values: Mapping[str, Any]) -> None:
    distill = values.get("distill")
    if distill in method_names():
        get_method(distill).check_logit_stand(bool(values.get("logit_stand")))


#: What ``--trial`` may be: it ends the run folder's name, so no path separator, no ``.``/``..``.
_TRIAL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _check_trial(values: Mapping[str, Any]) -> None:
    """``--trial`` names the run folder's last part: letters, digits, ``-``, ``_`` and ``.``,
    1 to 64 of them, not ``.`` or ``..`` (no path separator, nothing outside ``save/``)."""
    trial = values.get("trial")
    if trial is None:
        return
    if not isinstance(trial, str) or not _TRIAL.fullmatch(trial) or trial in (".", ".."):
        raise UserError(f"--trial {trial!r}: must be 1 to 64 letters, digits, '-', '_' or '.' (not "
                        "'.' or '..'), e.g. 1 or seed3; it ends the run folder's name")


def _check_seed(values: Mapping[str, Any]) -> None:
    seed = values.get("seed")
    if seed is None:
        return
    trials = values.get("trials") or 1
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed}: must lie within 0..{MAX_SEED} (NumPy's seeds)")
    if seed + trials - 1 > MAX_SEED:
        raise UserError(f"--seed {seed}: with --trials {trials} the trials' seeds run to "
                        f"{seed + trials - 1}; they must lie within 0..{MAX_SEED}")


def _check_device(values: Mapping[str, Any]) -> None:
    device = values.get("device")
    if device is None:
        return
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise UserError(f"--device {device}: must be auto, cpu, cuda or cuda:N (N the index of a GPU)")
    if device.startswith("cuda:"):
        index, count = int(device.split(":", 1)[1]), torch.cuda.device_count()
        if torch.cuda.is_available() and index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), "
                            f"cuda:0..cuda:{count - 1}")


def _check_decay_epochs(values: Mapping[str, Any]) -> None:
    decay, epochs = values.get("lr_decay_epochs"), values.get("epochs")
    if decay is None or epochs is None or "lr_decay_epochs" in values.get("schedule_defaults", ()):
        return
    milestones = parse_decay_epochs(decay)
    outside = [m for m in milestones if not 1 <= m <= epochs]
    if outside:
        given = decay if isinstance(decay, str) else ",".join(str(m) for m in milestones)
        raise UserError(f"--lr_decay_epochs {given}: each decay epoch must lie within 1..{epochs} "
                        f"(--epochs {epochs}); {outside[0]} does not")


def _check_student_blocktype(values: Mapping[str, Any]) -> None:
    student, blocktype = values.get("model_s"), values.get("blocktype")
    if student is None or blocktype is None:
        return
    zoo = dataset_zoo(values.get("dataset") or DEFAULT_DATASET)
    if blocktype != DEFAULT_BLOCKTYPE and student in zoo.models and not zoo.is_rep(student):
        rep = ", ".join(sorted(name for name in zoo.models if zoo.is_rep(name)))
        raise UserError(f"-t/--blocktype {blocktype}: --model_s {student} is not re-parameterizable and "
                        f"takes no block type; leave -t out, or pick a rep student ({rep})")


# ----------------------------------------------------------------------------- recorded flags

def flag_or_record(given: str | None, recorded: str | None, flag: str, path: str, what: str,
                   default: str | None = None, example: str = "") -> str:
    """The value of a flag a checkpoint may record (architecture, block type): the record when
    there is one, else the flag, else ``default``. A flag contradicting the record stops with
    one line; neither (and no default) with one line saying which flag to give."""
    if recorded is not None and given is not None and given != recorded:
        raise UserError(f"{flag} {given} contradicts {path}, which records the {what} {recorded}; "
                        f"leave {flag} out")
    value = recorded if recorded is not None else given if given is not None else default
    if value is None:
        raise UserError(f"{path} records no {what} (a released checkpoint or a plain state dict); "
                        f"name it with {flag}{example}")
    return value


def recorded_architecture_in(zoo, arch: str, path: str, flag: str, from_record: bool) -> str:
    """``arch`` if ``zoo`` has it; else one line: for a name the file records, that the file is
    for another data set's zoo (or an architecture this code lacks), else the zoo's own
    unknown-name message for ``flag``."""
    if arch in zoo.models or not from_record:
        return check_architecture(zoo, arch, flag)
    other = other_zoo_with(zoo, arch)
    if other is not None:
        raise UserError(f"{path} holds {other.name} model ({arch}); pass --dataset {zoo_dataset(other.kind)}")
    raise UserError(f"{path} records the architecture {arch}, which this code does not have; "
                    f"known models: {', '.join(sorted(zoo.models))}")


def fitting_blocktypes(zoo, arch: str, checkpoint: Any, path: str, deploy: bool,
                       candidates: Iterable[str]) -> list[str]:
    """The ``candidates`` block types whose ``arch`` (deploy or train form) the weights of
    ``checkpoint`` fit exactly; an empty list when none does or the weights cannot be read."""
    try:
        state = extract_state_dict(checkpoint, path)
        n_cls = num_classes_from_state_dict(state, path)
    except UserError:
        return []
    fits = []
    for blocktype in candidates:
        try:
            model = zoo.build(arch, num_classes=n_cls, blocktype=blocktype, deploy=deploy)
        except Exception:  # a probe: a block type that cannot build does not fit
            continue
        if describe_mismatch(model, state) is None:
            fits.append(blocktype)
    return fits


def blocktype_hint(zoo, arch: str, checkpoint: Any, path: str, deploy: bool, tried: str) -> str:
    """For a file that records no block type and did not fit ``tried``: ``'; ... pass -t X'``
    naming the block types whose ``arch`` the weights fit, or ``''`` when none does."""
    fits = fitting_blocktypes(zoo, arch, checkpoint, path, deploy, [b for b in BLOCK_TYPES if b != tried])
    if not fits:
        return ""
    return (f"; the file records no block type (-t {tried} was assumed) and its weights fit "
            f"-t {' or '.join(fits)}: pass -t {fits[0]}")
