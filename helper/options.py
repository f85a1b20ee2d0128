"""Command-line flag groups shared by the entry scripts (names as in the CRD code)."""
from __future__ import annotations

import argparse

from helper.util import parse_decay_epochs

#: Architectures the CRD code trains with a learning rate of 0.01 instead of 0.05.
LOW_LR_MODELS = {"MobileNetV2", "ShuffleV1", "ShuffleV2", "repmobilenetv2", "repshufflev1"}


def str2bool(text: str) -> bool:
    """``True/False`` flags that mean what they say (``--deploy_flag False`` is False)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y", "t"):
        return True
    if value in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def add_optimization_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimization")
    group.add_argument("--epochs", type=int, default=240, help="number of training epochs")
    group.add_argument("--batch_size", type=int, default=64, help="batch size")
    group.add_argument("--learning_rate", type=float, default=None,
                       help="learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2)")
    group.add_argument("--lr_decay_epochs", type=str, default="150,180,210",
                       help="epochs after which the learning rate decays, comma-separated")
    group.add_argument("--lr_decay_rate", type=float, default=0.1, help="learning-rate decay factor")
    group.add_argument("--weight_decay", type=float, default=5e-4, help="weight decay")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", type=str, default="cifar100", choices=["cifar100", "digits"],
                       help="cifar100, or digits (scikit-learn's bundled digits, offline)")
    group.add_argument("--data_folder", type=str, default="./data",
                       help="folder holding cifar-100-python/ (downloaded there when missing)")
    group.add_argument("--num_workers", type=int, default=8,
                       help="DataLoader workers (torchvision loader only)")
    group.add_argument("--loader", type=str, default="device", choices=["device", "torchvision"],
                       help="device: data kept on the training device, batched augmentation; "
                            "torchvision: the classic DataLoader pipeline")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=None, help="random seed (default: unseeded)")
    group.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                       help="continue from CKPT, or from this run's <model>_last.pth when no path is given")
    group.add_argument("--print_freq", type=int, default=100, help="steps between progress updates")
    group.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N")
    group = parser.add_argument_group("speed")
    group.add_argument("--amp", action="store_true",
                       help="mixed precision: bf16 autocast (fp16 with a grad scaler where bf16 is unsupported)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the training step (with CUDA graphs on CUDA)")
    group.add_argument("--no_channels_last", action="store_true",
                       help="keep NCHW memory format on CUDA (channels_last is the CUDA default)")


def finalize_device(opt: argparse.Namespace, device) -> argparse.Namespace:
    """Device-dependent defaults: channels_last on CUDA unless ``--no_channels_last``."""
    opt.channels_last = device.type == "cuda" and not getattr(opt, "no_channels_last", False)
    return opt


def finalize_optimization(opt: argparse.Namespace, model_name: str) -> argparse.Namespace:
    """Fill the per-architecture learning-rate default and parse the decay epochs."""
    if opt.learning_rate is None:
        opt.learning_rate = 0.01 if model_name in LOW_LR_MODELS else 0.05
    opt.lr_decay_epochs = parse_decay_epochs(opt.lr_decay_epochs)
    return opt
