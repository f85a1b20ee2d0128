"""Command-line flag groups shared by the entry scripts (names as in the CRD code).

Optimization flags left out take their data set's defaults (:data:`SCHEDULES`): the CRD
benchmark's for CIFAR-100 and digits, the standard ResNet recipe (Goyal et al. 2017's linear
rule) for ImageNet. ``--batch_size`` is per process; under torchrun the learning rate is
multiplied by the number of processes unless ``--no_lr_scale``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from helper.util import parse_decay_epochs

#: Architectures the CRD code trains with a learning rate of 0.01 instead of 0.05.
LOW_LR_MODELS = {"MobileNetV2", "ShuffleV1", "ShuffleV2", "repmobilenetv2", "repshufflev1"}


@dataclass(frozen=True)
class Schedule:
    """Defaults of the optimization flags for one data set."""

    epochs: int
    batch_size: int
    lr_decay_epochs: str
    weight_decay: float
    lr_per_256: float | None = None  # lr = lr_per_256 * batch_size / 256 (None: CRD's 0.05/0.01)


CIFAR_SCHEDULE = Schedule(epochs=240, batch_size=64, lr_decay_epochs="150,180,210", weight_decay=5e-4)
#: ImageNet: 100 epochs, lr 0.1 per 256 images, x0.1 at 30/60/90, weight decay 1e-4.
IMAGENET_SCHEDULE = Schedule(epochs=100, batch_size=256, lr_decay_epochs="30,60,90",
                             weight_decay=1e-4, lr_per_256=0.1)
SCHEDULES = {"cifar100": CIFAR_SCHEDULE, "digits": CIFAR_SCHEDULE, "imagenet": IMAGENET_SCHEDULE}


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


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", type=str, default="cifar100", choices=list(SCHEDULES),
                       help="cifar100, digits (scikit-learn's bundled digits, offline) or imagenet "
                            "(ImageFolder tree <data_folder>/train/<class>/, "
                            "<data_folder>/val/<class>/)")
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
    group.add_argument("--print_freq", type=int, default=100, help="steps between progress updates")
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
    group = parser.add_argument_group("speed")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision: bf16 autocast (fp16 with a grad scaler where bf16 is unsupported)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the training step (with CUDA graphs on CUDA)")
    group.add_argument("--no_channels_last", action="store_true",
                       help="keep the NCHW memory format (channels_last is the default: faster on CUDA and, "
                            "measured here, on CPU too)")


def finalize_device(opt: argparse.Namespace, device) -> argparse.Namespace:
    """Memory format: channels_last unless ``--no_channels_last``. On CUDA that is the usual
    choice; on a 2-core CPU it also measured faster (resnet110 forward at batch 64: 0.72 s NCHW
    vs 0.45 s; represnet20 training step: 1.04 s vs 0.67 s with separate branches)."""
    opt.channels_last = device.type in ("cuda", "cpu") and not getattr(opt, "no_channels_last", False)
    return opt


def finalize_optimization(opt: argparse.Namespace, model_name: str,
                          world_size: int = 1) -> argparse.Namespace:
    """Fill the data set's defaults of the flags left out (:data:`SCHEDULES`), the
    per-architecture learning rate and the loader kind, and parse the decay epochs.

    ``opt.base_learning_rate`` is the learning rate of one process (the run names show it);
    ``opt.learning_rate``, the one trained with, is ``world_size`` times it (linear scaling
    with the global batch) unless ``opt.no_lr_scale``. ImageNet's default, 0.1 per 256 images
    of the global batch, is thereby applied once.
    """
    schedule = SCHEDULES.get(getattr(opt, "dataset", "cifar100"), CIFAR_SCHEDULE)
    for key in ("epochs", "batch_size", "lr_decay_epochs", "weight_decay"):
        if getattr(opt, key, None) is None:
            setattr(opt, key, getattr(schedule, key))
    if opt.learning_rate is None:
        if schedule.lr_per_256 is not None:
            # 12 significant digits: 0.1 * 3 / 256 names a run lr_0.001171875, not ...0000002
            opt.learning_rate = float(f"{schedule.lr_per_256 * opt.batch_size / 256:.12g}")
        else:
            opt.learning_rate = 0.01 if model_name in LOW_LR_MODELS else 0.05
    opt.base_learning_rate = opt.learning_rate
    opt.world_size = world_size
    if not getattr(opt, "no_lr_scale", False):
        opt.learning_rate = opt.base_learning_rate * world_size
    opt.lr_decay_epochs = parse_decay_epochs(opt.lr_decay_epochs)
    if hasattr(opt, "loader") and opt.loader is None:
        from dataset import default_loader  # here: the data package imports torchvision

        opt.loader = default_loader(opt.dataset)
    return opt
