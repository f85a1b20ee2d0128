"""Evaluate a checkpoint (train or deploy form) on the test split: top-1/top-5 accuracy.

Example::

    python validation.py --model represnet20 --model_path represnet20_deploy.pth --deploy_flag True
    python validation.py --model represnet18 --model_path represnet18_deploy.pth \
        --dataset imagenet --data_folder /data/imagenet

The last line of standard output is ``accuracy: <top-1 in percent>``.
"""
from __future__ import annotations

import argparse

import torch

from dataset import DATASETS, get_test_loader, num_classes
from helper.errors import UserError, exit_on_user_error
from helper.loops import validate
from helper.model_io import count_parameters, load_model_from_file
from helper.options import str2bool
from helper.util import resolve_device
from models import BLOCK_TYPES, zoo_for


def model_classes(model: torch.nn.Module) -> int:
    """Output classes of ``model``: rows of its last linear layer."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validate a model checkpoint on the test split.")
    parser.add_argument("--model", required=True,
                        help="architecture, e.g. represnet20 (or represnet18 with --dataset imagenet)")
    parser.add_argument("--model_path", required=True, help="checkpoint or state dict (.pth/.hdf5)")
    parser.add_argument("--deploy_flag", type=str2bool, default=True,
                        help="True: the file holds the deploy form (rep students only)")
    parser.add_argument("-t", "--blocktype", default="AMBB", choices=list(BLOCK_TYPES),
                        help="training-time block of a train-form rep checkpoint")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--data_folder", default="./data",
                        help="holds cifar-100-python/, or ImageNet's val/<class>/ folders")
    parser.add_argument("--dataset", default="cifar100", choices=list(DATASETS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> float:
    opt = parse_option(argv)
    device = resolve_device(opt.device)
    zoo = zoo_for(opt.dataset)
    deploy = opt.deploy_flag and zoo.is_rep(opt.model)
    model, _ = load_model_from_file(opt.model_path, opt.model, deploy=deploy, blocktype=opt.blocktype,
                                    zoo=zoo)
    n_cls = model_classes(model)
    expected = num_classes(opt.dataset, opt.data_folder)
    if n_cls != expected:
        raise UserError(f"{opt.model_path} is a {n_cls}-class model but --dataset {opt.dataset} has "
                        f"{expected} classes; pass the data set it was trained on")
    model = model.to(device).eval()
    loader = get_test_loader(opt.dataset, batch_size=opt.batch_size, num_workers=opt.num_workers,
                             data_folder=opt.data_folder, device=device)
    form = "deploy" if deploy else ("train" if zoo.is_rep(opt.model) else "plain")
    print(f"model {opt.model} ({form} form): {count_parameters(model)} parameters")
    with torch.no_grad():
        metrics = validate(model, loader, device)
    print(f"top-1 {metrics['acc']:.2f}  top-5 {metrics['acc_top5']:.2f}  loss {metrics['loss']:.4f}")
    print(f"accuracy: {metrics['acc']:.2f}")
    return metrics["acc"]


if __name__ == "__main__":
    main()
