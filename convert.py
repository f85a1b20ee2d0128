"""Convert a trained re-parameterizable student to its deploy form (one KxK conv per rep block).

Example::

    python convert.py --load save/student_model/S_represnet20_.../represnet20_best.pth \\
        --save represnet20_deploy.pth -a represnet20

Reads a train-form checkpoint ('model' or 'state_dict' entry, or a raw state dict; 'module.'
prefixes stripped; ``.hdf5`` weight files through h5py) and writes the deploy state dict.
"""
from __future__ import annotations

import argparse

from helper.checkpoint import save_checkpoint
from helper.errors import UserError, exit_on_user_error
from helper.model_io import count_parameters, load_model_from_file
from models import BLOCK_TYPES, reparameterize_model, zoo_of


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Convert a train-form rep student to deploy form.")
    parser.add_argument("--load", required=True, help="train-form checkpoint (.pth or .hdf5)")
    parser.add_argument("--save", required=True, help="where to write the deploy state dict")
    parser.add_argument("-a", "--arch", required=True,
                        help="architecture, e.g. represnet20 (CIFAR) or represnet18 (ImageNet)")
    parser.add_argument("-t", "--blocktype", default="AMBB", choices=list(BLOCK_TYPES),
                        help="training-time block the checkpoint was trained with")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    opt = parse_option(argv)
    zoo = zoo_of(opt.arch)
    if not zoo.is_rep(opt.arch):
        raise UserError(f"-a {opt.arch} has no deploy form; convert.py takes a re-parameterizable "
                        f"student (represnet20, repvgg8, ..., or ImageNet's represnet18)")
    model, _ = load_model_from_file(opt.load, opt.arch, deploy=False, blocktype=opt.blocktype,
                                    zoo=zoo)
    before = count_parameters(model)
    reparameterize_model(model.eval())
    save_checkpoint(model.state_dict(), opt.save)
    print(f"converted {opt.load} ({before} parameters) -> {opt.save} ({count_parameters(model)} parameters)")


if __name__ == "__main__":
    main()
